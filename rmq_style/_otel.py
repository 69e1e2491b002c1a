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
The push consumer's hooks are in ``rmq_style._otel_push``, the shared names in ``_otel_attrs``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind

from ._errors import InvalidReceiptHandleError
from ._message import Message, ReceivedMessage
from ._otel_attrs import (
    COUNT,
    DEST,
    DURATION_BUCKETS,
    ERROR,
    GROUP,
    KIND,
    MSG_ID,
    OP_NAME,
    OP_TYPE,
    PART,
    SCHEMA_URL,
    SYS,
    SYSTEM,
    creation,
    describe,
    failed_on,
    log,
    metric_of,
    receive_attributes,
    safe,
)  # fmt: skip
from ._otel_push import ConsumerTelemetry
from ._receipt import ReceiptHandle

__all__ = ["OtelTelemetry"]


def _version() -> str:
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
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )  # fmt: skip
        self.process_duration = meter.create_histogram(
            "messaging.process.duration", unit="s", description="Duration of push listener calls",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
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
                failed_on(span, exc)
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
            attributes = receive_attributes(group, topic, queue_id)
            span = self.tracer.start_span(
                f"receive {topic}" if topic else "receive", kind=SpanKind.CLIENT,
                attributes=attributes, start_time=started_ns,
            )  # fmt: skip
            failed_on(span, exc)
            span.end()
            attributes[ERROR] = type(exc).__qualname__
            self.client_duration.record(time.perf_counter() - started, metric_of(attributes))
            raise
        try:
            self._received(group, receiving.messages, started_ns, time.perf_counter() - started)
        except Exception:  # noqa: BLE001 - telemetry never fails a receive
            log.exception("otel.hook_failed", hook="receive", group=group)

    def _received(
        self, group: str, messages: Sequence[ReceivedMessage], started_ns: int, duration: float
    ) -> None:
        by_topic: dict[str, list[ReceivedMessage]] = {}
        for m in messages:
            by_topic.setdefault(m.topic, []).append(m)
        for topic, found in by_topic.items():
            queues = {m.queue_id for m in found}
            attributes = receive_attributes(group, topic, queues.pop() if len(queues) == 1 else None)
            describe(attributes, found)
            links = [Link(c) for c in map(creation, found) if c is not None]
            span = self.tracer.start_span(
                f"receive {topic}", kind=SpanKind.CLIENT, attributes=attributes, links=links,
                start_time=started_ns,
            )  # fmt: skip
            span.end()
            metric = metric_of(attributes)
            self.client_duration.record(duration, metric)
            self.consumed_messages.add(len(found), metric)

    @contextlib.contextmanager
    def settling(self, group: str, operation: str, message: Any) -> Iterator[None]:
        """An ``{operation} {topic}`` span (CLIENT, settle) around a simple consumer's ack."""
        started_ns, started = time.time_ns(), time.perf_counter()
        error: Exception | None = None
        try:
            yield
        except Exception as exc:
            error = exc
            raise
        finally:
            try:
                self._settled(group, operation, message, started_ns, time.perf_counter() - started, error)
            except Exception:  # noqa: BLE001 - telemetry never fails a settle
                log.exception("otel.hook_failed", hook="settle", group=group)

    def _settled(
        self,
        group: str,
        operation: str,
        message: Any,
        started_ns: int,
        duration: float,
        error: Exception | None,
    ) -> None:
        attributes: dict[str, Any] = {SYS: SYSTEM, OP_TYPE: "settle", OP_NAME: operation, GROUP: group}
        links: list[Link] = []
        if isinstance(message, ReceivedMessage):
            topic: str | None = message.topic
            attributes[PART] = str(message.queue_id)
            attributes[MSG_ID] = safe(lambda: message.msg_id)
            context = creation(message)
            links = [Link(context)] if context is not None else []
        else:  # a receipt handle's text: its topic and queue when it parses (no message id, no link)
            try:
                handle = ReceiptHandle.parse(message)
            except InvalidReceiptHandleError:
                topic = None
            else:
                topic = handle.topic
                attributes[PART] = str(handle.queue_id)
        if topic is not None:
            attributes[DEST] = topic
        span = self.tracer.start_span(
            f"{operation} {topic}" if topic else operation, context=_EMPTY, kind=SpanKind.CLIENT,
            attributes=attributes, links=links, start_time=started_ns,
        )  # fmt: skip
        if error is not None:
            failed_on(span, error)
            attributes[ERROR] = type(error).__qualname__
        span.end()
        self.client_duration.record(duration, metric_of(attributes))

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


_EMPTY = otel_context.Context()  # a settle span is a root (linked to the message's creation)


def _with_properties(m: Message, carrier: dict[str, str]) -> Message:
    return Message(m.topic, m.body, m.tag, m.keys, {**m.properties, **carrier})
