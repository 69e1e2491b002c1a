"""OpenTelemetry (rmq_style.otel): spans and metrics with the SDK's in-memory exporter and reader.

The pattern of FastStream's tests (tests/opentelemetry): an InMemorySpanExporter
behind a SimpleSpanProcessor, an InMemoryMetricReader; the asserts are on the
span tree (names, kinds, parents, links) and on the attributes of the messaging
semantic conventions. Both backends; the cross-process test needs a real server.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from structlog.testing import capture_logs

from rmq_style import (
    AsyncLitePullConsumer,
    AsyncProducer,
    AsyncPullConsumer,
    AsyncSimpleConsumer,
    Message,
    PushConsumer,
    ReceivedMessage,
    SimpleConsumer,
    StaleReceiptHandleError,
    TransactionProducer,
    TransactionState,
    otel,
)
from rmq_style._otel import OtelTelemetry
from tests.pushkit import ROOT, create_topic, dead_letters, fast_settings, until


class Traced:
    def __init__(self, parent: bool = False) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meters = MeterProvider(metric_readers=[self.reader])
        otel.instrument(self.provider, self.meters, parent=parent)
        self.tracer = self.provider.get_tracer("test")

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.spans(name)
        assert len(found) == 1, [s.name for s in self.spans()]
        return found[0]

    def metrics(self) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    out.setdefault(metric.name, []).extend(metric.data.data_points)
        return out


@pytest.fixture
def traced() -> Iterator[Traced]:
    t = Traced()
    yield t
    otel.uninstrument()


@pytest.fixture
def traced_parent() -> Iterator[Traced]:
    t = Traced(parent=True)
    yield t
    otel.uninstrument()


def sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body in a fresh event loop (the suite has no asyncio plugin)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        with capture_logs():
            asyncio.run(test(*args, **kwargs))

    return run


def linked(span: ReadableSpan) -> list[int]:
    return [link.context.span_id for link in span.links]


async def consume(url: str, listener: Any, until_spans: Any, **settings: Any) -> PushConsumer:
    consumer = PushConsumer(url, "billing", fast_settings(**settings))
    consumer.subscribe("orders", "*", listener)
    async with consumer:
        await until(until_spans, what="the spans")
    return consumer


@sync
async def test_send_process_retry_ack_across_the_retry(url: str, traced: Traced) -> None:
    """request -> send (PRODUCER, child); each delivery's process span (CONSUMER) and the settle
    spans link to the send span: the trace goes on in the retry."""
    await create_topic(url, queues=2)
    with traced.tracer.start_as_current_span("POST /orders") as request:
        async with AsyncProducer(url) as producer:
            sent = await producer.send(Message("orders", {"id": 1}, tag="created"), queue_id=1)
    calls: list[ReceivedMessage] = []

    async def listener(msg: ReceivedMessage) -> None:
        calls.append(msg)
        assert trace.get_current_span().name == "process orders"  # the listener runs in its span
        if msg.reconsume_times == 0:
            raise ValueError("boom")

    await consume(url, listener, lambda: traced.spans("ack orders"))
    send = traced.one("send orders")
    assert send.kind is SpanKind.PRODUCER
    assert send.parent is not None and send.parent.span_id == request.get_span_context().span_id
    assert dict(send.attributes or {}) == {
        "messaging.system": "rmq_style",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "orders",
        "messaging.destination.partition.id": "1",
        "messaging.message.id": sent.msg_id,
        "messaging.rmq_style.message.type": "normal",
    }
    assert set(calls[0].properties) == {"traceparent"}  # the creation context travels in the message
    first, second = traced.spans("process orders")
    for span, reconsume in ((first, 0), (second, 1)):
        assert span.kind is SpanKind.CONSUMER
        assert span.parent is None and linked(span) == [send.context.span_id]
        attributes = span.attributes or {}
        assert attributes["messaging.message.id"] == sent.msg_id
        assert attributes["messaging.consumer.group.name"] == "billing"
        assert attributes["messaging.destination.partition.id"] == "1"
        assert attributes["messaging.rmq_style.message.reconsume_times"] == reconsume
    assert first.status.status_code is StatusCode.ERROR
    assert (first.attributes or {})["error.type"] == "ValueError"
    assert [e.name for e in first.events] == ["exception"]
    assert second.status.status_code is StatusCode.UNSET
    retry, ack = traced.one("retry orders"), traced.one("ack orders")
    assert (retry.attributes or {})["messaging.operation.type"] == "settle"
    assert (retry.attributes or {})["messaging.rmq_style.message.reconsume_times"] == 1
    assert retry.kind is SpanKind.CLIENT and linked(retry) == linked(ack) == [send.context.span_id]
    points = traced.metrics()
    assert sum(p.count for p in points["messaging.process.duration"]) == 2
    assert sum(p.value for p in points["messaging.rmq_style.failed.messages"]) == 1
    assert sum(p.value for p in points["messaging.client.sent.messages"]) == 1
    (errors,) = [p for p in points["messaging.process.duration"] if "error.type" in p.attributes]
    assert errors.attributes["error.type"] == "ValueError"


@sync
async def test_dead_letter_span_and_a_hostile_traceparent(url: str, traced: Traced) -> None:
    await create_topic(url, queues=1)
    async with AsyncProducer(url) as producer:
        await producer.send(Message("orders", "poison"))
    # a traceparent that does not parse: consumed as a message without context
    traced.exporter.clear()
    otel.uninstrument()
    async with AsyncProducer(url) as producer:
        await producer.send(Message("orders", "bad", properties={"traceparent": "00-zz-zz-01"}))
    otel.instrument(traced.provider, traced.meters)

    async def listener(msg: ReceivedMessage) -> None:
        if msg.value() == "poison":
            raise RuntimeError("cannot")

    await consume(
        url, listener, lambda: traced.spans("dead_letter orders") and traced.spans("ack orders"),
        max_reconsume_times=0,
    )  # fmt: skip
    dead = traced.one("dead_letter orders")
    assert (dead.attributes or {})["messaging.operation.type"] == "settle"
    assert "RuntimeError: cannot" in str((dead.attributes or {})["messaging.rmq_style.dead_letter.reason"])
    assert len(await dead_letters(url, "billing", queues=1)) == 1
    spans = {str(s.attributes and s.attributes.get("error.type")): s for s in traced.spans("process orders")}
    assert set(spans) == {"RuntimeError", "None"}
    assert not spans["None"].links  # no context: no link


@sync
async def test_a_batch_listener_links_every_message(url: str, traced: Traced) -> None:
    await create_topic(url, queues=1)
    async with AsyncProducer(url) as producer:
        for n in range(3):
            await producer.send(Message("orders", n))
    sends = [s.context.span_id for s in traced.spans("send orders")]
    batches: list[int] = []

    async def listener(msgs: list[ReceivedMessage]) -> None:
        batches.append(len(msgs))

    await consume(url, listener, lambda: sum(batches) == 3 and traced.spans("ack orders"),
                  consume_message_batch_max_size=8)  # fmt: skip
    processed = traced.spans("process orders")
    assert sorted(sid for span in processed for sid in linked(span)) == sorted(sends)
    assert batches == [3]  # read in one XREADGROUP: one listener call
    assert (processed[0].attributes or {})["messaging.batch.message_count"] == 3
    assert "messaging.message.id" not in (processed[0].attributes or {})


@sync
async def test_parent_option_and_baggage(url: str, traced_parent: Traced) -> None:
    """parent=True: the process span is the send span's child, and the sender's baggage is current."""
    await create_topic(url, queues=1)
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        async with AsyncProducer(url) as producer:
            await producer.send(Message("orders", 1))
    finally:
        context.detach(token)
    seen: list[object] = []

    def listener(msg: ReceivedMessage) -> None:  # sync: runs in the thread pool, in the span's context
        seen.append(baggage.get_baggage("tenant"))

    await consume(url, listener, lambda: traced_parent.spans("ack orders"))
    send, process = traced_parent.one("send orders"), traced_parent.one("process orders")
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert process.context.trace_id == send.context.trace_id and not process.links
    assert seen == ["acme"]


@sync
async def test_pull_and_lite_pull_receive_spans(url: str, traced: Traced) -> None:
    await create_topic(url, queues=1)
    async with AsyncProducer(url) as producer:
        await producer.send_batch([Message("orders", n) for n in range(2)])
    (send,) = traced.spans("send orders")
    assert (send.attributes or {})["messaging.batch.message_count"] == 2
    async with AsyncPullConsumer(url, "stats") as puller:
        result = await puller.pull((await puller.fetch_queues("orders"))[0], "0-0")
        assert len(result.messages) == 2
        assert not (await puller.pull(result.messages[0].queue, result.next_offset)).messages  # no span
    receive = traced.one("receive orders")
    assert receive.kind is SpanKind.CLIENT and linked(receive) == [send.context.span_id] * 2
    attributes = receive.attributes or {}
    assert attributes["messaging.consumer.group.name"] == "stats"
    assert attributes["messaging.batch.message_count"] == 2
    assert attributes["messaging.destination.partition.id"] == "0"
    traced.exporter.clear()
    async with AsyncLitePullConsumer(url, "audit", consume_from="first") as lite:
        await lite.subscribe("orders")
        got: list[ReceivedMessage] = []
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            got += await lite.poll(timeout=0.2)
    assert len(got) == 2
    receives = traced.spans("receive orders")
    assert sorted(sid for span in receives for sid in linked(span)) == [send.context.span_id] * 2
    assert all((s.attributes or {})["messaging.consumer.group.name"] == "audit" for s in receives)


@sync
async def test_simple_consumer_receive_and_ack_spans(url: str, traced: Traced) -> None:
    """receive (CLIENT, one span per topic, linked to each message's send span); each ack a settle span
    (CLIENT, linked); a stale ack's span records the error; an empty receive makes no span."""
    await create_topic(url, queues=1)
    async with AsyncProducer(url) as producer:
        await producer.send_batch([Message("orders", n) for n in range(2)])
    (send,) = traced.spans("send orders")
    fast = {"consume_from": "first", "await_duration": 0.05}
    async with AsyncSimpleConsumer(url, "jobs", {"orders": "*"}, **fast) as consumer:
        messages = await consumer.receive(max_messages=8, invisible_duration=30)
        assert len(messages) == 2
        await consumer.ack(messages[0])
        with pytest.raises(StaleReceiptHandleError):
            await consumer.ack(messages[0])
        assert await consumer.receive(max_messages=8, invisible_duration=30) == []
    receive = traced.one("receive orders")
    assert receive.kind is SpanKind.CLIENT and linked(receive) == [send.context.span_id] * 2
    attributes = dict(receive.attributes or {})
    assert attributes["messaging.consumer.group.name"] == "jobs"
    assert attributes["messaging.operation.type"] == "receive"
    assert attributes["messaging.batch.message_count"] == 2
    acked, stale = traced.spans("ack orders")
    assert acked.kind is SpanKind.CLIENT and linked(acked) == [send.context.span_id]
    assert acked.parent is None and acked.status.status_code is StatusCode.UNSET
    assert dict(acked.attributes or {}) == {
        "messaging.system": "rmq_style",
        "messaging.operation.type": "settle",
        "messaging.operation.name": "ack",
        "messaging.destination.name": "orders",
        "messaging.destination.partition.id": "0",
        "messaging.message.id": messages[0].msg_id,
        "messaging.consumer.group.name": "jobs",
    }
    assert stale.status.status_code is StatusCode.ERROR
    assert (stale.attributes or {})["error.type"] == "StaleReceiptHandleError"
    # the generated sync front, acking by the receipt handle's text: topic and queue, no message id
    traced.exporter.clear()
    with SimpleConsumer(url, "jobs", {"orders": "*"}, await_duration=0) as sync_consumer:
        sync_consumer.ack(messages[1].receipt_handle)
    (by_handle,) = traced.spans("ack orders")
    assert (by_handle.attributes or {})["messaging.destination.partition.id"] == "0"
    assert "messaging.message.id" not in (by_handle.attributes or {})
    durations = traced.metrics()["messaging.client.operation.duration"]
    assert {p.attributes["messaging.operation.name"] for p in durations} >= {"receive", "ack"}


def test_transactional_send_is_one_span_around_the_local_transaction(url: str, traced: Traced) -> None:
    asyncio.run(create_topic(url, queues=1))

    def execute(half: Any, arg: Any) -> TransactionState:
        with traced.tracer.start_as_current_span("local transaction"):
            return TransactionState.COMMIT

    with TransactionProducer(url, "tx", lambda m: TransactionState.UNKNOWN) as producer:
        result = producer.send_in_transaction(Message("orders", 1), execute)
    assert result.send_result is not None
    send, local = traced.one("send orders"), traced.one("local transaction")
    assert local.parent is not None and local.parent.span_id == send.context.span_id
    assert (send.attributes or {})["messaging.rmq_style.message.type"] == "transaction"
    assert (send.attributes or {})["messaging.message.id"] == result.msg_id


def test_send_failure_is_recorded_on_the_span(fake_url: str, traced: Traced) -> None:
    from rmq_style import Producer, TopicNotFoundError

    with Producer(fake_url) as producer, pytest.raises(TopicNotFoundError):
        producer.send(Message("missing", 1))
    span = traced.one("send missing")
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "TopicNotFoundError"
    assert [e.name for e in span.events] == ["exception"]


# -- across processes ---------------------------------------------------------------------------------


def test_a_trace_goes_on_in_the_worker_process_and_its_retry(real_url: str, traced: Traced, tmp_path: Path):
    """request -> send here; in a worker process (App(tracing=True, tracing_parent=True)): process
    (failed), retry, process again, its handler's own span, ack: one trace across both processes."""
    asyncio.run(create_topic(real_url, queues=2))
    spans_file = tmp_path / "spans.jsonl"
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.otel_worker", real_url, str(spans_file)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        with traced.tracer.start_as_current_span("POST /orders") as request:
            from rmq_style import Producer

            with Producer(real_url) as producer:
                producer.send(Message("orders", {"id": 1}))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and '"ack orders"' not in _read(spans_file):
            time.sleep(0.02)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    remote = [json.loads(line) for line in _read(spans_file).splitlines()]
    send = traced.one("send orders")
    trace_id = f"0x{request.get_span_context().trace_id:032x}"
    send_id = f"0x{send.context.span_id:016x}"
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in remote:
        by_name.setdefault(span["name"], []).append(span)
    assert sorted(by_name) == ["ack orders", "handle order", "process orders", "retry orders"]
    first, second = by_name["process orders"]
    for span in (first, second):
        assert span["context"]["trace_id"] == trace_id and span["parent_id"] == send_id
        assert span["kind"] == "SpanKind.CONSUMER"
    assert first["status"]["status_code"] == "ERROR"
    assert [first["attributes"]["messaging.rmq_style.message.reconsume_times"],
            second["attributes"]["messaging.rmq_style.message.reconsume_times"]] == [0, 1]  # fmt: skip
    (handle,) = by_name["handle order"]
    assert handle["parent_id"] == second["context"]["span_id"]
    for name in ("retry orders", "ack orders"):
        (span,) = by_name[name]
        assert [link["context"]["span_id"] for link in span["links"]] == [send_id]


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


# -- without OpenTelemetry ------------------------------------------------------------------------------

ABSENT = """
import sys
sys.modules["opentelemetry"] = None  # as if the otel extra were not installed: importing it fails
import asyncio
from rmq_style import App, ConfigurationError, Message, ReceivedMessage, otel

app = App("memory://absent", concurrency=1)
got = []

@app.subscribe("orders", group="g", consume_from="first")
async def handle(msg: ReceivedMessage) -> None:
    got.append(msg.value())

async def main() -> None:
    from rmq_style import AsyncAdmin, AsyncProducer
    async with AsyncAdmin(app.url) as admin:
        await admin.create_topic("orders", queues=1)
    async with AsyncProducer(app.url) as producer:
        await producer.send(Message("orders", "hello"))
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(app.run(stop, ready=ready))
    await ready.wait()
    for _ in range(500):
        if got:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await task

asyncio.run(main())
assert got == ["hello"], got
for attempt in (otel.instrument, lambda: App("memory://absent", tracing=True)):
    try:
        attempt()
    except ConfigurationError as exc:
        assert "rmq_style[otel]" in str(exc)
    else:
        raise AssertionError("no error")
print("ok", otel.instrumented(), sorted(m for m in sys.modules if m.startswith("rmq_style._otel")))
"""


def test_works_without_opentelemetry_installed() -> None:
    result = subprocess.run(
        [sys.executable, "-c", ABSENT], check=False, cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1].split() == ["ok", "False", "[]"]


def test_rmq_style_loads_its_opentelemetry_module_only_when_instrumented() -> None:
    """(redis-py itself imports opentelemetry when it is installed: the check is on rmq_style._otel.)"""
    code = (
        "import sys, rmq_style; p = rmq_style.Producer('memory://x'); a = rmq_style.App('memory://x');"
        "print('rmq_style._otel' in sys.modules, p._telemetry)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["False", "None"], result.stderr


@sync
async def test_orderly_listener_calls_have_process_spans(url: str, traced: Traced) -> None:
    await create_topic(url, queues=1)
    async with AsyncProducer(url) as producer:
        await producer.send(Message("orders", 1))
    seen: list[int] = []

    async def listener(msg: ReceivedMessage) -> None:
        seen.append(msg.reconsume_times)
        if len(seen) == 1:
            raise ValueError("hold the queue")

    consumer = PushConsumer(url, "billing", fast_settings(suspend_current_queue_time_ms=10))
    consumer.subscribe("orders", "*", listener, orderly=True)
    async with consumer:
        await until(lambda: len(traced.spans("process orders")) == 2, what="two process spans")
    send = traced.one("send orders")
    spans = failed, passed = traced.spans("process orders")
    assert linked(failed) == linked(passed) == [send.context.span_id]
    assert failed.status.status_code is StatusCode.ERROR and passed.status.status_code is StatusCode.UNSET
    reconsume = [(s.attributes or {}).get("messaging.rmq_style.message.reconsume_times") for s in spans]
    assert reconsume == [0, 1]


HOSTILE_FIELDS = st.dictionaries(
    st.sampled_from([b"i", b"q", b"r", b"b", b"t", b"k", b"p", b"c", b"d", b"x"]),
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from([b'{"traceparent": 5}', b"[1]", b'{"traceparent": "00-zz"}', b"{", b'"s"']),
        st.dictionaries(st.sampled_from(["traceparent", "tracestate", "baggage"]), st.text(max_size=60)).map(
            lambda d: json.dumps(d).encode()
        ),
    ),
)


@settings(max_examples=150, deadline=None)
@given(fields=HOSTILE_FIELDS)
def test_the_process_hooks_take_any_entry(fields: dict[bytes, bytes]) -> None:
    """Whatever an entry holds (read from Redis: hostile), the hooks neither raise nor log a failure."""
    telemetry = OtelTelemetry(TracerProvider(), MeterProvider())
    hooks = telemetry.consumer("g")
    message = ReceivedMessage("orders", 0, b"1-0", fields)
    with capture_logs() as logs:
        begun = hooks.begin([message])
        hooks.end(begun, ValueError("x"))
        with telemetry.receiving("g") as receiving:
            receiving.got([message])
    assert begun is not None and not logs
