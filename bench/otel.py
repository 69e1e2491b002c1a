"""OpenTelemetry's cost: consuming and sending with tracing off, on, and with main's code.

    python bench/otel.py                      # starts its own redis-server on a free port

Each case runs in its own process, same data, same run:

- consume: a noop async listener draining a preloaded backlog (8 queues) with
  a PushConsumer, each case in its own consumer group over the same entries;
  baseline: a redis.asyncio XREADGROUP + pipelined XACK loop (consume.py's).
- send: single sync ``Producer.send`` calls; baseline: a redis-py XADD loop.

Modes: ``main`` is the code of the merge base with main (``git archive``, no
tracing hooks at all), ``off`` this tree without ``rmq_style.otel.instrument()``
(the extra is installed but off), ``on`` instrumented with the SDK: a
TracerProvider with a BatchSpanProcessor to an exporter that drops the spans
and a MeterProvider with an in-memory reader. Rows ``off_vs_main`` and
``on_vs_off`` compare the modes directly. Median of 3 rounds; one JSON object per line.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CODE = Path(os.environ.get("RMQ_BENCH_CODE", ROOT))  # where the child imports rmq_style from
sys.path.insert(0, str(CODE))

import redis  # noqa: E402
import redis.asyncio as redis_asyncio  # noqa: E402

QUEUES = 8
BACKLOG = 30_000
SENDS = 4_000
ROUNDS = 3
BODY: dict[str, Any] = {"order_id": 1234567, "user": "user-000042", "status": "created", "amount": 129900}
MODES = ("main", "off", "on")


def stream_keys(topic: str) -> list[str]:
    from rmq_style._names import Keys

    return [Keys().queue(topic, q).stream for q in range(QUEUES)]


# -- children (one per case and round) ------------------------------------------------------------------


def instrument() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Dropped(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    from rmq_style import otel

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropped()))
    otel.instrument(provider, MeterProvider(metric_readers=[InMemoryMetricReader()]))


async def consume(url: str, topic: str, group: str) -> float:
    from rmq_style import PushConsumer, ReceivedMessage

    consumer = PushConsumer(url, group, consume_from="first")
    done = asyncio.Event()
    count = 0

    async def noop(msg: ReceivedMessage) -> None:
        nonlocal count
        count += 1
        if count == BACKLOG:
            done.set()

    consumer.subscribe(topic, "*", noop)
    start = time.perf_counter()
    await consumer.start()
    await done.wait()
    elapsed = time.perf_counter() - start
    await consumer.stop()
    return BACKLOG / elapsed


def send(url: str, topic: str) -> float:
    from rmq_style import Message, Producer

    with Producer(url) as producer:
        message = Message(topic, BODY)
        producer.send(message)  # route cached, connection open
        start = time.perf_counter()
        for _ in range(SENDS):
            producer.send(message)
        return SENDS / (time.perf_counter() - start)


def child(kind: str, mode: str, url: str, topic: str) -> None:
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    import rmq_style  # noqa: F401 - imported before the CPU clock starts

    if mode == "on":
        instrument()
    cpu = time.process_time()
    rate = asyncio.run(consume(url, topic, f"g-{mode}")) if kind == "consume" else send(url, topic)
    count = BACKLOG if kind == "consume" else SENDS + 1
    print(rate, (time.process_time() - cpu) / count * 1e6)  # and the CPU time per message (us)


def run_child(
    kind: str, mode: str, url: str, topic: str, main_code: Path | None
) -> tuple[float, float] | None:
    """(msgs/s, CPU us per message) of one case in its own process; None: main's code unavailable."""
    code = main_code if mode == "main" else ROOT
    if code is None:
        return None
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, mode, url, topic],
        env={**os.environ, "RMQ_BENCH_CODE": str(code)}, cwd=ROOT, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    rate, cpu_us = out.stdout.split()[-2:]
    return float(rate), float(cpu_us)


# -- baselines ------------------------------------------------------------------------------------------


