"""Produce throughput: the sync Producer against a raw redis-py loop, same workload, same run.

    python bench/produce.py                      # starts its own redis-server on a free port
    python bench/produce.py --redis-url URL      # reuse a server (its data is flushed!)
    python bench/produce.py --profile single     # cProfile of the producer's single send, to stderr

Workload: one topic with 8 queues, a ~200-byte JSON body built from the same
dict every time, round-robin over the queues.

- single: ``Producer.send`` (one script call per round trip) against one
  ``XADD`` per round trip (json.dumps of the dict, round-robin over 8 streams).
- batch: ``Producer.send_batch`` of 100 messages (one pipelined round trip of
  8 script calls) against a pipeline of 100 ``XADD`` (transaction=False).
- replicated-single / replicated-batch: the same sends with ``min_replicas=1``
  (WAIT for one replica in the same round trip) against plain producer sends,
  both with the replica attached. The bench starts a replica of its private
  server before these cases (the others run without one); with --redis-url
  the server must have one, or these cases are skipped.
- async_single: ``AsyncProducer.send`` awaited one at a time against a
  ``redis.asyncio`` loop of one ``XADD`` per round trip (one event loop for both).

Each case runs 3 rounds (producer and baseline alternate inside a round) and
reports the medians, one JSON object per line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import itertools
import json
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as redis_asyncio

from rmq_style import Admin, AsyncProducer, Message, Producer, SendStatus
from rmq_style._connection import parse_url
from rmq_style.testing import RedisServer, private_redis_url

TOPIC = "bench-produce"
QUEUES = 8
BATCH = 100
ROUNDS = 3
BODY: dict[str, Any] = {
    "order_id": 1234567,
    "user": "user-000042",
    "status": "created",
    "currency": "EUR",
    "amount_cents": 129900,
    "items": [{"sku": "SKU-0001", "qty": 2}, {"sku": "SKU-0002", "qty": 1}],
    "note": "leave at the door, ring twice",
    "created_at": "2024-05-01T12:34:56Z",
}


def timed(fn: Callable[[int], None], n: int) -> float:
    """Messages per second of fn(n)."""
    start = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - start)


class Workload:
    def __init__(self, url: str) -> None:
        self.url = url
        self.raw = redis.Redis.from_url(url, **parse_url(url).client_options)
        self.raw.flushall()
        with Admin(url) as admin:
            admin.create_topic(TOPIC, queues=QUEUES)
        self.producer = Producer(url)
        self.replicated = Producer(url, min_replicas=1, replica_timeout_ms=1000)
        self.streams = [f"raw:{{bench:{q}}}:s" for q in range(QUEUES)]
        self._rr = itertools.cycle(self.streams)
        self.loop = asyncio.new_event_loop()
        self.async_producer = AsyncProducer(url)
        self.async_raw = redis_asyncio.Redis.from_url(url, **parse_url(url).client_options)

    def close(self) -> None:
        self.replicated.close()
        self.producer.close()
        self.raw.close()
        self.loop.run_until_complete(self.async_producer.close())
        self.loop.run_until_complete(self.async_raw.aclose())
        self.loop.close()

    # the producer: the body dict goes through the codec each time
    def producer_single(self, n: int) -> None:
        send = self.producer.send
        for _ in range(n):
            send(Message(TOPIC, BODY))

    def producer_batch(self, n: int) -> None:
        send_batch = self.producer.send_batch
        for _ in range(n // BATCH):
            send_batch([Message(TOPIC, BODY) for _ in range(BATCH)])

    # replicated sends: WAIT 1 in the same round trip; a send no replica acknowledged fails the bench
    def replicated_single(self, n: int) -> None:
        send = self.replicated.send
        for _ in range(n):
            if send(Message(TOPIC, BODY)).status is not SendStatus.SEND_OK:
                raise SystemExit("a replicated send timed out: is the replica linked?")

    def replicated_batch(self, n: int) -> None:
        send_batch = self.replicated.send_batch
        for _ in range(n // BATCH):
            if send_batch([Message(TOPIC, BODY) for _ in range(BATCH)])[0].status is not SendStatus.SEND_OK:
                raise SystemExit("a replicated send timed out: is the replica linked?")

    def has_replica(self) -> bool:
        return int(self.raw.info("replication")["connected_slaves"]) > 0

    def producer_async_single(self, n: int) -> None:
        async def run() -> None:
            send = self.async_producer.send
            for _ in range(n):
                await send(Message(TOPIC, BODY))

        self.loop.run_until_complete(run())

    # the baseline: json.dumps the same dict, XADD round-robin over 8 streams
    def raw_single(self, n: int) -> None:
        xadd, rr = self.raw.xadd, self._rr
        for _ in range(n):
            xadd(next(rr), {"d": json.dumps(BODY)})

    def raw_batch(self, n: int) -> None:
        rr = self._rr
        for _ in range(n // BATCH):
            pipe = self.raw.pipeline(transaction=False)
            for _ in range(BATCH):
                pipe.xadd(next(rr), {"d": json.dumps(BODY)})
            pipe.execute()

    def raw_async_single(self, n: int) -> None:
        async def run() -> None:
            xadd, rr = self.async_raw.xadd, self._rr
            for _ in range(n):
                await xadd(next(rr), {"d": json.dumps(BODY)})

        self.loop.run_until_complete(run())

    def warm_up(self) -> None:
        self.producer_single(200)
        self.producer_batch(200)
        self.raw_single(200)
        self.raw_batch(200)
        self.producer_async_single(200)
        self.raw_async_single(200)


CASES: dict[str, tuple[int, str, str, str]] = {
    # case: (messages per round, baseline description, our method, the baseline's method)
    "single": (
        4000, "redis-py XADD, one per round trip, json.dumps body, 8 streams round-robin", "producer_single",
        "raw_single",
    ),
    "batch": (
        30000, "redis-py pipeline of 100 XADD (transaction=False), json.dumps body, 8 streams",
        "producer_batch", "raw_batch",
    ),
    "async_single": (
        4000, "redis.asyncio XADD, one per round trip, json.dumps body, 8 streams round-robin",
        "producer_async_single", "raw_async_single",
    ),
    "replicated-single": (
        2000, "Producer.send without min_replicas, same server and replica", "replicated_single",
        "producer_single",
    ),
    "replicated-batch": (
        20000, "Producer.send_batch of 100 without min_replicas", "replicated_batch", "producer_batch",
    ),
}  # fmt: skip


def measure(work: Workload, case: str, n: int) -> dict[str, Any]:
    ours, theirs = [], []
    mine: Callable[[int], None] = getattr(work, CASES[case][2])
    base: Callable[[int], None] = getattr(work, CASES[case][3])
    for r in range(ROUNDS):
        # alternate who goes first, so a burst of load elsewhere hurts both sides alike
        if r % 2 == 0:
            ours.append(timed(mine, n))
            theirs.append(timed(base, n))
        else:
            theirs.append(timed(base, n))
            ours.append(timed(mine, n))
    msgs, baseline = statistics.median(ours), statistics.median(theirs)
    ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
    return {
        "bench": "produce",
        "case": case,
        "msgs_per_s": round(msgs),
        "baseline": CASES[case][1],
        "baseline_msgs_per_s": round(baseline),
        "ratio": round(msgs / baseline, 3),
        "round_ratios": [round(x, 3) for x in ratios],
        "messages_per_round": n,
        "messages_per_call": 1 if case.endswith("single") else BATCH,
        "rounds": ROUNDS,
        "queues": QUEUES,
        "body_bytes": len(json.dumps(BODY, separators=(",", ":"))),
    }


def profile(work: Workload, case: str, n: int) -> None:
    fn: Callable[[int], None] = getattr(work, CASES[case][2])
    prof = cProfile.Profile()
    prof.enable()
    fn(n)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
    print(out.getvalue(), file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--redis-url", help="use this server (flushed!) instead of a private one")
    parser.add_argument("--case", choices=sorted(CASES), action="append", help="run only this case")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the messages per round")
    parser.add_argument("--profile", choices=sorted(CASES), help="profile the producer, no measurement")
    args = parser.parse_args()
    with private_redis_url(args.redis_url) as url, contextlib.ExitStack() as stack:
        work = Workload(url)
        try:
            work.warm_up()
            if args.profile:
                profile(work, args.profile, int(CASES[args.profile][0] * args.scale))
                return 0
            for case in args.case or list(CASES):
                if case.startswith("replicated") and not args.redis_url and not work.has_replica():
                    # our own server gets a replica only now: the other cases run without one, as before
                    stack.enter_context(RedisServer(replica_of=urlsplit(url).port))
                    wait_linked(work)
                if case.startswith("replicated") and not work.has_replica():
                    print(f"skipped {case}: the server has no replica", file=sys.stderr)
                    continue
                n = max(BATCH, int(CASES[case][0] * args.scale) // BATCH * BATCH)
                print(json.dumps(measure(work, case, n)), flush=True)
        finally:
            work.close()
    return 0


def wait_linked(work: Workload, timeout: float = 10.0) -> None:
    """Until the master has its replica online (synced: WAIT can count it)."""
    deadline = time.monotonic() + timeout
    while work.raw.info("replication").get("slave0", {}).get("state") != "online":
        if time.monotonic() > deadline:
            raise SystemExit(f"the bench's replica did not link in {timeout} s")
        time.sleep(0.02)


if __name__ == "__main__":
    sys.exit(main())
