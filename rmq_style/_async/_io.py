"""Clients, and the driver that runs flows (rmq_style._call_values) against Redis."""

from __future__ import annotations

import asyncio
import os
import select
import threading
import traceback
from collections.abc import Callable, Sequence
from time import monotonic
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import redis.asyncio as redis_asyncio
from hiredis import pack_command
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ClusterDownError, NoScriptError, RedisError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._call_values import Call, Command, Flow, Pause, ScriptCall, refusal
from .._connection import ClusterTarget, memory_server, parse_url
from .._errors import BrokerUnavailableError
from ._master import master_client
from ._replicated import cluster_waited_round_trip

__all__ = [
    "TRANSIENT_ERRORS",
    "AsyncClient",
    "ClientHolder",
    "LaneClient",
    "drive",
    "drive_with_retries",
    "execute",
    "is_cluster",
    "open_client",
]

T = TypeVar("T")
# a lane idle for longer is checked before use; a server restart takes longer than this, so a
# lane it closed is never written to (a close while in use is a failure of that call)
LANE_IDLE_CHECK_S = 0.002
AsyncClient = redis_asyncio.Redis
# Redis (or, on a cluster, a node or the slots of one) away for now: worth another try later
TRANSIENT_ERRORS = (RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError)
# any refusal or failure of the client: what the runtime's task boundary treats as weather
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError,)
_ATTENTION = (NoScriptError, *TRANSIENT_ERRORS)  # replies that are not a call's own outcome


def open_client(url: str) -> AsyncClient:
    """A client for *url*; memory:// gives an in-process fakeredis shared by the same name."""
    spec = parse_url(url)
    if spec.memory_name is not None:
        from fakeredis import FakeAsyncRedis  # noqa: PLC0415 - optional extra

        server = memory_server(spec.memory_name)
        return FakeAsyncRedis(server=server, protocol=2)  # type: ignore[no-any-return,unused-ignore]
    if spec.sentinel is not None:
        return master_client(spec.sentinel, spec.client_options, LaneClient)
    if spec.cluster is not None:
        return _cluster_client(spec.cluster, spec.client_options)
    return LaneClient.from_url(url, **spec.client_options)


class ClusterClient(RedisCluster):
    """redis-py's cluster client, which learns the slots before its first command.

    redis-py 8's asyncio client picks the node of a command before it reads the
    slot table, so a new client's first command goes to a random node (MOVED);
    five MOVED and it closes every connection, breaking the other commands in flight.
    """

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_initialize", False):  # the sync client reads the table when it is made
            await cast(Any, self).initialize()
        try:
            return await cast(Any, super()).execute_command(*args, **kwargs)
        except ResponseError as exc:
            if _is_unblocked(exc):
                raise RedisConnectionError(f"the server changed role during a blocking read: {exc}") from exc
            raise
        except AttributeError as exc:
            if _closed_under_us(exc):
                raise RedisConnectionError(f"connection closed by a cluster topology refresh: {exc}") from exc
            raise


def _cluster_client(target: ClusterTarget, options: dict[str, Any]) -> AsyncClient:
    """A Redis Cluster client: commands go to the node of their keys' slot (one queue: one slot)."""
    nodes = [cast(Any, ClusterNode)(host, port) for host, port in target.nodes]
    return cast(AsyncClient, ClusterClient(startup_nodes=nodes, **options, **target.node_options()))


def is_cluster(client: AsyncClient) -> bool:
    """Whether *client* talks to a Redis Cluster: a multi-key read must then stay within one queue."""
    return isinstance(client, RedisCluster)


def _closed_under_us(exc: AttributeError) -> bool:
    """redis-py's asyncio cluster client closes a node's connections when it drops the node from its
    slot table (a failover), also one another task is writing on: that task fails with AttributeError
    ("'NoneType' object has no attribute 'writelines'"). A connection error for that call; any other
    AttributeError is ours and goes on as it is."""
    frames = traceback.extract_tb(exc.__traceback__)
    in_redis = bool(frames) and f"{os.sep}redis{os.sep}" in frames[-1].filename
    return in_redis and str(exc).startswith("'NoneType' object has no attribute")


def _is_unblocked(exc: ResponseError) -> bool:
    """UNBLOCKED: a blocking read on a master that turned replica (a failover). Not the call's outcome:
    the server is away for this call, as after a connection error (read again: MOVED or the sentinels
    lead to the new master)."""
    return str(exc).startswith("UNBLOCKED")


