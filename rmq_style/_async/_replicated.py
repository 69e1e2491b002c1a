"""Replicated sends on a Redis Cluster: each node's writes and their WAIT on one connection of that node.

WAIT counts the replicas that have the writes of the connection it runs on,
so it must follow the send scripts on the connection that wrote them, on the
queue's node. redis-py's cluster pipeline cannot promise that (it sends a
keyless WAIT to any node, and re-sends a redirected write on its own), so
these calls go packed on a connection taken from the node that owns the slot.
A write redirected (MOVED, ASK) or refused with NOSCRIPT did not run: it goes
again, with its own WAIT, to the node named (or after loading the script); the
replies keep the order of the calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from hiredis import pack_command
from redis.exceptions import AskError, MovedError, NoScriptError, RedisClusterException, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._call_values import Call, Command, ScriptCall, WaitAofRefused
from .._replies import unknown_waitaof
from ._lane import exchange

__all__ = ["cluster_waited_round_trip"]

_MAX_REDIRECTS = 5  # as redis-py's cluster client (a slot moving under us again and again)


async def cluster_waited_round_trip(client: Any, calls: Sequence[Call]) -> list[Any]:
    """Run *calls* (keyed script calls, then a WAIT or WAITAOF) on a cluster: per node its calls and
    the WAIT, pipelined on one connection. The WAIT's reply is that of the node with the fewest
    replicas acknowledging (a batch is as durable as its least replicated part)."""
    if getattr(client, "_initialize", False):  # redis.asyncio: no slot table read yet
        await client.initialize()
    wait = calls[-1]
    replies: list[Any] = [None] * len(calls)
    acks: list[Any] = []
    pending: list[tuple[int, Any]] = [(i, None) for i in range(len(calls) - 1)]  # (call, ASK node)
    for _ in range(_MAX_REDIRECTS):
        groups: dict[tuple[Any, bool], list[int]] = {}
        for i, asked in pending:
            call = calls[i]
            node = asked
            if node is None:
                key = call.args[1] if isinstance(call, Command) else call.keys[0]
                node = client.nodes_manager.get_node_from_slot(client.keyslot(key))
            groups.setdefault((node, asked is not None), []).append(i)
        pending = []
        unloaded: set[str] = set()
        for (node, asking), indices in groups.items():
            node_calls = [calls[i] for i in indices]
            *outcomes, acked = await _on_node(client, node, node_calls, wait, asking=asking)
            wrote = False
            for i, outcome in zip(indices, outcomes, strict=True):
                if isinstance(outcome, MovedError):
                    await client.nodes_manager.move_slot(outcome)
                    pending.append((i, None))
                elif isinstance(outcome, AskError):
                    pending.append((i, _node_named(client, outcome)))
                elif isinstance(outcome, NoScriptError):  # nothing ran: again after a load, with a WAIT
                    unloaded.add(cast(ScriptCall, calls[i]).script.source)
                    pending.append((i, None))
                else:
                    replies[i] = outcome
                    wrote = True
            if wrote:
                acks.append(acked)
        if not pending:
            replies[-1] = _least(acks)
            return replies
        for source in unloaded:  # a restarted or flushed node
            await client.script_load(source)
    raise RedisConnectionError(
        f"the slots of {len(pending)} call(s) kept moving ({_MAX_REDIRECTS} redirects)"
    )


def _node_named(client: Any, redirect: AskError) -> Any:
    node = client.nodes_manager.get_node(host=redirect.host, port=redirect.port)
    if node is None:  # a node the slot table does not know yet: learnt at the next refresh
        raise RedisConnectionError(f"ASK to an unknown node {redirect.host}:{redirect.port}")
    return node


def _least(acks: list[Any]) -> Any:
    """The WAIT reply with the fewest replicas; an error reply first (the flow raises it); none when
    nothing was written (a lone WAIT has no node to go to): 0, not known to be replicated."""
    if not acks:
        return 0
    for acked in acks:
        if isinstance(acked, BaseException):
            return acked
    return min(acks, key=lambda a: int(a[1]) if isinstance(a, list) else int(a))


async def _on_node(client: Any, node: Any, calls: list[Call], wait: Call, *, asking: bool) -> list[Any]:
    """*calls* then *wait* on one connection of *node* (after ASKING for an ASK redirect)."""
    args = [c.args if isinstance(c, Command) else c.evalsha_args for c in calls]
    if asking:  # ASKING holds for the next command only: one per call
        packed = b"".join(pack_command(cast(Any, ("ASKING",))) + pack_command(cast(Any, a)) for a in args)
    else:
        packed = b"".join(pack_command(cast(Any, a)) for a in args)
    packed += pack_command(_args_of(wait))
    count = len(calls) * (2 if asking else 1) + 1
    if hasattr(node, "acquire_connection"):  # redis.asyncio: the node hands out its own connections
        conn = node.acquire_connection()
        release = node.release
    else:  # redis: the node's Redis client and its pool
        pool = client.get_redis_connection(node).connection_pool
        conn = await pool.get_connection()
        release = pool.release
    try:
        replies = await exchange(conn, packed, count)
        acked = replies[-1]
        if isinstance(acked, ResponseError) and unknown_waitaof(acked):  # before Redis 7.2
            n, timeout = _args_of(wait)[2:4]
            (fallback,) = await exchange(conn, pack_command(cast(Any, ("WAIT", n, timeout))), 1)
            replies[-1] = WaitAofRefused(str(acked), fallback)
    except (RedisConnectionError, RedisTimeoutError, OSError):
        await conn.disconnect()
        await _refresh(client)  # the node may be gone: its slots may have a new master
        raise
    except BaseException:
        await conn.disconnect()  # a reply may be unread: the connection is in an unknown state
        raise
    finally:
        release(conn)
    return [*replies[1::2], replies[-1]] if asking else replies


def _args_of(call: Call) -> tuple[Any, ...]:
    return call.args if isinstance(call, Command) else call.evalsha_args


async def _refresh(client: Any) -> None:
    """Read the slot table again; a cluster out of reach is a connection error (retried later)."""
    try:
        await client.nodes_manager.initialize()
    except (RedisClusterException, RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise RedisConnectionError(f"cluster slot table not refreshed: {exc}") from exc
