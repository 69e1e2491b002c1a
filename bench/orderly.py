"""Orderly push consumption against the concurrent listener, same data, same run.

    python bench/orderly.py                      # starts its own redis-server on a free port
    python bench/orderly.py --redis-url URL      # reuse a server (its data is flushed!)

Both cases drain the same preloaded backlog (8 queues, keyed by 200 sharding
keys) with a noop async listener through PushConsumer, each with its own
group: ``orderly`` (subscribe(..., orderly=True): one message at a time per
queue, lease locks, fenced reads and acks) against ``concurrent`` (the
default listener, concurrency 20). Median of 3 rounds, the two alternating
inside each round; one JSON line.
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
KEYS = 200
BACKLOG = 40_000
ROUNDS = 3
BODY: dict[str, Any] = {"order_id": 1234567, "status": "created", "amount": 129900}


def preload(url: str, topic: str) -> None:
    with Admin(url) as admin:
        admin.create_topic(topic, queues=QUEUES)
    with Producer(url) as producer:
        for start in range(0, BACKLOG, 500):
            batch = [Message(topic, {**BODY, "user": f"u{n % KEYS}"}) for n in range(start, start + 500)]
            producer.send_batch(batch, sharding_key=lambda m: m.body["user"])


async def drain(url: str, topic: str, group: str, *, orderly: bool) -> float:
    consumer = PushConsumer(url, group, consume_from="first")
    done = asyncio.Event()
    count = 0

    async def noop(msg: ReceivedMessage) -> None:
        nonlocal count
        count += 1
        if count == BACKLOG:
            done.set()

    consumer.subscribe(topic, "*", noop, orderly=orderly)
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
    for r in range(ROUNDS):
        client.flushall()
        topic = f"bench{r}"
        preload(url, topic)
        ours.append(asyncio.run(drain(url, topic, "orderly", orderly=True)))
        base.append(asyncio.run(drain(url, topic, "concurrent", orderly=False)))
    client.flushall()
    client.close()
    mine, theirs = statistics.median(ours), statistics.median(base)
    row = {
        "bench": "orderly",
        "case": f"noop, {QUEUES} queues, {BACKLOG} msgs backlog",
        "msgs_per_s": round(mine),
        "baseline": "PushConsumer concurrent listener (concurrency 20)",
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