class LaneClient(redis_asyncio.Redis):
    """A client that keeps one connection aside for packed round trips (no pool checkout per call).

    The lane is taken without waiting: a caller that finds it busy (another
    thread or task mid-call) takes a pooled connection as before.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lane_lock = threading.Lock()  # never waited on, so safe in asyncio too
        self.lane: Any = None
        self.lane_pid = 0
        self.lane_used = 0.0  # monotonic time of the lane's last round trip
        self.follows_master = isinstance(self.connection_pool, SentinelConnectionPool)

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            return await cast(Any, super()).execute_command(*args, **options)
        except ResponseError as exc:
            if _is_unblocked(exc):
                raise RedisConnectionError(f"the server changed role during a blocking read: {exc}") from exc
            raise


def _args(call: Call) -> tuple[Any, ...]:
    return call.args if isinstance(call, Command) else call.evalsha_args


async def _load_scripts(client: AsyncClient, calls: Sequence[Call]) -> None:
    for source in {c.script.source for c in calls if not isinstance(c, Command)}:
        await client.script_load(source)


async def execute(client: AsyncClient, calls: Sequence[Call]) -> list[Any]:
    """Run *calls* in one round trip; a failed call's reply is its ResponseError.

    Scripts go by EVALSHA; after NOSCRIPT (a restarted or flushed server) they
    are loaded and the refused calls run again: NOSCRIPT means nothing ran.
    """
    replies = await _round_trip(client, calls)
    for reply in replies:
        if isinstance(reply, _ATTENTION):
            break
    else:
        return replies  # the usual case, checked without building a list
    for reply in replies:
        if isinstance(reply, TRANSIENT_ERRORS):
            raise reply  # a cluster node away: as a whole pipeline fails on one server
    refused = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
    if refused:
        # a WAIT after them counted replicas before they wrote anything: it runs again after them
        refused = sorted({*refused, *(i for i in range(refused[0] + 1, len(calls)) if _is_wait(calls[i]))})
        await _load_scripts(client, [calls[i] for i in refused])
        again = await _round_trip(client, [calls[i] for i in refused])
        for i, reply in zip(refused, again, strict=True):
            replies[i] = reply
    return replies


def _is_wait(call: Call) -> bool:
    return type(call) is Command and call.args[0] in ("WAIT", "WAITAOF")


async def _round_trip(client: AsyncClient, calls: Sequence[Call]) -> list[Any]:
    if (type(client) is LaneClient or type(client) is redis_asyncio.Redis) and client.connection is None:
        packed = _pack_scripts(calls)
        if packed is not None:
            return await _direct_round_trip(client, packed, len(calls))
    if calls and _is_wait(calls[-1]) and isinstance(client, RedisCluster):  # WAIT on the writes' connections
        try:
            return await cluster_waited_round_trip(client, calls)
        except AttributeError as exc:  # its node's connections closed by another task's slot refresh
            if _closed_under_us(exc):
                raise RedisConnectionError(f"connection closed by a cluster topology refresh: {exc}") from exc
            raise
    if len(calls) == 1:
        try:
            return [await cast(Any, client).execute_command(*_args(calls[0]))]
        except ResponseError as exc:
            return [exc]
    pipe = client.pipeline(transaction=False)
    for call in calls:
        cast(Any, pipe).execute_command(*_args(call))
    try:
        return list(await pipe.execute(raise_on_error=False))
    except AttributeError as exc:
        if _closed_under_us(exc):
            raise RedisConnectionError(f"connection closed by a cluster topology refresh: {exc}") from exc
        raise


# commands whose replies redis-py hands back as read (no response callback): they may go packed
_PLAIN_COMMANDS = frozenset({"XACK", "XDEL", "WAIT", "WAITAOF"})


def _pack_scripts(calls: Sequence[Call]) -> bytes | None:
    """The calls in the wire format, if all are script calls or plain commands (no redis-py callback)."""
    parts = []
    for call in calls:
        if type(call) is not ScriptCall:
            if type(call) is Command and call.args[0] in _PLAIN_COMMANDS:
                parts.append(pack_command(call.args))  # acks: one C call for many ids
                continue
            return None
        packed = call.packed
        parts.append(pack_command(call.evalsha_args) if packed is None else _evalsha(call, packed))
    return b"".join(parts)


# wire form of EVALSHA sha numkeys keys..., without the array header, by (sha, keys)
_HEADS: dict[tuple[str, tuple[str, ...]], bytes] = {}


def _evalsha(call: ScriptCall, packed_args: bytes) -> bytes:
    head = _HEADS.get((call.script.sha, call.keys))
    if head is None:
        if len(_HEADS) >= 4096:
            _HEADS.clear()
        full = pack_command(cast(Any, ("EVALSHA", call.script.sha, call.script.numkeys, *call.keys)))
        head = _HEADS[(call.script.sha, call.keys)] = full[full.index(b"\r\n") :]
    return b"*%d%b%b" % (3 + len(call.keys) + len(call.args), head, packed_args)


async def _direct_round_trip(client: AsyncClient, packed: bytes, count: int) -> list[Any]:
    """Send packed commands and read *count* replies (redis-py's pipeline, leaner).

    Connection errors are retried by the client's retry policy, as redis-py does;
    any other exception leaves the connection in an unknown state: it is dropped.
    """
    pool = cast(Any, client.connection_pool)
    if type(client) is LaneClient and client.lane_lock.acquire(blocking=False):
        try:
            conn = client.lane
            # a forked child opens its own: it must never write on its parent's socket
            if conn is None or client.lane_pid != os.getpid():
                conn = client.lane = await pool.get_connection()
                client.lane_pid = os.getpid()
            elif monotonic() - client.lane_used > LANE_IDLE_CHECK_S and _closed_by_server(conn):
                await conn.disconnect()  # it reconnects on send
            if client.follows_master:
                await _follow_master(pool, conn)
            return await _exchange_on(conn, packed, count)
        finally:
            client.lane_used = monotonic()
            client.lane_lock.release()
    conn = await pool.get_connection()
    try:
        return await _exchange_on(conn, packed, count)
    finally:
        await pool.release(conn)


def _closed_by_server(conn: Any) -> bool:
    """Whether the server closed *conn* while it sat idle (a restart, its idle timeout, CLIENT KILL).

    No reply is due on an idle connection, so a socket that reads as ready holds
    EOF. Polled directly: an event loop may not have run since the close.
    """
    at_eof = getattr(getattr(conn, "_reader", None), "at_eof", None)  # asyncio connections
    if at_eof is not None and at_eof():
        return True
    writer = getattr(conn, "_writer", None)
    sock = writer.get_extra_info("socket") if writer is not None else getattr(conn, "_sock", None)
    if sock is None or sock.fileno() < 0:
        return False  # not connected: the send connects
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


async def _follow_master(pool: Any, conn: Any) -> None:
    """Point a Sentinel-managed lane at the master the sentinels name now.

    A lane still open to a master the pool has seen replaced is dropped (redis-py
    does that to a pooled connection when it is released; the lane never is). A
    closed lane reconnects by connect(), which asks the sentinels: a send on a
    closed connection would reconnect to the old address (redis-py issue #3874).
    """
    if pool.master_address not in (None, (conn.host, conn.port)):
        await conn.disconnect()
    if not conn.is_connected:
        await conn.connect()


async def _exchange_on(conn: Any, packed: bytes, count: int) -> list[Any]:
    try:
        return cast(
            "list[Any]",
            await conn.retry.call_with_retry(
                lambda: _exchange(conn, packed, count), lambda _error: conn.disconnect()
            ),
        )
    except BaseException:
        await conn.disconnect()
        raise


async def _exchange(conn: Any, packed: bytes, count: int) -> list[Any]:
    await _send(conn, packed)
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(await conn.read_response())
        except ResponseError as exc:
            replies.append(exc)
    return replies


_PLAIN_CONNECTION: Any = redis_asyncio.Connection  # typed Any: conn is not narrowed by the check


async def _send(conn: Any, packed: bytes) -> None:
    """Write *packed* on *conn*: redis-py's send_packed_command without its per-call wait_for.

    redis-py wraps every drain in asyncio.wait_for (a task and a loop turn per
    send). A small write on an open socket leaves the transport's buffer empty,
    so there is nothing to drain; only a write that did not go out at once
    waits, through send_packed_command (its timeout, its disconnect on error).
    Only redis-py's own connection class: a subclass's send may do more (a
    Sentinel-managed connection follows a switch there).
    """
    writer = getattr(conn, "_writer", None)
    if (
        type(conn) is not _PLAIN_CONNECTION
        or writer is None
        or not conn.is_connected
        or writer.transport.is_closing()
        or (conn.health_check_interval and monotonic() > conn.next_health_check)  # the loop's clock
    ):
        await conn.send_packed_command([packed])  # connects, checks health
        return
    writer.write(packed)
    if writer.transport.get_write_buffer_size():
        await conn.send_packed_command([], check_health=False)  # drains, with the socket timeout


async def drive(client: AsyncClient, flow: Flow[T]) -> T:
    """Run a flow: send each batch of calls, hand the replies back, return its result."""
    try:
        step = next(flow)
        while True:
            if isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
                step = flow.send([])
            else:
                step = flow.send(await execute(client, step))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    except RedisError as exc:  # raised by the I/O itself (a refused AUTH at connect, ...)
        refused = refusal(exc)
        if refused is None:
            raise
        raise refused from exc


async def drive_with_retries(
    client: AsyncClient, make_flow: Callable[[], Flow[T]], retries: int, backoff_ms: int
) -> T:
    """Run a fresh flow again after a connection error, up to *retries* times, then raise."""
    attempt = 0
    while True:
        try:
            return await drive(client, make_flow())
        except TRANSIENT_ERRORS as exc:
            if attempt >= retries:
                raise BrokerUnavailableError(
                    f"Redis unreachable after {attempt + 1} attempt(s): {exc}; the operation may not have "
                    "taken effect"
                ) from exc
            await asyncio.sleep(backoff_ms * (2**attempt) / 1000)
            attempt += 1


class ClientHolder:
    """Base of the fronts: holds a client (its own, from a URL, or the caller's) and closes what it owns."""

    def __init__(self, url: str | AsyncClient) -> None:
        self._owns_client = isinstance(url, str)
        self._client = open_client(url) if isinstance(url, str) else url

    async def _drive(self, flow: Flow[T]) -> T:
        """Run *flow* once; a Redis that cannot be reached is BrokerUnavailableError, as for producers."""
        try:
            return await drive(self._client, flow)
        except TRANSIENT_ERRORS as exc:
            raise BrokerUnavailableError(
                f"Redis unreachable: {exc}; the operation may not have taken effect"
            ) from exc

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
