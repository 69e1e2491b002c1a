"""OpenTelemetry spans and metrics of rmq_style (imported only by ``rmq_style.otel.instrument``).

Follows the OpenTelemetry messaging semantic conventions (v1.27+,
``messaging.operation.type`` send / receive / process / settle):

- ``send {topic}`` (PRODUCER) around a send; its context goes into the message
  properties (``traceparent``, ``tracestate``, ``baggage``: the global propagator)
  and is the message's creation context, kept across retries and DLQ replays;
- ``receive {topic}`` (CLIENT) when a pull returned messages;
- ``process {topic}`` (CONSUMER) around each push listener call, linked to each
  message's creation context (or, with ``parent=True``, its child, single messages);
- ``ack {topic}``, ``retry {topic}``, ``dead_letter {topic}`` (CLIENT,
  ``messaging.operation.type=settle``) when the settle round carried them out.

No hook raises: a failure here is logged and the message goes on as without telemetry.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from contextvars import Token
from dataclasses import dataclass, field
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind, Status, StatusCode

from ._message import Message, ReceivedMessage
from .push.outcomes import ConsumeResult
from .push.state import Delivery

__all__ = ["OtelTelemetry"]

log = structlog.get_logger("rmq_style.otel")

SYSTEM = "rmq_style"
SCHEMA_URL = "https://opentelemetry.io/schemas/1.27.0"
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# attribute names (semantic conventions; messaging.rmq_style.* are ours, as messaging.rocketmq.* for RocketMQ)
SYS, DEST, PART, MSG_ID = (
    "messaging.system", "messaging.destination.name", "messaging.destination.partition.id",
    "messaging.message.id",
)  # fmt: skip
OP_TYPE, OP_NAME, GROUP, COUNT, ERROR = (
    "messaging.operation.type", "messaging.operation.name", "messaging.consumer.group.name",
    "messaging.batch.message_count", "error.type",
)  # fmt: skip
RECONSUME, TAG, KIND = (
    "messaging.rmq_style.message.reconsume_times", "messaging.rmq_style.message.tag",
    "messaging.rmq_style.message.type",
)  # fmt: skip


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 - once, at instrument()

    try:
        return version("rmq_style")
    except PackageNotFoundError:  # pragma: no cover - a source tree without metadata
        return "0"


class OtelTelemetry:
    """The hooks of ``rmq_style._telemetry`` with an OpenTelemetry tracer and meter."""

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None, *, parent: bool = False):
        self.parent = parent
        version = _version()
        self.tracer = trace.get_tracer("rmq_style", version, tracer_provider, schema_url=SCHEMA_URL)
        meter = metrics.get_meter("rmq_style", version, meter_provider, schema_url=SCHEMA_URL)
        self.client_duration = meter.create_histogram(
            "messaging.client.operation.duration", unit="s",
            description="Duration of send, receive and settle operations",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )  # fmt: skip
        self.process_duration = meter.create_histogram(
            "messaging.process.duration", unit="s", description="Duration of push listener calls",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )  # fmt: skip
        self.sent_messages = meter.create_counter(
            "messaging.client.sent.messages", unit="{message}", description="Messages sent"
        )
        self.consumed_messages = meter.create_counter(
            "messaging.client.consumed.messages",
            unit="{message}",
            description="Messages received or processed",
        )
        self.failed_messages = meter.create_counter(
            "messaging.rmq_style.failed.messages", unit="{message}",
            description="Messages whose listener call failed (raised, timed out, RECONSUME_LATER, ...)",
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"<OtelTelemetry parent={self.parent}>"

    # -- producers -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def sending(self, messages: Sequence[Message], kind: str = "normal") -> Iterator[_Sending]:
        topics = {m.topic for m in messages}
        topic = next(iter(topics)) if len(topics) == 1 else None
        attributes: dict[str, Any] = {SYS: SYSTEM, OP_TYPE: "send", OP_NAME: "send", KIND: kind}
        if topic is not None:
            attributes[DEST] = topic
        if len(messages) > 1:
            attributes[COUNT] = len(messages)
        started = time.perf_counter()
        with self.tracer.start_as_current_span(
            f"send {topic}" if topic else "send", kind=SpanKind.PRODUCER, attributes=attributes,
            record_exception=False, set_status_on_exception=False,
        ) as span:  # fmt: skip
            carrier: dict[str, str] = {}
            propagate.inject(carrier)  # the send span is each message's creation context
            sending = _Sending(
                [_with_properties(m, carrier) for m in messages] if carrier else list(messages)
            )
            sending.span = span
            try:
                yield sending
            except Exception as exc:
                _failed(span, exc)
                attributes[ERROR] = type(exc).__qualname__
                raise
            finally:
                metric = {k: attributes[k] for k in (SYS, OP_NAME, DEST, ERROR) if k in attributes}
                self.client_duration.record(time.perf_counter() - started, metric)
                if ERROR not in attributes:
                    self.sent_messages.add(len(messages), metric)

    # -- pull, lite pull, simple consumers -------------------------------------------------------

    @contextlib.contextmanager
    def receiving(
        self, group: str, topic: str | None = None, queue_id: int | None = None
    ) -> Iterator[_Receiving]:
        receiving = _Receiving()
        started_ns, started = time.time_ns(), time.perf_counter()
        try:
            yield receiving
        except Exception as exc:
            attributes = _receive_attributes(group, topic, queue_id)
            span = self.tracer.start_span(
                f"receive {topic}" if topic else "receive", kind=SpanKind.CLIENT,
                attributes=attributes, start_time=started_ns,
            )  # fmt: skip
            _failed(span, exc)
            span.end()
            attributes[ERROR] = type(exc).__qualname__
            self.client_duration.record(time.perf_counter() - started, _metric(attributes))
            raise
        try:
            self._received(group, receiving.messages, started_ns, time.perf_counter() - started)
        except Exception:
            log.exception("otel.hook_failed", hook="receive", group=group)

    def _received(
        self, group: str, messages: Sequence[ReceivedMessage], started_ns: int, duration: float
    ) -> None:
        by_topic: dict[str, list[ReceivedMessage]] = {}
        for m in messages:
            by_topic.setdefault(m.topic, []).append(m)
        for topic, found in by_topic.items():
            queues = {m.queue_id for m in found}
            attributes = _receive_attributes(group, topic, queues.pop() if len(queues) == 1 else None)
            _describe(attributes, found)
            links = [Link(c) for c in map(_creation, found) if c is not None]
            span = self.tracer.start_span(
                f"receive {topic}", kind=SpanKind.CLIENT, attributes=attributes, links=links,
                start_time=started_ns,
            )  # fmt: skip
            span.end()
            metric = _metric(attributes)
            self.client_duration.record(duration, metric)
            self.consumed_messages.add(len(found), metric)

    # -- push consumers --------------------------------------------------------------------------

    def consumer(self, group: str) -> ConsumerTelemetry:
        return ConsumerTelemetry(self, group)


@dataclass(slots=True)
class _Sending:
    messages: list[Any]
    span: Span = INVALID_SPAN

    def sent(self, results: Sequence[Any]) -> None:
        span = self.span
        queues = {r.queue.queue_id for r in results}
        if len(queues) == 1:
            span.set_attribute(PART, str(queues.pop()))
        if len(results) == 1:
            span.set_attribute(MSG_ID, results[0].msg_id)


@dataclass(slots=True)
class _Receiving:
    messages: Sequence[Any] = ()

    def got(self, messages: Sequence[Any]) -> None:
        self.messages = messages


@dataclass(slots=True)
class _Begun:
    span: Span
    token: Token[otel_context.Context]  # of otel_context.attach
    started: float
    metric: dict[str, Any]
    count: int


@dataclass(slots=True)
class ConsumerTelemetry:
    """The hooks of one push consumer (group): listener calls and settle rounds."""

    otel: OtelTelemetry
    group: str
    _base: dict[str, Any] = field(default_factory=dict)

    def begin(self, token: Any) -> _Begun | None:
        try:
            return self._begin(token)
        except Exception:
            log.exception("otel.hook_failed", hook="process", group=self.group)
            return None

    def _begin(self, token: Any) -> _Begun:
        messages = _messages(token)
        first = messages[0]
        topic = first.topic
        attributes = {
            SYS: SYSTEM, OP_TYPE: "process", OP_NAME: "process", DEST: topic, GROUP: self.group,
            PART: str(first.queue_id),
        }  # fmt: skip
        _describe(attributes, messages)
        carried = [_carried(m) for m in messages]
        single = carried[0] if len(carried) == 1 else None
        if single is not None and self.otel.parent:
            base, links = single, []  # the creation context is the parent (and its baggage is current)
        else:
            # links: the message's baggage, no parent (a push worker's ambient context is not the message's)
            base = trace.set_span_in_context(INVALID_SPAN, single) if single is not None else _EMPTY
            links = [Link(c) for c in (_span_context(x) for x in carried) if c is not None]
        span = self.otel.tracer.start_span(
            f"process {topic}", context=base, kind=SpanKind.CONSUMER, attributes=attributes, links=links
        )
        token_ = otel_context.attach(trace.set_span_in_context(span, base))
        metric = {SYS: SYSTEM, OP_NAME: "process", DEST: topic, GROUP: self.group}
        return _Begun(span, token_, time.perf_counter(), metric, len(messages))

    def end(self, begun: _Begun | None, outcome: object) -> None:
        if begun is None:
            return
        try:
            otel_context.detach(begun.token)
            span, metric = begun.span, begun.metric
            if isinstance(outcome, BaseException):
                _failed(span, outcome)
                metric[ERROR] = type(outcome).__qualname__
            elif isinstance(outcome, ConsumeResult) and outcome is not ConsumeResult.SUCCESS:
                metric[ERROR] = outcome.value
                span.set_attribute(ERROR, outcome.value)
                span.set_status(Status(StatusCode.ERROR, outcome.name))
            span.end()
            otel = self.otel
            otel.process_duration.record(time.perf_counter() - begun.started, metric)
            otel.consumed_messages.add(begun.count, metric)
            if ERROR in metric:
                otel.failed_messages.add(begun.count, metric)
        except Exception:
            log.exception("otel.hook_failed", hook="process", group=self.group)

    def settled(
        self,
        started_ns: int,
        acked: Sequence[Sequence[Delivery]],
        done: Sequence[Any],
        failed: Sequence[tuple[Delivery, Exception]] = (),
    ) -> None:
        try:
            for deliveries in acked:
                self._settle_span(started_ns, "ack", deliveries, None)
            for settled in done:
                operation = {"retried": "retry", "dead_lettered": "dead_letter"}.get(settled.outcome)
                if operation is None:  # already settled, group lost: what the decision was
                    decision = type(settled.delivery.decision).__name__
                    operation = {"RetryLater": "retry", "DeadLetterIt": "dead_letter"}.get(decision, "ack")
                self._settle_span(started_ns, operation, [settled.delivery], settled.outcome)
            for d, error in failed:
                decision = type(d.decision).__name__
                operation = {"RetryLater": "retry", "DeadLetterIt": "dead_letter"}.get(decision, "ack")
                self._settle_span(started_ns, operation, [d], None, error)
        except Exception:
            log.exception("otel.hook_failed", hook="settle", group=self.group)

    def _settle_span(
        self,
        started_ns: int,
        operation: str,
        deliveries: Sequence[Delivery],
        outcome: str | None,
        error: Exception | None = None,
    ) -> None:
        first = deliveries[0]
        topic = first.stream.queue.mq.topic
        attributes: dict[str, Any] = {
            SYS: SYSTEM, OP_TYPE: "settle", OP_NAME: operation, DEST: topic, GROUP: self.group,
            PART: str(first.stream.queue.mq.queue_id),
        }  # fmt: skip
        messages = [d.message for d in deliveries if d.message is not None]
        if len(deliveries) > 1:
            attributes[COUNT] = len(deliveries)
        elif messages:
            attributes[MSG_ID] = _safe(lambda: messages[0].msg_id)
        decision = first.decision
        reconsume = getattr(decision, "reconsume_times", None)
        if reconsume is not None:  # a retry: the reconsume times of the copy it schedules
            attributes[RECONSUME] = reconsume
        reason = getattr(decision, "reason", None)
        if operation == "dead_letter" and reason:
            attributes["messaging.rmq_style.dead_letter.reason"] = reason
        if outcome is not None and outcome not in ("retried", "dead_lettered"):
            attributes["messaging.rmq_style.settle.outcome"] = outcome
        links = [Link(c) for c in map(_creation, messages) if c is not None]
        span = self.otel.tracer.start_span(
            f"{operation} {topic}", context=_EMPTY, kind=SpanKind.CLIENT, attributes=attributes,
            links=links, start_time=started_ns,
        )  # fmt: skip
        if error is not None:
            _failed(span, error)
        elif outcome == "group_lost":
            span.set_attribute(ERROR, "group_lost")
            span.set_status(Status(StatusCode.ERROR, "the consumer group is gone (NOGROUP)"))
        span.end()


_EMPTY = otel_context.Context()


def _messages(token: Any) -> list[ReceivedMessage]:
    if type(token) is Delivery:
        assert token.message is not None
        return [token.message]
    out = []
    for item in token:
        m = item.message if isinstance(item, Delivery) else item
        if m is not None:
            out.append(m)
    return out


def _carried(m: ReceivedMessage) -> otel_context.Context | None:
    """The context a message carries in its properties (trace and baggage), or None.

    Properties are read from Redis and may be anything: a value that is not a
    string, or a traceparent that does not parse, is no context.
    """
    try:
        props = m.properties
    except (ValueError, TypeError, RecursionError):  # not JSON: the listener call reports it
        return None
    if not isinstance(props, dict):
        return None
    if not props:
        return None
    try:  # the propagator reads its fields (traceparent, tracestate, baggage); only str values
        return propagate.extract({k: v for k, v in props.items() if type(v) is str})
    except Exception:  # noqa: BLE001 - a propagator's bug on hostile input: no context
        return None


def _span_context(ctx: otel_context.Context | None) -> trace.SpanContext | None:
    if ctx is None:
        return None
    span_context = trace.get_current_span(ctx).get_span_context()
    return span_context if span_context.is_valid else None


def _creation(m: ReceivedMessage) -> trace.SpanContext | None:
    return _span_context(_carried(m))


def _with_properties(m: Message, carrier: dict[str, str]) -> Message:
    return Message(m.topic, m.body, m.tag, m.keys, {**m.properties, **carrier})


def _receive_attributes(group: str, topic: str | None, queue_id: int | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {SYS: SYSTEM, OP_TYPE: "receive", OP_NAME: "receive", GROUP: group}
    if topic is not None:
        attributes[DEST] = topic
    if queue_id is not None:
        attributes[PART] = str(queue_id)
    return attributes


def _describe(attributes: dict[str, Any], messages: Sequence[ReceivedMessage]) -> None:
    """Message id, reconsume times and tag of a single message; the count of a batch."""
    if len(messages) > 1:
        attributes[COUNT] = len(messages)
        return
    m = messages[0]
    attributes[MSG_ID] = _safe(lambda: m.msg_id)
    reconsume = _safe(lambda: m.reconsume_times)
    if isinstance(reconsume, int):
        attributes[RECONSUME] = reconsume
    tag = _safe(lambda: m.tag)
    if tag:
        attributes[TAG] = tag


def _safe(read: Any) -> Any:
    try:
        return read()
    except (ValueError, TypeError):  # an undecodable field (hostile entry): left out
        return ""


def _metric(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: attributes[k] for k in (SYS, OP_NAME, DEST, GROUP, ERROR) if k in attributes}


def _failed(span: Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_attribute(ERROR, type(exc).__qualname__)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
