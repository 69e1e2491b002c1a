"""The lane: packed round trips on one connection a client keeps aside (no pool checkout per call).

``execute`` (in _io) sends calls this way when the client allows it: script
calls and commands whose replies redis-py hands back as read go packed in one
write, and their replies are read straight from the connection. The cluster
driver of replicated sends (_replicated) uses the same exchange on a node's
connection.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable, Sequence
from time import monotonic
from typing import Any, cast

import redis.asyncio as redis_asyncio
from hiredis import pack_command
from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
from redis._parsers.hiredis import _AsyncHiredisParser
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._call_values import Call, Command, ScriptCall

__all__ = [
    "HIREDIS_PARSER",
    "LANE_IDLE_CHECK_S",
    "NOT_ENOUGH_DATA",
    "LaneClient",
    "RedisConnectionError",
    "RedisTimeoutError",
    "direct_round_trip",
    "exchange",
    "is_unblocked",
    "pack_calls",
]

# a lane idle for longer is checked before use; a server restart takes longer than this, so a
# lane it closed is never written to (a close while in use is a failure of that call)
LANE_IDLE_CHECK_S = 0.002


def is_unblocked(exc: ResponseError) -> bool:
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
            if is_unblocked(exc):
                raise RedisConnectionError(f"the server changed role during a blocking read: {exc}") from exc
            raise


# hiredis's parser and its "not enough data" reply, for an exchange that reads many replies in
# one loop (push.mark_lane): the I/O modules alone import redis
HIREDIS_PARSER: Any = _AsyncHiredisParser
NOT_ENOUGH_DATA: Any = _NOT_ENOUGH_DATA

# an exchange on a connection: send packed calls, read that many replies
Exchange = Callable[[Any, bytes, int], Any]  # an awaitable of the replies on the async side

# commands whose replies redis-py hands back as read (no response callback): they may go packed
_PLAIN_COMMANDS = frozenset({"XACK", "XDEL", "WAIT", "WAITAOF"})


def pack_calls(calls: Sequence[Call]) -> bytes | None:
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


async def direct_round_trip(
    client: redis_asyncio.Redis, packed: bytes, count: int, read: Exchange | None = None
) -> list[Any]:
    """Send packed commands and read *count* replies (redis-py's pipeline, leaner; *read*: the
    exchange on the connection, ``exchange`` unless given).

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
            return await _exchange_on(conn, packed, count, read)
        finally:
            client.lane_used = monotonic()
            client.lane_lock.release()
    conn = await pool.get_connection()
    try:
        return await _exchange_on(conn, packed, count, read)
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


async def _exchange_on(conn: Any, packed: bytes, count: int, read: Exchange | None) -> list[Any]:
    run = exchange if read is None else read
    try:
        return cast(
            "list[Any]",
            await conn.retry.call_with_retry(
                lambda: run(conn, packed, count), lambda _error: conn.disconnect()
            ),
        )
    except BaseException:
        await conn.disconnect()
        raise


async def exchange(conn: Any, packed: bytes, count: int) -> list[Any]:
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
