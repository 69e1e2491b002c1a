"""The lite pull consumer's logic (RocketMQ's DefaultLitePullConsumer), free of I/O.

Everything periodic (heartbeat and rebalance, auto-commit) runs inside ``poll``
when its interval has elapsed, so there is no background task and the sync
front is generated from the async one. Per owned queue the consumer keeps the
position of the last message handed to the application (what commit stores),
the position it has fetched up to, and at most one pull batch of prefetched
messages.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import structlog
from pydantic import BaseModel, ConfigDict, Field

from ._allocation import AllocationStrategy
from ._assigned_queues import AssignedQueues, QueueState
from ._call_values import Call, Flow, Pause, single
from ._errors import ConfigurationError, InvalidOffsetError, UsageError
from ._filter import TagFilter
from ._membership import check_subscribe_replies, heartbeat_call, new_member_id, subscribe_calls
from ._message import MessageQueue, ReceivedMessage
from ._names import Keys, check_group, check_topic
from ._offset_store import MessageModel, OffsetStore, default_instance_name
from ._offsets import ConsumeFrom, Offset, parse_offset
from ._pulling import (
    DEFAULT_BOUNDS_TTL_MS,
    MAX_PULL,
    Entry,
    QueueCache,
    RouteCache,
    block_wait_ms,
    bounds_flow,
    decode_matching,
    parse_bounds,
    prepare_call,
    queue_offset,
    read_call,
    read_reply,
)
from ._rebalance import all_queues, grown_queues, my_queues, reassign
from ._search_offset import position_for_timestamp_flow
from ._topics import TopicRoute

__all__ = ["ConsumeFrom", "LitePullCore", "LitePullSettings"]

# stdlib logging: a library must not print unless the application configures logging
log = structlog.get_logger("rmq_style.lite_pull")
_ALL = TagFilter(None)
CLUSTER_WAIT_SLICE_MS = 50  # a Redis Cluster: longest wait on one queue while others may get messages


class LitePullSettings(BaseModel):
    """Lite pull consumer configuration with RocketMQ's defaults (intervals may be shortened for tests)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    namespace: str = "rmq"
    message_model: MessageModel = "clustering"
    consume_from: ConsumeFrom = ConsumeFrom.LAST
    consume_timestamp_ms: int | None = Field(None, description="for TIMESTAMP; default now - 30 min")
    instance_name: str | None = Field(None, description="broadcasting: whose positions these are")
    pull_batch_size: int = Field(32, ge=1, le=MAX_PULL, description="per queue per pull, and per poll")
    poll_timeout_s: float = Field(5.0, ge=0)
    auto_commit: bool = True
    auto_commit_interval_ms: int = Field(5000, gt=0)
    heartbeat_interval_ms: int = Field(1000, gt=0, description="heartbeat and rebalance period")
    member_expiry_ms: int = Field(6000, gt=0)
    allocation: AllocationStrategy = "averagely"
    route_ttl_s: float = Field(30.0, ge=0)
    bounds_ttl_ms: int = Field(
        DEFAULT_BOUNDS_TTL_MS,
        ge=0,
        le=60_000,
        description="how long queue bounds and delayed messages are trusted between checks (0: every read)",
    )