async def raw_consume(url: str, topic: str) -> float:
    client = redis_asyncio.Redis.from_url(url, protocol=2)
    keys = stream_keys(topic)
    for key in keys:
        await client.xgroup_create(key, "raw", "0")
    count = 0
    start = time.perf_counter()
    while count < BACKLOG:
        reply = await client.xreadgroup("raw", "raw", dict.fromkeys(keys, ">"), count=32, block=1000)
        pipe = client.pipeline(transaction=False)
        for key, entries in reply:
            count += len(entries)
            pipe.xack(key, "raw", *[entry_id for entry_id, _ in entries])
        await pipe.execute()
    elapsed = time.perf_counter() - start
    await client.aclose()
    return BACKLOG / elapsed


def raw_send(url: str, topic: str) -> float:
    client = redis.Redis.from_url(url, protocol=2)
    key = stream_keys(topic)[0]
    body = json.dumps(BODY)
    start = time.perf_counter()
    for _ in range(SENDS):
        client.xadd(key, {"d": body})
    rate = SENDS / (time.perf_counter() - start)
    client.close()
    return rate


# -- driver ---------------------------------------------------------------------------------------------


def export_main(into: Path) -> Path | None:
    """main's code (the merge base of this branch with main), or None outside a git checkout."""
    try:
        base = subprocess.run(
            ["git", "merge-base", "HEAD", "main"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        archive = subprocess.run(
            ["git", "archive", base, "rmq_style"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return into


def row(case: str, ours: list[float], baseline: str, base: list[float], **cpu: list[float]) -> None:
    o, b = statistics.median(ours), statistics.median(base)
    extra = {name: round(statistics.median(values), 1) for name, values in cpu.items()}
    print(json.dumps({
        "bench": "otel", "case": case, "msgs_per_s": round(o), "baseline": baseline,
        "baseline_msgs_per_s": round(b), "ratio": round(o / b, 3), **extra,
    }))  # fmt: skip


def run(url: str, main_code: Path | None) -> None:
    from rmq_style import Admin, Message, Producer

    flush = redis.Redis.from_url(url)
    rates: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}  # CPU time of the child process per message (us): steadier under load
    for n in range(ROUNDS):
        flush.flushall()
        topic = f"bench-otel-{n}"
        with Admin(url) as admin:
            admin.create_topic(topic, queues=QUEUES)
            admin.create_topic(f"{topic}-send", queues=QUEUES)
        with Producer(url) as producer:
            batch = [Message(topic, BODY) for _ in range(500)]
            for _ in range(BACKLOG // len(batch)):
                producer.send_batch(batch)
        rates.setdefault("consume_raw", []).append(asyncio.run(raw_consume(url, topic)))
        rates.setdefault("send_raw", []).append(raw_send(url, f"{topic}-send"))
        for kind in ("consume", "send"):
            where = topic if kind == "consume" else f"{topic}-send"
            for mode in MODES if n % 2 == 0 else reversed(MODES):  # alternate the order: no mode always first
                measured = run_child(kind, mode, url, where, main_code)
                if measured is not None:
                    rates.setdefault(f"{kind}_{mode}", []).append(measured[0])
                    cpu.setdefault(f"{kind}_{mode}", []).append(measured[1])
    raw_consume_name = "redis.asyncio XREADGROUP (8 streams, COUNT 32) + pipelined XACK"
    for kind, baseline in (("consume", raw_consume_name), ("send", "redis-py XADD loop")):
        for mode in MODES:
            if f"{kind}_{mode}" in rates:
                case = f"{kind}_{mode}"
                row(case, rates[case], baseline, rates[f"{kind}_raw"], cpu_us_per_msg=cpu[case])
        main, off, on = (f"{kind}_{mode}" for mode in MODES)
        if main in rates:
            row(f"{kind}_off_vs_main", rates[off], "main's code", rates[main],
                cpu_us_per_msg=cpu[off], baseline_cpu_us_per_msg=cpu[main])  # fmt: skip
        row(f"{kind}_on_vs_off", rates[on], "tracing off", rates[off],
            cpu_us_per_msg=cpu[on], baseline_cpu_us_per_msg=cpu[off])  # fmt: skip
    flush.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
        return
    import structlog

    from rmq_style.testing import private_redis_url

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings and up
    with tempfile.TemporaryDirectory() as tmp, private_redis_url(None) as url:
        run(url, export_main(Path(tmp)))


if __name__ == "__main__":
    main()
