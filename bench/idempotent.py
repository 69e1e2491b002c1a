"""Idempotent consumption against plain consumption: PushConsumer with ``idempotent=True`` (a
dedup mark claimed and written per message) and without, same backlog, same run.

    python bench/idempotent.py                   # starts its own redis-server on a free port
    python bench/idempotent.py --redis-url URL   # reuse a server (its data is flushed!)

- concurrent: a noop async listener, 8 queues, one process, draining a
  preloaded backlog of unique messages; baseline: the same consumer without
  ``idempotent`` (another group, same entries).
- batch: the same with ``consume_message_batch_max_size=32`` (one claim round
  trip per call of 32 messages).

Median of 3 rounds; one JSON object per line (floor: ratio 0.6). Each side's CPU time per message
(``cpu_us_per_msg``: the consumer's process time and the redis-server's, over the drain) moves
much less than the rates with the load of a shared machine.
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

from rmq_style import Admin, Message, Producer, PushConsumer  # noqa: E402
from rmq_style.testing import private_redis_url  # noqa: E402

QUEUES = 8
BACKLOG = 30_000
ROUNDS = 3
BODY: dict[str, Any] = {"order_id": 1234567, "user": "user-000042", "status": "created", "amount": 129900}


def preload(url: str, topic: str) -> None:
    with Admin(url) as admin:
        admin.create_topic(topic, queues=QUEUES)
    with Producer(url) as producer:
        batch = [Message(topic, BODY) for _ in range(500)]
        for _ in range(BACKLOG // len(batch)):
            producer.send_batch(batch)


def server_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def throughput(url: str, topic: str, group: str, *, idempotent: bool, batch: int) -> float:
    consumer = PushConsumer(
        url, group, consume_from="first", trace_messages=False, consume_message_batch_max_size=batch
    )
    done = asyncio.Event()
    count = 0

    async def noop(msg: Any) -> None:
        nonlocal count
        count += len(msg) if isinstance(msg, list) else 1
        if count == BACKLOG:
            done.set()

    consumer.subscribe(topic, "*", noop, idempotent=idempotent or None)
    start = time.perf_counter()
    await consumer.start()
    await done.wait()
    elapsed = time.perf_counter() - start
    await consumer.stop()
    return BACKLOG / elapsed


def run(url: str) -> None:
    flush = redis.Redis.from_url(url)

    def drain(topic: str, group: str, idempotent: bool, batch: int, cpu: dict[str, list[float]]) -> float:
        started, server = time.process_time(), server_cpu(flush)
        rate = asyncio.run(throughput(url, topic, group, idempotent=idempotent, batch=batch))
        cpu[f"{group}_consumer"].append((time.process_time() - started) / BACKLOG * 1e6)
        cpu[f"{group}_redis"].append((server_cpu(flush) - server) / BACKLOG * 1e6)
        return rate

    for case, batch in (("concurrent", 1), ("batch", 32)):
        rounds: list[tuple[float, float]] = []
        cpu: dict[str, list[float]] = {
            f"{g}_{p}": [] for g in ("idem", "plain") for p in ("consumer", "redis")
        }
        for n in range(ROUNDS):
            flush.flushall()
            topic = f"bench-idem-{case}-{n}"
            preload(url, topic)
            plain = drain(topic, "plain", False, batch, cpu)
            ours = drain(topic, "idem", True, batch, cpu)
            rounds.append((ours, plain))
        ours_med = statistics.median(o for o, _ in rounds)
        plain_med = statistics.median(p for _, p in rounds)
        print(
            json.dumps(
                {
                    "bench": "idempotent",
                    "case": case,
                    "msgs_per_s": round(ours_med),
                    "baseline": f"the same PushConsumer without idempotent (batch {batch})",
                    "baseline_msgs_per_s": round(plain_med),
                    "ratio": round(ours_med / plain_med, 3),
                    "cpu_us_per_msg": {k: round(statistics.median(v), 2) for k, v in cpu.items()},
                }
            ),
            flush=True,
        )
    flush.close()


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