class LitePullCore:
    """State and flows shared by LitePullConsumer and AsyncLitePullConsumer."""

    def __init__(self, group: str, settings: LitePullSettings, clock: Callable[[], float] = time.monotonic):
        self.group = check_group(group)
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self.member = new_member_id()
        self.routes = RouteCache(self.keys, settings.route_ttl_s)
        self.known = QueueCache(settings.bounds_ttl_ms / 1000, clock)
        self.store = OffsetStore(
            self.keys, group, settings.message_model, settings.instance_name or default_instance_name()
        )
        self._clock = clock
        self._mode: str | None = None
        self._subs: dict[str, TagFilter] = {}
        self._owned = AssignedQueues()
        self._counts: dict[str, int] = {}  # queue count of each subscribed topic at the last rebalance
        self._next_rebalance = 0.0
        self._next_commit = clock() + settings.auto_commit_interval_ms / 1000
        self.closed = False
        self.one_queue_per_read = False  # set by the front on a Redis Cluster
        self._wait_turn = 0

    # -- what the application sees -------------------------------------------------

    def assignment(self) -> list[MessageQueue]:
        return self._owned.assignment()

    def pause(self, queues: Iterable[MessageQueue]) -> None:
        self._owned.pause(queues)

    def resume(self, queues: Iterable[MessageQueue]) -> None:
        self._owned.resume(queues)

    def _check_open(self) -> None:
        if self.closed:
            raise UsageError("this lite pull consumer is closed")

    def _check_mode(self, mode: str) -> None:
        self._check_open()
        if self._mode not in (None, mode):
            raise UsageError(
                "subscribe and assign are mutually exclusive: this consumer already uses "
                f"{self._mode}(); use another consumer instance"
            )

    # -- subscribe / assign ----------------------------------------------------------

    def subscribe_flow(self, topic: str, expression: str) -> Flow[None]:
        check_topic(topic)
        tags = TagFilter.parse(expression)
        self._check_mode("subscribe")
        yield from self.routes.route_flow(topic, refresh=True)
        if self.settings.message_model == "clustering":
            calls = subscribe_calls(
                self.keys, self.group, topic, tags, self.member, self.settings.member_expiry_ms, "lite_pull"
            )
            check_subscribe_replies((yield calls), self.group, topic, tags, "lite_pull")
        self._mode = "subscribe"
        self._subs[topic] = tags
        yield from self.rebalance_flow()

    def assign_flow(self, queues: Iterable[MessageQueue]) -> Flow[None]:
        wanted = list(dict.fromkeys(queues))
        self._check_mode("assign")
        for queue in wanted:
            yield from self.routes.queue_flow(queue)
        self._mode = "assign"
        yield from self._reassign_flow(set(wanted))

    def rebalance_flow(self) -> Flow[None]:
        """Heartbeat, then own this member's share of each subscribed topic (all queues when broadcasting)."""
        self._next_rebalance = self._clock() + self.settings.heartbeat_interval_ms / 1000
        if self._mode != "subscribe":
            return
        routes: dict[str, TopicRoute] = {}
        for topic in self._subs:
            # fresh each time: an expanded topic's new queues are taken within one interval
            routes[topic] = yield from self.routes.route_flow(topic, refresh=True)
        # queues added while we ran start at their first entry (nothing sent there is skipped)
        counts = {t: r.queue_count for t, r in routes.items()}
        grown = grown_queues(self._counts, counts)
        self._counts = counts
        wanted: set[MessageQueue] = set()
        if self.settings.message_model == "broadcasting":
            for topic, route in routes.items():
                wanted.update(all_queues(topic, route.queue_count))
        else:
            expiry = self.settings.member_expiry_ms
            replies = yield [heartbeat_call(self.keys, self.group, t, self.member, expiry) for t in routes]
            for (topic, route), reply in zip(routes.items(), replies, strict=True):
                wanted.update(
                    my_queues(topic, route.queue_count, reply, self.member, self.settings.allocation)
                )
        yield from self._reassign_flow(wanted, grown)

    def _reassign_flow(self, wanted: set[MessageQueue], grown: set[MessageQueue] | None = None) -> Flow[None]:
        change = reassign(self._owned, wanted)
        dropped = change.lost
        if dropped:
            yield from self.commit_flow(dropped)  # hand the queues over at our last position
            for queue in dropped:
                del self._owned[queue]
            log.info("queues_released", group=self.group, queues=[str(q) for q in dropped])
        added = change.gained
        for queue in added:
            position = yield from self._start_position_flow(queue, first=queue in (grown or ()))
            self._owned[queue] = QueueState(position, position, position)
        if added:
            log.info("queues_acquired", group=self.group, queues=[str(q) for q in added])

    def _start_position_flow(self, queue: MessageQueue, *, first: bool = False) -> Flow[Offset]:
        """The group's stored position, or (stored now, unless a peer was faster) where consume_from says.

        *first*: a queue the topic gained while we ran starts at its first entry.
        """
        stored = yield from self.store.committed_flow(queue)
        if stored is not None:
            return stored
        start = ConsumeFrom.FIRST if first else self.settings.consume_from
        if start == ConsumeFrom.TIMESTAMP:
            ts = self.settings.consume_timestamp_ms
            if ts is None:
                ts = int(time.time() * 1000) - 30 * 60 * 1000
            position = yield from position_for_timestamp_flow(self.keys, self.routes, queue, ts)
        else:
            bounds = yield from bounds_flow(self.keys, self.routes, queue)
            position = bounds.min_position if start == ConsumeFrom.FIRST else bounds.max_position
        return (yield from self.store.commit_flow(queue, position, init=True))

    # -- positions ------------------------------------------------------------------

    def seek_flow(self, queue: MessageQueue, offset: str | Offset) -> Flow[None]:
        """Continue *queue* after *offset* (must lie between its min and max offset)."""
        position = parse_offset(offset)
        self._owned.state(queue)
        bounds = yield from bounds_flow(self.keys, self.routes, queue)
        if bounds.correction(position) is not None:
            raise InvalidOffsetError(
                f"offset {position} is outside queue {queue}'s range "
                f"{bounds.min_position} .. {bounds.max_position}"
            )
        self._owned.move(queue, position)

    def seek_bound_flow(self, queue: MessageQueue, end: bool) -> Flow[None]:
        self._owned.state(queue)
        bounds = yield from bounds_flow(self.keys, self.routes, queue)
        self._owned.move(queue, bounds.max_position if end else bounds.min_position)

    def seek_timestamp_flow(self, queue: MessageQueue, ts: object) -> Flow[None]:
        self._owned.state(queue)
        position = yield from position_for_timestamp_flow(self.keys, self.routes, queue, ts)  # type: ignore[arg-type]
        self._owned.move(queue, position)

    def committed_flow(self, queue: MessageQueue) -> Flow[str | None]:
        yield from self.routes.queue_flow(queue)
        stored = yield from self.store.committed_flow(queue)
        return None if stored is None else str(stored)

    def commit_flow(self, queues: Iterable[MessageQueue] | None = None) -> Flow[None]:
        """Store the position of each given (default: every owned) queue that moved since its last commit."""
        dirty = [
            (q, s)
            for q, s in ((q, self._owned[q]) for q in (self._owned if queues is None else queues))
            if s.position != s.committed
        ]
        calls: list[Call] = []
        spans = []
        for queue, state in dirty:
            part = self.store.commit_calls(queue, state.position)
            spans.append((len(calls), len(part)))
            calls += part
        if not calls:
            return
        replies = yield calls
        for (queue, state), (start, n) in zip(dirty, spans, strict=True):
            state.committed = self.store.parse_commit(queue, state.position, replies[start : start + n])

    # -- polling --------------------------------------------------------------------

    def _maintain_flow(self) -> Flow[None]:
        now = self._clock()
        if self._mode == "subscribe" and now >= self._next_rebalance:
            yield from self.rebalance_flow()
        if self.settings.auto_commit and now >= self._next_commit:
            self._next_commit = now + self.settings.auto_commit_interval_ms / 1000
            yield from self.commit_flow()

    def _absorb(self, queue: MessageQueue, stream: str, entries: list[Entry]) -> bool:
        """Buffer the messages of a legal read (non-empty) of *queue*."""
        tags = self._subs.get(queue.topic, _ALL)
        messages = decode_matching(queue, entries, tags)
        state = self._owned[queue]
        state.fetched = self.known.read(stream, entries)
        state.buffer.extend(messages)
        if not state.buffer:
            state.position = state.fetched
        return bool(messages)

    def poll_flow(self, timeout_s: float | None) -> Flow[list[ReceivedMessage]]:
        """Messages from the owned queues, waiting up to *timeout_s* (default poll_timeout_s) for some."""
        self._check_open()
        if self._mode is None:
            raise UsageError("call subscribe() or assign() before poll()")
        timeout = self.settings.poll_timeout_s if timeout_s is None else timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise UsageError(f"timeout is in seconds (>= 0), got {timeout_s!r}")
        deadline = self._clock() + timeout
        batch = self.settings.pull_batch_size
        while True:
            yield from self._maintain_flow()
            taken = self._owned.take(batch)
            if taken:
                return taken
            active = self._owned.active()
            streams = [self.keys.queue(q.topic, q.queue_id).stream for q in active]
            if active:
                # one XREAD per queue; a queue whose position the cache cannot vouch for is checked first
                calls: list[Call] = []
                expected: list[int | None] = []
                for queue, stream in zip(active, streams, strict=True):
                    fetched = self._owned[queue].fetched
                    known = self.known.usable(stream, fetched)
                    if known is None:
                        route = yield from self.routes.queue_flow(queue)
                        calls.append(prepare_call(self.keys, route, queue.queue_id))
                    expected.append(None if known is None else known.next_q)
                    calls.append(read_call([stream], [fetched], batch))
                replies = yield calls
                found = again = False
                n = 0
                for queue, stream, next_q in zip(active, streams, expected, strict=True):
                    if next_q is None:
                        found |= self._after_checked_read(queue, stream, replies[n], replies[n + 1])
                        n += 2
                        continue
                    entries = read_reply(replies[n]).get(stream, [])
                    n += 1
                    if entries and queue_offset(entries[0][1]) != next_q:
                        self.known.forget(stream)  # a gap: entries were trimmed, check and read again
                        again = True
                    elif entries:
                        found |= self._absorb(queue, stream, entries)
                if found or again:
                    continue
            remaining_ms = int((deadline - self._clock()) * 1000)
            if remaining_ms <= 0:
                return []
            until_duty = self._next_rebalance if self._mode == "subscribe" else float("inf")
            if self.settings.auto_commit:
                until_duty = min(until_duty, self._next_commit)
            wait = remaining_ms
            if until_duty != float("inf"):
                wait = min(wait, max(1, int((until_duty - self._clock()) * 1000)))
            if active:
                wait = block_wait_ms(wait, [self.known.due_at(s) for s in streams], self._clock())
                if self.one_queue_per_read and len(active) > 1:
                    # a Redis Cluster refuses one read over several slots: wait on the queues in
                    # turn, a slice each; the reads above look at all of them between slices
                    self._wait_turn += 1
                    at = self._wait_turn % len(active)
                    active, streams = active[at : at + 1], streams[at : at + 1]
                    wait = min(wait, CLUSTER_WAIT_SLICE_MS)
                positions = [self._owned[q].fetched for q in active]
                (reply,) = yield [read_call(streams, positions, batch, wait)]
                got = read_reply(reply)
                for queue, stream in zip(active, streams, strict=True):
                    if queue in self._owned and stream in got:
                        self._absorb(queue, stream, got[stream])
            else:  # nothing to read until the next rebalance: wait without spinning
                yield Pause(wait / 1000)

    def _after_checked_read(self, queue: MessageQueue, stream: str, prep: object, read: object) -> bool:
        bounds = parse_bounds(queue.topic, prep)
        self.known.learn(stream, bounds)
        state = self._owned[queue]
        corrected = bounds.correction(state.fetched)
        if corrected is not None:
            log.warning(
                "offset_illegal", group=self.group, topic=queue.topic, queue=queue.queue_id,
                offset=str(state.fetched), resume_at=str(corrected), reason="trimmed or past the end",
            )  # fmt: skip
            state.position = state.fetched = corrected
            self.known.at(stream, corrected, bounds.next_q_after(corrected))
            return False
        entries = read_reply(read).get(stream, [])
        if not entries:
            self.known.at(stream, state.fetched, bounds.added)  # legal, and nothing after it yet
            return False
        return self._absorb(queue, stream, entries)

    # -- end ------------------------------------------------------------------------

    def close_flow(self) -> Flow[None]:
        """Commit, then leave the group (its queues go to the other members at their next rebalance)."""
        if self.closed:
            return
        try:
            yield from self.commit_flow()
        finally:
            self.closed = True
        if self._mode == "subscribe" and self.settings.message_model == "clustering":
            expiry = self.settings.member_expiry_ms
            replies = yield [
                heartbeat_call(self.keys, self.group, t, self.member, expiry, join=False) for t in self._subs
            ]
            for reply in replies:
                single(reply)
        self._owned.clear()


def check_settings(settings: LitePullSettings) -> LitePullSettings:
    if settings.consume_from != ConsumeFrom.TIMESTAMP and settings.consume_timestamp_ms is not None:
        raise ConfigurationError("consume_timestamp_ms is only used with consume_from='timestamp'")
    return settings
