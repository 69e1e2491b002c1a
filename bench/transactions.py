"""Transactional sends: committed ``send_in_transaction`` against plain single sends, same workload, same run.

    python bench/transactions.py                   # starts its own redis-server on a free port
    python bench/transactions.py --redis-url URL   # reuse a server (its data is flushed!)

Workload: one topic with 8 queues, the ~200-byte JSON body of bench/produce.py,
round-robin over the queues.

- committed: ``TransactionProducer.send_in_transaction(message, execute)`` with a
  local transaction that returns COMMIT at once: two round trips (store the half
  message, commit it) plus the local transaction, against ``Producer.send`` (one
  round trip). Floor: ratio 0.4. The producer's check loop runs as in production
  (one look per second, nothing due).

Each case runs 3 rounds (the two sides alternate inside a round) and reports the
medians, one JSON object per line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.produce import BODY  # noqa: E402 - the same body as bench/produce.py
from rmq_style import Admin, HalfMessage, Message, Producer, TransactionProducer, TransactionState  # noqa: E402
from rmq_style.testing import private_redis_url  # noqa: E402

TOPIC = "bench-tx"
QUEUES = 8
ROUNDS = 3
FLOOR = 0.4
CASES: dict[str, tuple[int, str]] = {
    "committed": (2000, "Producer.send, one per round trip, same body, 8 queues round-robin"),
}


def commit(message: HalfMessage, arg: Any) -> TransactionState:
    return TransactionState.COMMIT


def timed(fn: Callable[[int], None], n: int) -> float:
    start = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - start)


class Workload:
    def __init__(self, url: str) -> None:
        with Admin(url) as admin:
            for topic in admin.list_topics():
                admin.delete_topic(topic.topic)
            admin.create_topic(TOPIC, queues=QUEUES)
        self.producer = Producer(url)
        self.tx = TransactionProducer(url, "bench-tx", lambda m: TransactionState.UNKNOWN)
        self.tx.start()

    def close(self) -> None:
        self.tx.close()
        self.producer.close()

    def committed(self, n: int) -> None:
        send = self.tx.send_in_transaction
        for _ in range(n):
            result = send(Message(TOPIC, BODY), commit)
            if result.send_result is None:
                raise RuntimeError(f"not committed: {result}")

    def plain(self, n: int) -> None:
        send = self.producer.send
        for _ in range(n):
            send(Message(TOPIC, BODY))


def measure(work: Workload, case: str, n: int) -> dict[str, Any]:
    ours, theirs = [], []
    for r in range(ROUNDS):
        pair = [(ours, work.committed), (theirs, work.plain)]
        for out, fn in pair if r % 2 == 0 else pair[::-1]:
            out.append(timed(fn, n))
    msgs, baseline = statistics.median(ours), statistics.median(theirs)
    return {
        "bench": "transactions",
        "case": case,
        "msgs_per_s": round(msgs),
        "baseline": CASES[case][1],
        "baseline_msgs_per_s": round(baseline),
        "ratio": round(msgs / baseline, 3),
        "floor": FLOOR,
        "round_ratios": [round(a / b, 3) for a, b in zip(ours, theirs, strict=True)],
        "messages_per_round": n,
        "rounds": ROUNDS,
        "queues": QUEUES,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--redis-url", help="use this server (flushed!) instead of a private one")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the messages per round")
    args = parser.parse_args()
    with private_redis_url(args.redis_url) as url:
        work = Workload(url)
        try:
            work.committed(200)  # warm up: scripts loaded, routes cached
            work.plain(200)
            below = False
            for case, (count, _) in CASES.items():
                result = measure(work, case, max(10, int(count * args.scale)))
                below = below or result["ratio"] < FLOOR
                print(json.dumps(result), flush=True)
        finally:
            work.close()
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
