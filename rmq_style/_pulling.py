"""Pull consumption, free of I/O: queue bounds, pull statuses, the pull flow.

Offsets are positions between entries, named by entry ids, exactly like XREAD:
pulling from offset ``X`` returns the entries strictly after ``X``; ``"0-0"`` is
the beginning of the queue. ``next_offset`` is the id of the last entry returned
or skipped (by the tag filter), so pulling from it continues without gap or
duplicate. ``max_offset`` is the id of the last entry ever written (pulling
from it gives NO_NEW_MSG). ``min_offset`` is the smallest legal offset:
``"0-0"`` while no entry was trimmed away, else the position just before the
first retained entry.

>>> b = QueueBounds(first=Offset(5, 0), last=Offset(9, 0), added=10, length=4)
>>> str(b.min_position), str(b.max_position)      # 6 entries were trimmed
('4-18446744073709551615', '9-0')
>>> str(b.correction(Offset(0, 0))), b.correction(Offset(7, 0))
('4-18446744073709551615', None)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ._call_values import Call, Flow, command, single
from ._errors import TopicNotFoundError, UsageError
from ._filter import TagFilter
from ._message import MessageQueue, ReceivedMessage
from ._names import Keys
from ._offsets import ZERO, Offset, parse_offset
from ._producing import release_due_call
from ._replies import ReplyCode, classify
from ._routing import check_queue_id
from ._topics import TopicRoute, route_flow

__all__ = ["PullResult", "PullStatus", "QueueBounds", "QueueCache", "RouteCache"]

MAX_PULL = 1024  # entries per pull (bounds one reply)
INF = float("inf")
ALL_TAGS = TagFilter(None)
DEFAULT_BOUNDS_TTL_MS = 100  # how long a consumer trusts a queue's bounds between checks
Entry = tuple[bytes, Mapping[bytes, bytes]]


class PullStatus(StrEnum):
    FOUND = "FOUND"
    NO_NEW_MSG = "NO_NEW_MSG"
    NO_MATCHED_MSG = "NO_MATCHED_MSG"
    OFFSET_ILLEGAL = "OFFSET_ILLEGAL"


@dataclass(frozen=True, slots=True)
class PullResult:
    """What one pull found; resume from ``next_offset`` whatever the status."""

    status: PullStatus
    messages: list[ReceivedMessage]
    next_offset: str
    min_offset: str
    max_offset: str


@dataclass(frozen=True, slots=True)
class QueueBounds:
    """A queue's retained range, as reported by the pull_prepare script."""

    first: Offset | None  # first retained entry
    last: Offset  # last entry ever written (0-0: none)
    added: int  # entries ever written (the exclusive max queue offset)
    length: int
    next_due_ms: int = -1  # next delayed message (server ms), -1: none held
    now_ms: int = 0

    @property
    def min_position(self) -> Offset:
        if self.first is None:
            return self.last  # everything written is gone (or nothing was written)
        if self.added - self.length <= 0:
            return ZERO  # nothing was trimmed before the first entry
        return self.first.previous()

    @property
    def max_position(self) -> Offset:
        return self.last

    def correction(self, position: Offset) -> Offset | None:
        """Where to resume if *position* is illegal (entries trimmed after it, or past the end), else None."""
        if position > self.last:
            return self.last
        low = self.min_position
        return low if position < low else None

    def next_q_after(self, position: Offset) -> int:
        """The queue offset of the entry after *position*, which is min_position or max_position."""
        return self.added if position == self.last else self.added - self.length

    def result(
        self, status: PullStatus, next_offset: Offset, messages: list[ReceivedMessage] | None = None
    ) -> PullResult:
        last = max(self.last, next_offset)
        return PullResult(status, messages or [], str(next_offset), str(self.min_position), str(last))


def prepare_call(keys: Keys, route: TopicRoute, queue_id: int, limit: int = 1000) -> Call:
    """Release due delayed messages of the queue, and report its bounds."""
    return release_due_call(keys, route, queue_id, limit, script_name="pull_prepare")


def parse_bounds(topic: str, reply: Any) -> QueueBounds:
    if classify(reply) is ReplyCode.NOTOPIC:
        raise TopicNotFoundError(topic) from None
    nxt, now, first, last, added, length = single(reply)
    return QueueBounds(
        parse_offset(first) if first else None,
        parse_offset(last),
        int(added),
        int(length),
        int(nxt),
        int(now),
    )


def read_call(
    streams: Sequence[str], positions: Sequence[Offset], count: int, block_ms: int | None = None
) -> Call:
    args: list[Any] = ["XREAD", "COUNT", count]
    if block_ms is not None:
        args += ["BLOCK", block_ms]
    return command(*args, "STREAMS", *streams, *(str(p) for p in positions))


