"""The simple consumer's logic (RocketMQ 5's SimpleConsumer), free of I/O.

A simple consumer pulls batches and settles each message itself: ``receive``
leases up to 32 messages for an invisible duration, ``ack`` ends a lease,
``change_invisible_duration`` renews one under a new receipt handle. Every
transition is one script on the queue's slot (``simple_receive``,
``simple_ack``, ``simple_change``); how the leases are stored is in
docs/storage.md ("Simple consumers"), how simple and push consumers share a
group in docs/simple.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field

from ._call_values import Call, Flow, command, run_script, single
from ._entry_check import rejection
from ._errors import StaleReceiptHandleError, SubscriptionConflictError, UsageError
from ._filter import TagFilter
from ._message import DEFAULT_MAX_MESSAGE_SIZE, MessageQueue, pack_fields
from ._names import Keys, QueueKeys, check_group, check_topic
from ._offsets import ConsumeFrom
from ._pulling import RouteCache
from ._receipt import ReceiptHandle, SimpleMessage, Source, new_token, token_prefix
from ._replies import ReplyCode, classify, is_error_reply, refusal
from ._trace import DEFAULT_TRACE_MAXLEN, SubRecords, TraceBound

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "MAX_BATCH",
    "MAX_INVISIBLE_S",
    "MIN_INVISIBLE_S",
    "SIMPLE_CONSUMER",
    "SimpleCore",
    "SimpleSettings",
]

log = structlog.get_logger("rmq_style.simple")

# the name of every simple consumer in the stream groups: never a member id (those hold '@'), so
# push members never adopt a simple consumer's leased entries as a dead member's
SIMPLE_CONSUMER = "~simple"
MAX_BATCH = 32  # RocketMQ's MAX_MSG_NUMS_FOR_POP_REQUEST
MIN_INVISIBLE_S = 10.0  # RocketMQ's minInvisibleTimeMillsForRecv
MAX_INVISIBLE_S = 12 * 3600.0  # maxInvisibleTimeMills
MAX_AWAIT_S = 20.0  # the proxy's longest long polling
DEFAULT_MAX_ATTEMPTS = 17  # retryMaxTimes 16 + 1
CLUSTER_WAIT_SLICE_MS = 50  # a Redis Cluster: longest wait on one queue while others may get messages
_LIVE_KINDS = ("concurrent",)  # push kinds a simple consumer may share a group with


class SimpleSettings(BaseModel):
    """Simple consumer configuration with RocketMQ 5's defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    namespace: str = "rmq"
    await_duration_s: float = Field(20.0, ge=0, le=MAX_AWAIT_S, description="long polling of receive")
    max_attempts: int = Field(DEFAULT_MAX_ATTEMPTS, ge=1, le=10_000, description="deliveries, then the DLQ")
    consume_from: ConsumeFrom = ConsumeFrom.LAST
    consume_timestamp_ms: int | None = Field(None, description="for TIMESTAMP; default now - 30 min")
    max_message_size: int = Field(DEFAULT_MAX_MESSAGE_SIZE, gt=0, description="larger ones go to the DLQ")
    member_expiry_ms: int = Field(6000, gt=0, description="a push member silent longer is not live")
    route_ttl_s: float = Field(30.0, ge=0, description="how long a topic's queue count is trusted")
    message_trace: Literal["follow", "all", "off"] = Field(
        "follow",
        description="trace records (docs/trace.md): of messages their producer sampled, of all, or none",
    )
    trace_maxlen: int = Field(
        DEFAULT_TRACE_MAXLEN, ge=1, description="trace records kept per queue (XADD MAXLEN ~)"
    )
    trace_max_age_ms: int = Field(
        0, ge=0, description="trace records older than this are trimmed; 0: no age bound"
    )


