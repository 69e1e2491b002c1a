"""Broadcasting push consumption: a broadcasting PushConsumer against a raw redis-py XREAD loop and
against a clustering PushConsumer, same data, same run.

    python bench/broadcast.py                    # starts its own redis-server on a free port

- broadcast_vs_raw: one broadcasting member (noop async listener) drains a
  preloaded backlog of 8 queues; baseline: a redis.asyncio loop of one XREAD
  over the 8 streams (COUNT 32) from its own positions, writing them (one
  HSET per stream read) as it goes.
- broadcast_vs_clustering: the same member against a clustering
  PushConsumer (XREADGROUP + XACK) of a fresh group on the same backlog.

Median of 3 rounds; one JSON object per line.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio as redis_asyncio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rmq_style import Admin, Message, Producer, PushConsumer, ReceivedMessage  # noqa: E402
from rmq_style._names import Keys  # noqa: E402
from rmq_style.testing import private_redis_url  # noqa: E402

QUEUES = 8
BACKLOG = 40_000
ROUNDS = 3
BODY: dict[str, Any] = {"order_id": 1234567, "user": "user-000042", "status": "created", "amount": 129900}


def preload(url: str, topic: str) -> None:
    with Admin(url) as admin:
        admin.create_topic(topic, queues=QUEUES)
    with Producer(url) as producer:
        batch = [Message(topic, BODY) for _ in range(500)]
        for _ in range(BACKLOG // len(batch)):
            producer.send_batch(batch)


async def ours(url: str, topic: str, group: str, **options: Any) -> float:
    consumer = PushConsumer(url, group, consume_from="first", **options)
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


async def raw(url: str, topic: str, group: str) -> float:
    client = redis_asyncio.Redis.from_url(url, protocol=2)
    positions = {Keys().queue(topic, q).stream: "0-0" for q in range(QUEUES)}
    count = 0
    start = time.perf_counter()
    while count < BACKLOG:
        reply = await client.xread(positions, count=32, block=1000)
        pipe = client.pipeline(transaction=False)
        for key, entries in reply:
            count += len(entries)
            positions[key.decode()] = entries[-1][0].decode()
            pipe.hset(f"{key.decode()[:-2]}:bcast:{group}", "raw", entries[-1][0])
        await pipe.execute()
    elapsed = time.perf_counter() - start
    await client.aclose()
    return BACKLOG / elapsed


def row(case: str, mine: list[float], baseline: str, theirs: list[float]) -> None:
    a, b = statistics.median(mine), statistics.median(theirs)
    print(json.dumps({"bench": "broadcast", "case": case, "msgs_per_s": round(a), "baseline": baseline,
                      "baseline_msgs_per_s": round(b), "ratio": round(a / b, 3)}), flush=True)  # fmt: skip


def main() -> None:
    with private_redis_url() as url:
        bcast, plain, clustering = [], [], []
        for r in range(ROUNDS):
            topic = f"bench{r}"
            preload(url, topic)
            bcast.append(asyncio.run(ours(url, topic, "g", message_model="broadcasting", instance_name="m")))
            plain.append(asyncio.run(raw(url, topic, "g")))
            clustering.append(asyncio.run(ours(url, topic, "c")))
        row("broadcast_vs_raw", bcast, "redis-py XREAD loop + HSET positions", plain)
        row("broadcast_vs_clustering", bcast, "clustering PushConsumer (XREADGROUP + XACK)", clustering)


if __name__ == "__main__":
    main()
