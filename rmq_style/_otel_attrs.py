"""Attribute names of the messaging conventions and the helpers the OpenTelemetry hooks share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, Status, StatusCode

from ._message import ReceivedMessage

log = structlog.get_logger("rmq_style.otel")

SYSTEM = "rmq_style"
SCHEMA_URL = "https://opentelemetry.io/schemas/1.27.0"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
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


def carried(m: ReceivedMessage) -> otel_context.Context | None:
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


def span_context(ctx: otel_context.Context | None) -> trace.SpanContext | None:
    if ctx is None:
        return None
    span_context = trace.get_current_span(ctx).get_span_context()
    return span_context if span_context.is_valid else None


def creation(m: ReceivedMessage) -> trace.SpanContext | None:
    return span_context(carried(m))


def receive_attributes(group: str, topic: str | None, queue_id: int | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {SYS: SYSTEM, OP_TYPE: "receive", OP_NAME: "receive", GROUP: group}
    if topic is not None:
        attributes[DEST] = topic
    if queue_id is not None:
        attributes[PART] = str(queue_id)
    return attributes


def describe(attributes: dict[str, Any], messages: Sequence[ReceivedMessage]) -> None:
    """Message id, reconsume times and tag of a single message; the count of a batch."""
    if len(messages) > 1:
        attributes[COUNT] = len(messages)
        return
    m = messages[0]
    attributes[MSG_ID] = safe(lambda: m.msg_id)
    reconsume = safe(lambda: m.reconsume_times)
    if isinstance(reconsume, int):
        attributes[RECONSUME] = reconsume
    tag = safe(lambda: m.tag)
    if tag:
        attributes[TAG] = tag


def safe(read: Any) -> Any:
    try:
        return read()
    except (ValueError, TypeError):  # an undecodable field (hostile entry): left out
        return ""


def metric_of(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: attributes[k] for k in (SYS, OP_NAME, DEST, GROUP, ERROR) if k in attributes}


def failed_on(span: Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_attribute(ERROR, type(exc).__qualname__)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