def read_reply(reply: Any) -> dict[str, list[Entry]]:
    """XREAD's reply as stream key -> entries (an empty read is nil, [] or {} depending on the server)."""
    out: dict[str, list[Entry]] = {}
    for stream, entries in single(reply) or ():
        key = stream.decode() if isinstance(stream, bytes) else str(stream)
        out[key] = entries
    return out


def block_wait_ms(remaining_ms: int, due_at: Sequence[float], now: float) -> int:
    """Block no longer than *remaining_ms*, nor past the next delayed message's due time (clock seconds)."""
    wait = remaining_ms
    for due in due_at:
        if due != INF:
            wait = min(wait, max(1, int((due - now) * 1000) + 1))
    return max(1, wait)


def queue_offset(fields: Mapping[bytes, bytes]) -> int:
    """An entry's ``q`` field (-1 if it has none)."""
    q = fields.get(b"q")
    return int(q) if q is not None and q.isdigit() else -1


@dataclass(slots=True)
class _Known:
    bounds: QueueBounds
    checked_at: float  # clock() when the bounds were read
    due_at: float  # clock() when the next held delayed message falls due (INF: none held)
    position: Offset | None = None  # a legal position in the queue...
    next_q: int = -1  # ...and the queue offset of the entry after it


class QueueCache:
    """What a consumer knows about the queues it reads, so most pulls are one plain XREAD.

    After a bounds check (the pull_prepare script) the consumer trusts the
    bounds for *ttl_s* seconds, or until a held delayed message falls due, and
    remembers where its last read ended together with the queue offset (``q``)
    the next entry must carry. A read from that position is checked against it:
    the ``q`` of the first entry read is the expected one iff nothing after the
    position was trimmed. Anything else (an unknown position, an empty read
    from another position, a gap, stale bounds, a due delayed message) takes
    the checked path: release, bounds, read, in one round trip.
    """

    __slots__ = ("_clock", "_known", "_last_text", "ttl_s")

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._known: dict[str, _Known] = {}
        self._last_text: tuple[object, Offset] = (None, ZERO)  # the last position read, as text

    def parse(self, offset: str | Offset) -> Offset:
        """parse_offset, skipped when *offset* is the text of the last position read (the next pull's)."""
        text, position = self._last_text
        return position if offset == text and type(offset) is str else parse_offset(offset)

    def usable(self, stream: str, position: Offset) -> _Known | None:
        """The knowledge for a fast read of *stream* after *position*, or None: check first."""
        known = self._known.get(stream)
        if known is None or known.position != position:
            return None
        now = self._clock()
        if now - known.checked_at >= self.ttl_s or now >= known.due_at:
            return None
        return known

    def due_at(self, stream: str) -> float:
        known = self._known.get(stream)
        return INF if known is None else known.due_at

    def learn(self, stream: str, bounds: QueueBounds) -> None:
        now = self._clock()
        due = INF if bounds.next_due_ms < 0 else now + (bounds.next_due_ms - bounds.now_ms) / 1000
        self._known[stream] = _Known(bounds, now, due)

    def at(self, stream: str, position: Offset, next_q: int) -> None:
        """*position* is legal and the entry after it will carry queue offset *next_q*."""
        known = self._known.get(stream)
        if known is not None:
            if next_q >= 0:
                known.position, known.next_q = position, next_q
            else:
                known.position = None

    def read(self, stream: str, entries: Sequence[Entry]) -> Offset:
        """Remember where a read (known to be legal) of *entries* ended; return that position."""
        eid, fields = entries[-1]
        text = eid.decode() if isinstance(eid, bytes) else str(eid)
        last = parse_offset(text)
        self._last_text = (text, last)
        q = queue_offset(fields)
        self.at(stream, last, q + 1 if q >= 0 else -1)
        return last

    def forget(self, stream: str) -> None:
        self._known.pop(stream, None)


def decode_matching(queue: MessageQueue, entries: Sequence[Entry], tags: TagFilter) -> list[ReceivedMessage]:
    """The entries that match *tags*, as messages."""
    topic, qid, new = queue.topic, queue.queue_id, ReceivedMessage
    if tags.tags is None:
        messages = [new(topic, qid, eid, fields) for eid, fields in entries]
    else:
        wanted = {t.encode() for t in tags.tags}
        messages = [new(topic, qid, eid, f) for eid, f in entries if f.get(b"t") in wanted]
    return messages