def _seconds(value: object, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise UsageError(f"{what} is in seconds, {low:g} to {high:g}, got {value!r}")
    return float(value)


class SimpleCore:
    """State and flows shared by SimpleConsumer and AsyncSimpleConsumer."""

    def __init__(
        self,
        group: str,
        subscriptions: Mapping[str, str],
        settings: SimpleSettings,
        *,
        min_invisible_s: float = MIN_INVISIBLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.group = check_group(group)
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self.routes = RouteCache(self.keys, settings.route_ttl_s)
        self.subs: dict[str, TagFilter] = {}
        for topic, expression in subscriptions.items():
            self.subs[check_topic(topic)] = TagFilter.parse(expression)
        self.min_invisible_s = min_invisible_s  # lowered only by tests
        self.one_queue_per_read = False  # set by the front on a Redis Cluster
        self.closed = False
        self._clock = clock
        self._ready: set[MessageQueue] = set()  # queues whose stream groups this consumer made sure of
        self._checked: set[str] = set()  # topics whose group records were checked
        self._turn = 0
        self._refresh: set[str] = set()  # topics to read the route of again (a queue was gone)
        bound = TraceBound(settings.trace_maxlen, settings.trace_max_age_ms)
        self.tracing = SubRecords(self.group, settings.message_trace, bound)  # message trace (docs/trace.md)

    # -- subscriptions ----------------------------------------------------------------

    def subscribe(self, topic: str, expression: str = "*") -> None:
        """Receive *topic* too (or with another expression: it replaces the earlier one)."""
        self.subs[check_topic(topic)] = TagFilter.parse(expression)
        self._checked.discard(topic)

    def unsubscribe(self, topic: str) -> None:
        self.subs.pop(topic, None)

    def _check_group_flow(self, topic: str, tags: TagFilter) -> Flow[None]:
        """Refuse a group whose live push members of *topic* are not concurrent or filter otherwise.

        A simple consumer is no member (it takes no share of the queues: it reads them all), so
        it checks the group's records once, when it starts on a topic.
        """
        k = self.keys
        now, expression, kind = yield [
            command("TIME"),
            command("HGET", k.subscriptions(self.group), topic),
            command("HGET", k.subscription_kinds(self.group), topic),
        ]
        seconds, micros = single(now)
        since = int(seconds) * 1000 + int(micros) // 1000 - self.settings.member_expiry_ms
        # the group's topics are found through its subscriptions (progress, dlq list, expand_topic):
        # the expression is recorded when the topic has none (a push member's stays)
        live, _ = yield [
            command("ZCOUNT", k.members(self.group, topic), since, "+inf"),
            command("HSETNX", k.subscriptions(self.group), topic, str(tags)),
        ]
        if not single(live):
            return
        kind_text = _text(single(kind)) or "concurrent"
        current = _text(single(expression))
        if kind_text not in _LIVE_KINDS or (current is not None and current != str(tags)):
            raise SubscriptionConflictError(
                f"group {self.group!r} consumes topic {topic!r} with live {kind_text} members "
                f"(expression {current!r}); a simple consumer shares a group only with concurrent "
                f"push consumers of the same expression, here {str(tags)!r}: use another group"
            )

    def _prepare_flow(self, queues: Sequence[MessageQueue]) -> Flow[None]:
        """The group on each queue stream (at consume_from) and on its retry stream; the group's name."""
        new = [q for q in queues if q not in self._ready]
        if not new:
            return
        calls: list[Call] = [command("SADD", self.keys.groups(), self.group)]
        for queue in new:
            calls += self._group_calls(self.keys.queue(queue.topic, queue.queue_id))
        replies = yield calls
        for reply in replies:
            if isinstance(reply, Exception) and classify(reply) is not ReplyCode.BUSYGROUP:
                single(reply)
        self._ready.update(new)

    def _group_calls(self, qk: QueueKeys) -> list[Call]:
        where, value = self.settings.consume_from.value, ""
        if self.settings.consume_from == ConsumeFrom.TIMESTAMP:
            ms = self.settings.consume_timestamp_ms
            value = str(ms if ms is not None else int(time.time() * 1000) - 30 * 60_000)
        return [
            run_script("create_group", (qk.stream, qk.seq), (self.group, where, value)),
            command("XGROUP", "CREATE", qk.retry_stream(self.group), self.group, "0", "MKSTREAM"),
        ]

    def _queues_flow(self) -> Flow[list[MessageQueue]]:
        if not self.subs:
            raise UsageError("this simple consumer subscribes no topic: subscribe(topic) first")
        queues: list[MessageQueue] = []
        for topic, tags in list(self.subs.items()):
            route = yield from self.routes.route_flow(topic, refresh=topic in self._refresh)
            self._refresh.discard(topic)
            if topic not in self._checked:
                yield from self._check_group_flow(topic, tags)
                self._checked.add(topic)
            queues += [MessageQueue(topic, q) for q in range(route.queue_count)]
        yield from self._prepare_flow(queues)
        return queues

    # -- receive ----------------------------------------------------------------------

    def check_receive(self, max_messages: object, invisible_duration: object) -> tuple[int, int]:
        if (
            isinstance(max_messages, bool)
            or not isinstance(max_messages, int)
            or not 1 <= max_messages <= MAX_BATCH
        ):
            raise UsageError(f"max_messages must be 1 to {MAX_BATCH}, got {max_messages!r}")
        seconds = _seconds(invisible_duration, "invisible_duration", self.min_invisible_s, MAX_INVISIBLE_S)
        return max_messages, int(seconds * 1000)

    def receive_flow(self, max_messages: int, invisible_duration: float) -> Flow[list[SimpleMessage]]:
        """Up to *max_messages* messages, each invisible to other receivers for *invisible_duration* s.

        Returns as soon as some are there, else waits up to ``await_duration_s`` (long polling).
        """
        if self.closed:
            raise UsageError("this simple consumer is closed")
        want, invisible_ms = self.check_receive(max_messages, invisible_duration)
        deadline = self._clock() + self.settings.await_duration_s
        while True:
            queues = yield from self._queues_flow()
            self._turn = (self._turn + 1) % max(len(queues), 1)
            got: list[SimpleMessage] = []
            waits: list[tuple[QueueKeys, str, str]] = []
            soonest: float = float("inf")
            again = False
            for queue in queues[self._turn :] + queues[: self._turn]:
                if len(got) >= want:
                    break
                taken = yield from self._take_flow(queue, want - len(got), invisible_ms)
                if taken is None:
                    continue
                messages, handed, wake_in_ms, last_ids = taken
                got += messages
                again |= handed > len(messages)  # some were filtered or rejected: look again at once
                soonest = min(soonest, wake_in_ms)
                waits.append((self.keys.queue(queue.topic, queue.queue_id), *last_ids))
            if got:
                return got  # a batch's one way out: where a tracing `receive` hook wraps it
            remaining_ms = int((deadline - self._clock()) * 1000)
            if again:
                continue
            if remaining_ms <= 0 or not waits:
                return []
            yield from self._wait_flow(waits, max(1, int(min(remaining_ms, soonest))))

    def _take_flow(
        self, queue: MessageQueue, room: int, invisible_ms: int
    ) -> Flow[tuple[list[SimpleMessage], int, float, tuple[str, str]] | None]:
        """Lease up to *room* entries of *queue*: (messages, entries handed out, ms until something may
        be due, last ids of the queue and retry streams); None when the queue is gone."""
        route = yield from self.routes.route_flow(queue.topic)
        g, qk = self.group, self.keys.queue(queue.topic, queue.queue_id)
        keys = (
            qk.stream, qk.retry_stream(g), qk.invisible(g), qk.receipts(g), qk.dlq(g),
            qk.delay, qk.delayed, qk.seq, qk.trimmed, qk.trace,
        )  # fmt: skip
        t = self.tracing
        args = (
            g, SIMPLE_CONSUMER, invisible_ms, room, self.settings.max_attempts, token_prefix(),
            queue.topic, queue.queue_id, *route.retention.script_args,
            t.code, t.bound.maxlen, t.bound.max_age_ms, t.host,
        )  # fmt: skip
        (reply,) = yield [run_script("simple_receive", keys, args)]
        if classify(reply) is ReplyCode.NOTOPIC:
            log.warning("simple.queue_gone", group=g, topic=queue.topic, queue=queue.queue_id)
            self._refresh.add(queue.topic)
            return None
        if is_error_reply(reply) and refusal(reply) is None:
            # a key of this queue holds something else (WRONGTYPE, ...): the other queues go on
            log.error(
                "simple.queue_failed", group=g, topic=queue.topic, queue=queue.queue_id, error=str(reply)
            )
            return None
        now, next_visible, next_due, last_s, last_r, dead, no_group, *rows = single(reply)
        if dead:
            log.warning("simple.dead_lettered", group=g, topic=queue.topic, queue=queue.queue_id, count=dead)
        if no_group:
            log.warning("simple.group_recreated", group=g, topic=queue.topic, queue=queue.queue_id)
            self._ready.discard(queue)
            yield from self._prepare_flow([queue])
        messages, cleanup = self._sort_rows(queue, qk, rows)
        if cleanup:
            for reply in (yield cleanup):
                if isinstance(reply, Exception):
                    log.warning("simple.settle_failed", group=g, stream=qk.stream, error=str(reply))
        wake = [float(t) - float(now) for t in (next_visible, next_due) if int(t) >= 0]
        wake_in_ms = max(1.0, min(wake)) if wake else float("inf")
        if no_group:
            wake_in_ms = 1.0
        return messages, len(rows), wake_in_ms, (_text(last_s) or "0-0", _text(last_r) or "0-0")

    def _sort_rows(
        self, queue: MessageQueue, qk: QueueKeys, rows: Sequence[Any]
    ) -> tuple[list[SimpleMessage], list[Call]]:
        """The leased entries as messages; the calls that settle the rest (bad input, other tags)."""
        tags = self.subs.get(queue.topic, TagFilter(None))
        messages: list[SimpleMessage] = []
        cleanup: list[Call] = []
        for source_b, entry_id_b, flat, attempt, token_b, until_ms in rows:
            source: Source = "r" if _text(source_b) == "r" else "s"
            entry_id = _text(entry_id_b) or ""
            handle = ReceiptHandle(queue.topic, queue.queue_id, source, entry_id, _text(token_b) or "")
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            problem = rejection(fields, self.settings.max_message_size)
            if problem is not None:
                log.warning(
                    "simple.rejected", group=self.group, stream=qk.stream, offset=entry_id, reason=problem
                )
                cleanup += self._dead_letter_calls(qk, handle, fields, problem)
                if self.tracing.wants(fields):
                    why = {"reason": problem}
                    cleanup.append(self.tracing.record(qk, fields, int(attempt) - 1, "dead", detail=why))
            elif not tags.matches(_text(fields.get(b"t")) or None):
                cleanup.append(self.ack_call(handle))
                if self.tracing.wants(fields):
                    cleanup.append(self.tracing.record(qk, fields, int(attempt) - 1, "skipped"))
            else:
                messages.append(
                    SimpleMessage(
                        queue.topic, queue.queue_id, entry_id, fields, handle, int(attempt), int(until_ms)
                    )
                )
        return messages, cleanup

    def _dead_letter_calls(
        self, qk: QueueKeys, handle: ReceiptHandle, fields: Mapping[bytes, bytes], reason: str
    ) -> list[Call]:
        g, retry = self.group, handle.source == "r"
        values = [fields.get(name) or b"" for name in (b"q", b"r", b"b", b"t", b"k", b"p", b"c", b"d")]
        origin = (fields.get(b"o") or b"") if retry else handle.entry_id.encode()
        source = qk.retry_stream(g) if retry else qk.stream
        args = (
            g,
            handle.entry_id,
            "1" if retry else "0",
            fields.get(b"i") or b"",
            pack_fields([*values, origin]),
        )
        return [
            run_script("dead_letter", (source, qk.dlq(g)), (*args, qk.topic, qk.queue_id, reason)),
            command("ZREM", qk.invisible(g), handle.lease),
            command("HDEL", qk.receipts(g), handle.lease),
        ]

    def _wait_flow(self, waits: Sequence[tuple[QueueKeys, str, str]], wait_ms: int) -> Flow[None]:
        """Block until an entry arrives on a queue or retry stream after the ids last seen, or *wait_ms*."""
        if self.one_queue_per_read and len(waits) > 1:
            # a Redis Cluster refuses one read over several slots: wait on the queues in turn
            waits = [waits[self._turn % len(waits)]]
            wait_ms = min(wait_ms, CLUSTER_WAIT_SLICE_MS)
        streams = [k for qk, _, _ in waits for k in (qk.stream, qk.retry_stream(self.group))]
        ids = [i for _, last_s, last_r in waits for i in (last_s, last_r)]
        (reply,) = yield [command("XREAD", "COUNT", 1, "BLOCK", wait_ms, "STREAMS", *streams, *ids)]
        if isinstance(reply, Exception):
            single(reply)

    # -- ack and change ---------------------------------------------------------------

    def ack_call(self, handle: ReceiptHandle, message: SimpleMessage | None = None) -> Call:
        """``simple_ack``; with the ``sub`` record of *message* when it is traced (written only when the
        ack is accepted: one round trip)."""
        g, qk = self.group, self.keys.queue(handle.topic, handle.queue_id)
        stream = qk.retry_stream(g) if handle.source == "r" else qk.stream
        delete = "1" if handle.source == "r" else "0"
        args: tuple[Any, ...] = (g, handle.lease, handle.entry_id, handle.token, delete)
        if message is not None and self.tracing.wants(message.entry_fields):
            started = message.received_ms
            record = self.tracing.record(
                qk, message.entry_fields, message.reconsume_times, "ok", start_ms=started,
                duration_ms=max(int(time.time() * 1000) - started, 0),
                detail={"retry_entry": handle.entry_id} if handle.source == "r" else None,
            )  # fmt: skip
            args += record.args
        return run_script("simple_ack", (stream, qk.invisible(g), qk.receipts(g), qk.trace), args)

    def ack_flow(self, message: SimpleMessage | str) -> Flow[None]:
        """End the lease of *message* (or of the handle text): the group consumed it."""
        handle = _handle_of(message)
        (reply,) = yield [self.ack_call(handle, message if isinstance(message, SimpleMessage) else None)]
        _check_fresh(reply, "ack")

    def change_flow(self, message: SimpleMessage | str, duration: float) -> Flow[str]:
        """Make *message* invisible for *duration* s from now, under a new handle (returned and stored)."""
        handle = _handle_of(message)
        ms = int(_seconds(duration, "invisible duration", 0, MAX_INVISIBLE_S) * 1000)
        g, qk = self.group, self.keys.queue(handle.topic, handle.queue_id)
        renewed = ReceiptHandle(handle.topic, handle.queue_id, handle.source, handle.entry_id, new_token())
        args = (handle.lease, handle.token, renewed.token, ms)
        (reply,) = yield [run_script("simple_change", (qk.invisible(g), qk.receipts(g)), args)]
        until_ms = _check_fresh(reply, "change_invisible_duration")
        if isinstance(message, SimpleMessage):
            message.renewed(renewed, int(until_ms))
        return str(renewed)


def _handle_of(message: SimpleMessage | str) -> ReceiptHandle:
    if isinstance(message, SimpleMessage):
        return message.handle
    return ReceiptHandle.parse(message)


def _check_fresh(reply: object, what: str) -> Any:
    if classify(reply) is ReplyCode.STALEHANDLE:
        why = str(reply).partition(" ")[2]
        raise StaleReceiptHandleError(f"{what} refused, stale receipt handle: {why}")
    return single(reply)


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)
