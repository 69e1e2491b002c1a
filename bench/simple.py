"""Simple consumer throughput: receive(32) + ack per message, against a raw redis-py XREADGROUP + XACK loop.

    python bench/simple.py               # starts its own redis-server on a free port
    python bench/simple.py --redis-url redis://127.0.0.1:6390/0 --messages 20000

Same data (one queue), same batch size (32), same connection options (RESP2).
The baseline reads with ``XREADGROUP COUNT 32`` and acknowledges each entry
with its own ``XACK`` (one round trip per message, as ``ack(message)`` is),
decoding nothing. The simple consumer also leases each message (a sorted set
and a hash entry, one script per receive), releases due delayed messages,
checks each entry and refuses stale handles (one script per ack).
``sync_receive_ack`` is the primary row; ``async_receive_ack`` runs the
asyncio front the same way.
Prints one JSON object per case (medians of 3 rounds; each round times the
baseline, then the case).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import redis

from rmq_style import Admin, AsyncSimpleConsumer, Message, Producer, SimpleConsumer
from rmq_style._connection import parse_url
from rmq_style.testing import private_redis_url

BATCH = 32
TOPIC = "bench-simple"


def fill(url: str, n: int) -> None:
    client = redis.Redis.from_url(url, **parse_url(url).client_options)
    client.flushdb()
    client.close()
    with Admin(url) as admin:
        admin.create_topic(TOPIC, queues=1)
    body = {"order": 1, "user": "u-123456", "items": ["a", "b", "c"], "note": "x" * 40}
    with Producer(url) as producer:
        for start in range(0, n, 500):
            chunk = [Message(TOPIC, body, tag="t") for _ in range(min(500, n - start))]
            producer.send_batch(chunk, queue_id=0)


def raw_group_loop(url: str) -> int:
    client = redis.Redis.from_url(url, **parse_url(url).client_options)
    stream, group, count = f"rmq:{{{TOPIC}:0}}:s", f"raw-{time.monotonic_ns()}", 0
    client.xgroup_create(stream, group, "0")
    while True:
        reply = client.xreadgroup(group, "c", {stream: ">"}, count=BATCH)
        if not reply or not reply[0][1]:
            break
        for entry_id, _fields in reply[0][1]:
            client.xack(stream, group, entry_id)
            count += 1
    client.close()
    return count


def sync_receive_ack(url: str) -> int:
    count = 0
    group = f"simple-{time.monotonic_ns()}"
    with SimpleConsumer(url, group, {TOPIC: "*"}, await_duration=0, consume_from="first") as consumer:
        while batch := consumer.receive(BATCH, 60):
            for message in batch:
                consumer.ack(message)
            count += len(batch)
    return count


def async_receive_ack(url: str) -> int:
    async def main() -> int:
        count = 0
        group = f"asimple-{time.monotonic_ns()}"
        async with AsyncSimpleConsumer(url, group, {TOPIC: "*"}, await_duration=0, consume_from="first") as c:
            while batch := await c.receive(BATCH, 60):
                for message in batch:
                    await c.ack(message)
                count += len(batch)
        return count

    return asyncio.run(main())


def timed(run: Callable[[str], int], url: str) -> tuple[float, int]:
    started = time.perf_counter()
    count = run(url)
    return count / (time.perf_counter() - started), count


def bench(url: str, n: int, rounds: int) -> list[dict[str, Any]]:
    """Each round times the baseline and then the case back to back (the box is shared: compare ratios)."""
    fill(url, n)
    out = []
    for case, run in (("sync_receive_ack", sync_receive_ack), ("async_receive_ack", async_receive_ack)):
        rates, bases, ratios = [], [], []
        for _ in range(rounds):
            base, base_count = timed(raw_group_loop, url)
            rate, count = timed(run, url)
            assert count == base_count == n, (case, count, base_count, n)
            rates.append(rate)
            bases.append(base)
            ratios.append(rate / base)
        rate, base = statistics.median(rates), statistics.median(bases)
        out.append(
            {
                "bench": "simple",
                "case": case,
                "msgs_per_s": round(rate),
                "baseline": "redis-py sync XREADGROUP COUNT 32 + one XACK per message, no decoding",
                "baseline_msgs_per_s": round(base),
                "ratio": round(rate / base, 3),
                "round_ratios": [round(r, 3) for r in ratios],
                "messages": n,
                "batch": BATCH,
                "rounds": rounds,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help="reuse this Redis (its db is flushed!) instead of starting one")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with private_redis_url(args.redis_url) as url:
        results = bench(url, args.messages, args.rounds)
    for row in results:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
