"""The OpenTelemetry hooks of a push consumer: a process span per listener call, settle spans per round.

See rmq_style._otel (the spans of producers and pull consumers) and docs/tracing.md.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextvars import Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind, Status, StatusCode

from ._message import ReceivedMessage
from ._otel_attrs import (
    COUNT,
    DEST,
    ERROR,
    GROUP,
    MSG_ID,
    OP_NAME,
    OP_TYPE,
    PART,
    RECONSUME,
    SYS,
    SYSTEM,
    carried,
    creation,
    describe,
    failed_on,
    log,
    safe,
    span_context,
)  # fmt: skip
from .push.outcomes import ConsumeResult, DeadLetterIt, RetryLater
from .push.state import Delivery

if TYPE_CHECKING:
    from ._otel import OtelTelemetry

__all__ = ["ConsumerTelemetry"]


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

    def begin(self, token: Any) -> _Begun | None:
        try:
            return self._begin(token)
        except Exception:  # noqa: BLE001 - telemetry never fails a process
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
        describe(attributes, messages)
        contexts = [carried(m) for m in messages]
        single = contexts[0] if len(contexts) == 1 else None
        if single is not None and self.otel.parent:
            base, links = single, []  # the creation context is the parent (and its baggage is current)
        else:
            # links: the message's baggage, no parent (a push worker's ambient context is not the message's)
            base = trace.set_span_in_context(INVALID_SPAN, single) if single is not None else _EMPTY
            links = [Link(c) for c in (span_context(x) for x in contexts) if c is not None]
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
                failed_on(span, outcome)
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
        except Exception:  # noqa: BLE001 - telemetry never fails a process
            log.exception("otel.hook_failed", hook="process", group=self.group)

    def settled(
        self,
        started_ns: int,
        acked: Sequence[Sequence[Delivery]],
        done: Sequence[Any],
        failed: Sequence[tuple[Delivery, Exception]] = (),
    ) -> None:
        try:  # the operation is the decision carried out (retried: RetryLater, and so on)
            for deliveries in acked:
                self._settle_span(started_ns, "ack", deliveries, None)
            for settled in done:
                self._settle_span(
                    started_ns, _operation(settled.delivery), [settled.delivery], settled.outcome
                )
            for d, error in failed:
                self._settle_span(started_ns, _operation(d), [d], None, error)
        except Exception:  # noqa: BLE001 - telemetry never fails a settle
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
            attributes[MSG_ID] = safe(lambda: messages[0].msg_id)
        decision = first.decision
        reconsume = getattr(decision, "reconsume_times", None)
        if reconsume is not None:  # a retry: the reconsume times of the copy it schedules
            attributes[RECONSUME] = reconsume
        reason = getattr(decision, "reason", None)
        if operation == "dead_letter" and reason:
            attributes["messaging.rmq_style.dead_letter.reason"] = reason
        if outcome is not None and outcome not in ("retried", "dead_lettered"):
            attributes["messaging.rmq_style.settle.outcome"] = outcome
        links = [Link(c) for c in map(creation, messages) if c is not None]
        span = self.otel.tracer.start_span(
            f"{operation} {topic}", context=_EMPTY, kind=SpanKind.CLIENT, attributes=attributes,
            links=links, start_time=started_ns,
        )  # fmt: skip
        if error is not None:
            failed_on(span, error)
        elif outcome == "group_lost":
            span.set_attribute(ERROR, "group_lost")
            span.set_status(Status(StatusCode.ERROR, "the consumer group is gone (NOGROUP)"))
        span.end()


_EMPTY = otel_context.Context()


def _operation(d: Delivery) -> str:
    decision = d.decision
    return (
        "retry"
        if isinstance(decision, RetryLater)
        else "dead_letter"
        if isinstance(decision, DeadLetterIt)
        else "ack"
    )


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