@dataclass(slots=True)
class RouteCache:
    """Topic routes cached for *ttl_s* seconds; resolves and checks a MessageQueue."""

    keys: Keys
    ttl_s: float = 30.0
    _routes: dict[str, tuple[TopicRoute, float]] = field(default_factory=dict)

    def route_flow(self, topic: str, *, refresh: bool = False) -> Flow[TopicRoute]:
        hit = self._routes.get(topic)
        if hit is not None and not refresh and time.monotonic() - hit[1] <= self.ttl_s:
            return hit[0]
        try:
            route = yield from route_flow(self.keys, topic)
        except TopicNotFoundError:
            self._routes.pop(topic, None)
            raise
        self._routes[topic] = (route, time.monotonic())
        return route

    def queue_flow(self, queue: MessageQueue) -> Flow[TopicRoute]:
        if not isinstance(queue, MessageQueue):
            raise UsageError(f"expected a MessageQueue, got {queue!r}")
        route = yield from self.route_flow(queue.topic)
        if not 0 <= queue.queue_id < route.queue_count:
            route = yield from self.route_flow(queue.topic, refresh=True)  # the topic may have grown
        check_queue_id(queue.topic, queue.queue_id, route.queue_count)
        return route


def check_bounds_ttl_ms(ttl_ms: int | float) -> float:
    if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int | float) or not 0 <= ttl_ms <= 60_000:
        raise UsageError(f"bounds_ttl_ms must be 0 to 60000, got {ttl_ms!r}")
    return float(ttl_ms)


def check_max_nums(max_nums: int) -> int:
    if isinstance(max_nums, bool) or not isinstance(max_nums, int) or not 1 <= max_nums <= MAX_PULL:
        raise UsageError(f"max_nums must be 1 to {MAX_PULL}, got {max_nums!r}")
    return max_nums


def pull_flow(
    keys: Keys,
    routes: RouteCache,
    queue: MessageQueue,
    offset: str | Offset,
    max_nums: int,
    expression: str | TagFilter,
    block: float | None,
    cache: QueueCache | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Flow[PullResult]:
    """One pull: release due delayed messages, check the offset, read after it (long-polling if *block*).

    With a *cache* that vouches for the offset (see QueueCache) the pull is one
    XREAD; without one every read is checked (pull_prepare in the same round trip).
    """
    if cache is None:
        cache = QueueCache(0.0, clock)
    position = cache.parse(offset)
    check_max_nums(max_nums)
    if isinstance(expression, TagFilter):
        tags = expression
    else:
        tags = ALL_TAGS if expression == "*" else TagFilter.parse(expression)
    if block is not None and (isinstance(block, bool) or not isinstance(block, int | float) or block < 0):
        raise UsageError(f"block is a timeout in seconds (>= 0) or None, got {block!r}")
    route = yield from routes.queue_flow(queue)
    stream = keys.queue(queue.topic, queue.queue_id).stream
    deadline = None if block is None else clock() + block
    skipped = False
    while True:
        entries: list[Entry] | None = None
        known = cache.usable(stream, position)
        if known is not None:
            (read,) = yield [read_call([stream], [position], max_nums)]
            entries = read_reply(read).get(stream, [])
            if entries and queue_offset(entries[0][1]) != known.next_q:
                entries = None  # a gap: entries after the position were trimmed
            bounds = known.bounds
        if entries is None:
            prep, read = yield [
                prepare_call(keys, route, queue.queue_id),
                read_call([stream], [position], max_nums),
            ]
            bounds = parse_bounds(queue.topic, prep)
            cache.learn(stream, bounds)
            corrected = bounds.correction(position)
            if corrected is not None:
                cache.at(stream, corrected, bounds.next_q_after(corrected))
                return bounds.result(PullStatus.OFFSET_ILLEGAL, corrected)
            entries = read_reply(read).get(stream, [])
            if not entries:
                cache.at(stream, position, bounds.added)  # legal, and nothing after it yet
        while not entries:
            remaining_ms = 0 if deadline is None else int((deadline - clock()) * 1000)
            if remaining_ms <= 0:
                status = PullStatus.NO_MATCHED_MSG if skipped else PullStatus.NO_NEW_MSG
                return bounds.result(status, position)
            wait = block_wait_ms(remaining_ms, [cache.due_at(stream)], clock())
            (read,) = yield [read_call([stream], [position], max_nums, wait)]
            entries = read_reply(read).get(stream, [])
            if not entries and wait < remaining_ms:
                break  # a delayed message is due: release it, then read again
        if not entries:
            continue
        messages = decode_matching(queue, entries, tags)
        position = cache.read(stream, entries)
        if messages:
            return bounds.result(PullStatus.FOUND, position, messages)
        skipped = True
        if deadline is None:
            return bounds.result(PullStatus.NO_MATCHED_MSG, position)


def bounds_flow(keys: Keys, routes: RouteCache, queue: MessageQueue) -> Flow[QueueBounds]:
    route = yield from routes.queue_flow(queue)
    (prep,) = yield [prepare_call(keys, route, queue.queue_id)]
    return parse_bounds(queue.topic, prep)
