"""Push consumption: PushConsumer against a raw redis-py loop, same data, same run.

    python bench/consume.py                      # starts its own redis-server on a free port
    python bench/consume.py --redis-url URL      # reuse a server (its data is flushed!)

- concurrent: a noop async listener, 8 queues, one process, draining a
  preloaded backlog; baseline: a redis.asyncio loop of one XREADGROUP over the
  8 streams (COUNT 32) and one pipelined XACK per stream, on the same entries
  (another group).
- latency: a publisher process sends at a steady 2,000 msg/s with its send
  timestamp in the body; the handler records now - sent at entry. Ours is
  rmq_style's Producer + PushConsumer; baseline a redis-py XADD publisher and
  an XREADGROUP BLOCK loop.

Median of 3 rounds; one JSON object per line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as redis_asyncio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rmq_style import Admin, Message, Producer, PushConsumer, ReceivedMessage  # noqa: E402
from rmq_style._names import Keys  # noqa: E402
from rmq_style.testing import private_redis_url  # noqa: E402

QUEUES = 8
BACKLOG = 60_000
ROUNDS = 3
RATE = 2000
LATENCY_SECONDS = 4
BODY: dict[str, Any] = {"order_id": 1234567, "user": "user-000042", "status": "created", "amount": 129900}


def streams(topic: str) -> list[str]:
    return [Keys().queue(topic, q).stream for q in range(QUEUES)]


# -- concurrent -------------------------------------------------------------------------------------


def preload(url: str, topic: str) -> None:
    with Admin(url) as admin:
        admin.create_topic(topic, queues=QUEUES)
    with Producer(url) as producer:
        batch = [Message(topic, BODY) for _ in range(500)]
        for _ in range(BACKLOG // len(batch)):
            producer.send_batch(batch)


async def ours_throughput(url: str, topic: str, group: str) -> float:
    consumer = PushConsumer(url, group, consume_from="first", trace_messages=False)
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


async def raw_throughput(url: str, topic: str, group: str) -> float:
    client = redis_asyncio.Redis.from_url(url, protocol=2)
    keys = streams(topic)
    for key in keys:
        await client.xgroup_create(key, group, "0")
    count = 0
    start = time.perf_counter()
    while count < BACKLOG:
        reply = await client.xreadgroup(group, "raw", dict.fromkeys(keys, ">"), count=32, block=1000)
        pipe = client.pipeline(transaction=False)
        for key, entries in reply:
            count += len(entries)
            pipe.xack(key, group, *[entry_id for entry_id, _ in entries])
        await pipe.execute()
    elapsed = time.perf_counter() - start
    await client.aclose()
    return BACKLOG / elapsed


# -- latency ----------------------------------------------------------------------------------------


def publish(url: str, mode: str, topic: str, rate: int, total: int) -> None:
    """Publisher process: a message every 1/rate s, its send time (ns) in the body."""
    interval = 1 / rate
    client = redis.Redis.from_url(url, protocol=2)
    producer = Producer(url)
    keys = streams(topic)
    start = time.perf_counter()
    for i in range(total):
        target = start + i * interval
        while (now := time.perf_counter()) < target:
            if target - now > 0.0005:
                time.sleep(target - now - 0.0003)
        sent = time.time_ns()
        if mode == "ours":
            producer.send(Message(topic, {"sent": sent}))
        else:
            client.xadd(keys[i % QUEUES], {"d": json.dumps({"sent": sent})})
    producer.close()
    client.close()


def start_publisher(url: str, mode: str, topic: str, total: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, "--publish", url, mode, topic, str(RATE), str(total)], cwd=ROOT
    )


def percentiles(latencies_ns: list[int]) -> tuple[float, float]:
    ordered = sorted(latencies_ns)
    p50 = ordered[len(ordered) // 2] / 1e6
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1e6
    return p50, p99


async def ours_latency(url: str, topic: str) -> tuple[float, float, float]:
    with Admin(url) as admin:
        admin.create_topic(topic, queues=QUEUES)
    total = RATE * LATENCY_SECONDS
    latencies: list[int] = []
    done = asyncio.Event()

    async def listener(msg: ReceivedMessage) -> None:
        latencies.append(time.time_ns() - json.loads(msg.body)["sent"])
        if len(latencies) == total:
            done.set()

    consumer = PushConsumer(url, "lat", consume_from="first")
    consumer.subscribe(topic, "*", listener)
    await consumer.start()
    publisher = start_publisher(url, "ours", topic, total)
    start = time.perf_counter()
    await done.wait()
    elapsed = time.perf_counter() - start
    await consumer.stop()
    await asyncio.to_thread(publisher.wait)
    return (total / elapsed, *percentiles(latencies[RATE // 4 :]))


async def raw_latency(url: str, topic: str) -> tuple[float, float, float]:
    client = redis_asyncio.Redis.from_url(url, protocol=2)
    keys = streams(topic)
    for key in keys:
        await client.xgroup_create(key, "lat", "0", mkstream=True)
    total = RATE * LATENCY_SECONDS
    latencies: list[int] = []
    publisher = start_publisher(url, "raw", topic, total)
    start = time.perf_counter()
    while len(latencies) < total:
        reply = await client.xreadgroup("lat", "raw", dict.fromkeys(keys, ">"), count=32, block=1000)
        now = time.time_ns()
        pipe = client.pipeline(transaction=False)
        for key, entries in reply:
            for _, fields in entries:
                latencies.append(now - json.loads(fields[b"d"])["sent"])
            pipe.xack(key, "lat", *[entry_id for entry_id, _ in entries])
        await pipe.execute()
    elapsed = time.perf_counter() - start
    await client.aclose()
    await asyncio.to_thread(publisher.wait)
    return (total / elapsed, *percentiles(latencies[RATE // 4 :]))


# -- driver -----------------------------------------------------------------------------------------


def run(url: str) -> None:
    flush = redis.Redis.from_url(url)
    concurrent: list[tuple[float, float]] = []
    latency: list[tuple[tuple[float, float, float], tuple[float, float, float]]] = []
    for n in range(ROUNDS):
        flush.flushall()
        topic = f"bench-consume-{n}"
        preload(url, topic)
        raw = asyncio.run(raw_throughput(url, topic, "raw"))
        ours = asyncio.run(ours_throughput(url, topic, "push"))
        concurrent.append((ours, raw))
        flush.flushall()
        raw_l = asyncio.run(raw_latency(url, f"bench-lat-raw-{n}"))
        ours_l = asyncio.run(ours_latency(url, f"bench-lat-{n}"))
        latency.append((ours_l, raw_l))
    ours_med = statistics.median(o for o, _ in concurrent)
    raw_med = statistics.median(r for _, r in concurrent)
    print(
        json.dumps(
            {
                "bench": "consume",
                "case": "concurrent",
                "msgs_per_s": round(ours_med),
                "baseline": "redis.asyncio XREADGROUP (8 streams, COUNT 32) + pipelined XACK",
                "baseline_msgs_per_s": round(raw_med),
                "ratio": round(ours_med / raw_med, 3),
            }
        )
    )
    med = [statistics.median(x[0][i] for x in latency) for i in range(3)]
    base = [statistics.median(x[1][i] for x in latency) for i in range(3)]
    print(
        json.dumps(
            {
                "bench": "consume",
                "case": "latency",
                "msgs_per_s": round(med[0]),
                "baseline": "redis-py XADD publisher + redis.asyncio XREADGROUP BLOCK loop",
                "baseline_msgs_per_s": round(base[0]),
                "ratio": round(base[1] / med[1], 3),
                "p50_ms": round(med[1], 3),
                "p99_ms": round(med[2], 3),
                "baseline_p50_ms": round(base[1], 3),
                "baseline_p99_ms": round(base[2], 3),
            }
        )
    )
    flush.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--publish":
        _, _, url, mode, topic, rate, total = sys.argv
        publish(url, mode, topic, int(rate), int(total))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="reuse this server (flushed!) instead of starting one")
    args = parser.parse_args()
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings and up
    with private_redis_url(args.redis_url) as url:
        run(url)


if __name__ == "__main__":
    main()
