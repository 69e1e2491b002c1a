"""Message trace cost (docs/trace.md): traced against untraced consumption and sends, same run.

    python bench/trace.py                      # starts its own redis-server on a free port
    python bench/trace.py --redis-url URL      # reuse a server (its data is flushed!)

- consume: a PushConsumer (noop async listener, 8 queues) draining a preloaded
  backlog. Cases: ``follow`` (the default: messages not sampled, so nothing is
  recorded) and ``traced`` (every message sampled: one trace XADD per message,
  in the settle round trip), each against ``message_trace="off"`` (no recorder).
- send: Producer.send_batch of 100 and single sends with ``trace_sample=1``
  against ``trace_sample=0`` (one more round trip per call when traced).
- hooks: in-process, no Redis: the recorder's three hooks (listener start,
  end, settle round) on untraced deliveries (the ``follow`` default), against
  ``plan_round`` of the same deliveries (the settle planner they ride along):
  what ``follow`` costs per message where the end-to-end cases drown it in noise.

Median of 3 rounds; one JSON object per line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from itertools import count
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rmq_style import Admin, Message, Producer, PushConsumer, ReceivedMessage  # noqa: E402
from rmq_style.testing import private_redis_url  # noqa: E402

QUEUES = 8
BACKLOG = 40_000
SENDS = 400  # single sends per round
BATCHES = 100  # send_batch calls of 100 per round
ROUNDS = 3
BODY: dict[str, Any] = {"order_id": 1234567, "user": "user-000042", "status": "created", "amount": 129900}
_names = count()


def preload(url: str, topic: str, sample: float) -> None:
    with Admin(url) as admin:
        admin.create_topic(topic, queues=QUEUES)
    with Producer(url, trace_sample=sample) as producer:
        batch = [Message(topic, BODY) for _ in range(500)]
        for _ in range(BACKLOG // len(batch)):
            producer.send_batch(batch)


async def consume(url: str, topic: str, mode: str) -> float:
    consumer = PushConsumer(url, f"g{next(_names)}", consume_from="first", message_trace=mode)
    done = asyncio.Event()
    handled = 0

    async def noop(msg: ReceivedMessage) -> None:
        nonlocal handled
        handled += 1
        if handled == BACKLOG:
            done.set()

    consumer.subscribe(topic, "*", noop)
    start = time.perf_counter()
    await consumer.start()
    await done.wait()
    elapsed = time.perf_counter() - start
    await consumer.stop()
    return BACKLOG / elapsed


def send(url: str, sample: float, batch: bool) -> float:
    topic = f"s{next(_names)}"
    with Admin(url) as admin:
        admin.create_topic(topic, queues=QUEUES)
    with Producer(url, trace_sample=sample) as producer:
        producer.send(Message(topic, BODY))  # route cached, connection open
        start = time.perf_counter()
        if batch:
            messages = [Message(topic, BODY) for _ in range(100)]
            for _ in range(BATCHES):
                producer.send_batch(messages)
            n = BATCHES * 100
        else:
            for _ in range(SENDS):
                producer.send(Message(topic, BODY))
            n = SENDS
        return n / (time.perf_counter() - start)


def median(run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(ROUNDS))


def hooks() -> tuple[float, float]:
    """Deliveries per second through the follow-mode hooks, and through plan_round (acks)."""
    from rmq_style._filter import TagFilter
    from rmq_style._message import MessageQueue
    from rmq_style._names import Keys
    from rmq_style.push.outcomes import Ack
    from rmq_style.push.settle_plan import plan_round
    from rmq_style.push.state import Delivery, QueueState, StreamState, Subscription
    from rmq_style.push.trace_recorder import TraceRecorder

    sub = Subscription("t", TagFilter.parse("*"), lambda m: None, False, None)
    stream = StreamState("k", QueueState(MessageQueue("t", 0), Keys().queue("t", 0), sub), False)
    fields = {
        b"i": b"a" * 32,
        b"q": b"1",
        b"r": b"0",
        b"b": b"1",
        b"t": b"",
        b"k": b"",
        b"p": b"",
        b"d": b"{}",
    }
    batch = [Delivery(stream, b"1-%d" % n, fields, 2, None, Ack()) for n in range(32)]
    recorder = TraceRecorder("g", "m", trace_all=False, maxlen=10_000)
    n = 5000

    start = time.perf_counter()
    for _ in range(n):
        for d in batch:
            recorder.start(d)
            recorder.done(d)
        recorder.records(batch)
    ours = n * len(batch) / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(n):
        plan_round("g", batch)
    return ours, n * len(batch) / (time.perf_counter() - start)


def row(case: str, rate: float, baseline: str, base_rate: float) -> None:
    print(json.dumps({
        "bench": "trace", "case": case, "msgs_per_s": round(rate), "baseline": baseline,
        "baseline_msgs_per_s": round(base_rate), "ratio": round(rate / base_rate, 3),
    }), flush=True)  # fmt: skip


def main(url: str) -> None:
    flush = redis.Redis.from_url(url)

    def consume_round(mode: str, sample: float) -> float:
        flush.flushall()
        topic = f"t{next(_names)}"
        preload(url, topic, sample)
        return asyncio.run(consume(url, topic, mode))

    # the rounds of a case and its baseline interleave: a loaded machine hits both alike
    pairs: dict[str, tuple[list[float], list[float]]] = {"follow": ([], []), "traced": ([], [])}
    for _ in range(ROUNDS):
        pairs["follow"][1].append(consume_round("off", 0.0))
        pairs["follow"][0].append(consume_round("follow", 0.0))
        pairs["traced"][0].append(consume_round("follow", 1.0))
        pairs["traced"][1].append(consume_round("off", 1.0))
    for case, (ours, base) in pairs.items():
        row(f"consume {case}", statistics.median(ours), "consume message_trace=off", statistics.median(base))
    flush.flushall()
    for batch in (True, False):
        name = "send_batch 100" if batch else "send"
        traced, plain = [], []
        for _ in range(ROUNDS):
            plain.append(send(url, 0.0, batch))
            traced.append(send(url, 1.0, batch))
        row(f"{name} traced", statistics.median(traced), f"{name} trace_sample=0", statistics.median(plain))
    rates = [hooks() for _ in range(ROUNDS)]
    row("hooks follow untraced", statistics.median(r[0] for r in rates), "plan_round acks (same deliveries)",
        statistics.median(r[1] for r in rates))  # fmt: skip
    flush.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", help="an existing server (flushed!); default: a private one")
    args = parser.parse_args()
    if args.redis_url:
        main(args.redis_url)
    else:
        with private_redis_url() as private:
            main(private)
