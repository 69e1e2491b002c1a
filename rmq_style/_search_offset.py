"""Offsets by store time (RocketMQ's searchOffset), free of I/O.

The store timestamp of an entry is its id's millisecond part, so the first
entry stored at or after a time is one XRANGE away, and the position before
it one XREVRANGE away.
"""

from __future__ import annotations

from datetime import datetime

from ._call_values import Flow, command, single
from ._errors import UsageError
from ._message import MessageQueue
from ._names import Keys
from ._offsets import Offset, parse_offset
from ._pulling import RouteCache, parse_bounds, prepare_call

__all__ = ["offset_for_timestamp_flow", "position_for_timestamp_flow", "timestamp_ms"]


def timestamp_ms(ts: datetime | int | float) -> int:
    """A timestamp as epoch ms: a datetime (naive = local time), or epoch ms as a number."""
    if isinstance(ts, datetime):
        return int(ts.timestamp() * 1000)
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise UsageError(f"a timestamp is a datetime or epoch milliseconds, got {ts!r}")
    return int(ts)


def offset_for_timestamp_flow(
    keys: Keys, routes: RouteCache, queue: MessageQueue, ts: datetime | int | float
) -> Flow[str | None]:
    """The id of the first entry stored at or after *ts* (exact), or None if there is none yet."""
    ms = timestamp_ms(ts)
    yield from routes.queue_flow(queue)
    stream = keys.queue(queue.topic, queue.queue_id).stream
    (found,) = yield [command("XRANGE", stream, str(Offset.from_timestamp_ms(ms)), "+", "COUNT", 1)]
    found = single(found)
    if not found:
        return None
    eid = found[0][0]
    return eid.decode() if isinstance(eid, bytes) else str(eid)


def position_for_timestamp_flow(
    keys: Keys, routes: RouteCache, queue: MessageQueue, ts: datetime | int | float
) -> Flow[Offset]:
    """The offset from which a pull returns exactly the entries stored at or after *ts*."""
    ms = timestamp_ms(ts)
    route = yield from routes.queue_flow(queue)
    stream = keys.queue(queue.topic, queue.queue_id).stream
    calls = [prepare_call(keys, route, queue.queue_id)]
    if ms > 0:
        calls.append(command("XREVRANGE", stream, f"({Offset.from_timestamp_ms(ms)}", "-", "COUNT", 1))
    replies = yield calls
    bounds = parse_bounds(queue.topic, replies[0])
    before = single(replies[1]) if ms > 0 else None
    if before:
        return parse_offset(before[0][0])
    if ms > bounds.last.ms:
        return bounds.last
    return bounds.min_position
