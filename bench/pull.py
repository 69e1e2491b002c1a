"""Pull throughput: PullConsumer (sync and async) and LitePullConsumer against a raw redis-py XREAD loop.

    python bench/pull.py                 # starts its own redis-server on a free port
    python bench/pull.py --redis-url redis://127.0.0.1:6390/0 --messages 20000

Same data, same batch size (32), same connection options (RESP2). The baseline
reads with ``XREAD COUNT 32`` and decodes nothing; the consumers also release
delayed messages, check offsets and build ReceivedMessage objects.
Prints one JSON object per case (medians of 3 rounds; each round times the
baseline, then the case). ``sync_pull`` (PullConsumer) is the primary row.
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

from rmq_style import (
    Admin,
    AsyncPullConsumer,
    LitePullConsumer,
    Message,
    MessageQueue,
    Producer,
    PullConsumer,
)
from rmq_style._connection import parse_url
from rmq_style.testing import private_redis_url

BATCH = 32
TOPIC = "bench-pull"
QUEUE = MessageQueue(TOPIC, 0)


def fill(url: str, n: int) -> None:
    client = redis.Redis.from_url(url, **parse_url(url).client_options)
    client.flushdb()
    with Admin(url) as admin:
        admin.create_topic(TOPIC, queues=1)
    body = {"order": 1, "user": "u-123456", "items": ["a", "b", "c"], "note": "x" * 40}
    with Producer(url) as producer:
        for start in range(0, n, 500):
            chunk = [Message(TOPIC, body, tag="t") for _ in range(min(500, n - start))]
            producer.send_batch(chunk, queue_id=0)


def raw_xread(url: str) -> int:
    client = redis.Redis.from_url(url, **parse_url(url).client_options)
    stream, last, count = f"rmq:{{{TOPIC}:0}}:s", "0-0", 0
    while True:
        reply = client.xread({stream: last}, count=BATCH)
        if not reply:
            break
        entries = reply[0][1]
        count += len(entries)
        last = entries[-1][0]
    client.close()
    return count


def sync_pull(url: str) -> int:
    offset, count = "0-0", 0
    with PullConsumer(url, "bench") as consumer:
        while True:
            result = consumer.pull(QUEUE, offset, max_nums=BATCH)
            if not result.messages:
                break
            count += len(result.messages)
            offset = result.next_offset
    return count


def async_pull(url: str) -> int:
    async def main() -> int:
        offset, count = "0-0", 0
        async with AsyncPullConsumer(url, "bench") as consumer:
            while True:
                result = await consumer.pull(QUEUE, offset, max_nums=BATCH)
                if not result.messages:
                    break
                count += len(result.messages)
                offset = result.next_offset
        return count

    return asyncio.run(main())


def lite_poll(url: str) -> int:
    count = 0
    with LitePullConsumer(
        url, f"bench-lite-{time.monotonic_ns()}", consume_from="first", pull_batch_size=BATCH
    ) as consumer:
        consumer.assign([QUEUE])
        while batch := consumer.poll(timeout=0):
            count += len(batch)
    return count


def timed(run: Callable[[str], int], url: str) -> tuple[float, int]:
    started = time.perf_counter()
    count = run(url)
    return count / (time.perf_counter() - started), count


def bench(url: str, n: int, rounds: int) -> list[dict[str, Any]]:
    """Each round times the baseline and then the case back to back (the box is shared: compare ratios)."""
    fill(url, n)
    out = []
    cases = (("sync_pull", sync_pull), ("async_pull", async_pull), ("sync_lite_poll", lite_poll))
    for case, run in cases:
        rates, bases, ratios = [], [], []
        for _ in range(rounds):
            base, base_count = timed(raw_xread, url)
            rate, count = timed(run, url)
            assert count == base_count == n, (case, count, base_count, n)
            rates.append(rate)
            bases.append(base)
            ratios.append(rate / base)
        rate, base = statistics.median(rates), statistics.median(bases)
        out.append(
            {
                "bench": "pull",
                "case": case,
                "msgs_per_s": round(rate),
                "baseline": "redis-py sync XREAD COUNT 32 loop, no decoding",
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
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with private_redis_url(args.redis_url) as url:
        results = bench(url, args.messages, args.rounds)
    for row in results:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
