"""Key-ordered push consumption against the per-queue orderly listener, same data, same run.

    python bench/key_order.py                      # starts its own redis-server on a free port
    python bench/key_order.py --redis-url URL      # reuse a server (its data is flushed!)

Both cases drain the same preloaded backlog (8 queues, 500 keys, each key its
queue's sharding key and the message's business key) with an I/O-bound async
listener (``await asyncio.sleep(0.001)``) through PushConsumer, concurrency 64,
each with its own group: ``key`` (subscribe(..., order="key"): one message at a
time per key, keys in parallel) against ``orderly`` (orderly=True: one message
at a time per queue). Median of 3 rounds, the cases alternating inside each
round; one JSON line. A second line compares ``key`` with ``concurrent`` (the
default listener, no order at all, same concurrency): what keeping each key's
order costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rmq_style import Admin, Message, Producer, PushConsumer, ReceivedMessage  # noqa: E402
from rmq_style.testing import private_redis_url  # noqa: E402

QUEUES = 8
KEYS = 500
CONCURRENCY = 64
BACKLOG = 20_000
ROUNDS = 3
BODY: dict[str, Any] = {"order_id": 1234567, "status": "created", "amount": 129900}


def preload(url: str, topic: str) -> None:
    with Admin(url) as admin:
        admin.create_topic(topic, queues=QUEUES)
    with Producer(url) as producer:
        for start in range(0, BACKLOG, 500):
            batch = [
                Message(topic, {**BODY, "user": f"u{n % KEYS}"}, keys=[f"u{n % KEYS}"])
                for n in range(start, start + 500)
            ]
            producer.send_batch(batch, sharding_key=lambda m: m.keys[0])


async def drain(url: str, topic: str, group: str, order: str) -> float:
    consumer = PushConsumer(url, group, consume_from="first", concurrency=CONCURRENCY)
    done = asyncio.Event()
    count = 0

    async def io_bound(msg: ReceivedMessage) -> None:
        nonlocal count
        await asyncio.sleep(0.001)
        count += 1
        if count == BACKLOG:
            done.set()

    if order == "none":
        consumer.subscribe(topic, "*", io_bound)
    else:
        consumer.subscribe(topic, "*", io_bound, order=order)  # type: ignore[arg-type]
    start = time.perf_counter()
    await consumer.start()
    await asyncio.wait_for(done.wait(), 60)
    elapsed = time.perf_counter() - start
    await consumer.stop()
    return BACKLOG / elapsed


def run(url: str) -> None:
    client = redis.Redis.from_url(url)
    ours: list[float] = []
    base: list[float] = []
    free: list[float] = []
    for r in range(ROUNDS):
        client.flushall()
        topic = f"bench{r}"
        preload(url, topic)
        ours.append(asyncio.run(drain(url, topic, "keyed", "key")))
        base.append(asyncio.run(drain(url, topic, "orderly", "queue")))
        free.append(asyncio.run(drain(url, topic, "concurrent", "none")))
    client.flushall()
    client.close()
    mine = statistics.median(ours)
    case = (
        f"sleep(1 ms) async listener, {QUEUES} queues, {KEYS} keys, concurrency {CONCURRENCY}, "
        f"{BACKLOG} msgs backlog"
    )
    for baseline, rates in [
        ("PushConsumer orderly listener (one message at a time per queue)", base),
        ("PushConsumer concurrent listener (no order)", free),
    ]:
        theirs = statistics.median(rates)
        row = {
            "bench": "key_order",
            "case": case,
            "msgs_per_s": round(mine),
            "baseline": baseline,
            "baseline_msgs_per_s": round(theirs),
            "ratio": round(mine / theirs, 3),
        }
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="reuse this server (flushed!) instead of starting one")
    args = parser.parse_args()
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings and up
    with private_redis_url(args.redis_url) as url:
        run(url)


if __name__ == "__main__":
    main()
