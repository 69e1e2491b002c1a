"""Key-ordered consumption under faults, three worker processes on a real redis-server.

As tests/test_orderly_faults.py, with order="key" (the key: the body's ``key``):
messages of 200 keys flow over 8 queues while owners are SIGSTOPped (then
SIGCONTed) in the middle of a handler and SIGKILLed. Checked: no message lost,
no per-key order inversion (first occurrences, duplicates allowed), the paused
owner's late acknowledgement refused (fenced), takeover within the lease bound.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time

import pytest
import redis

from rmq_style import Message
from rmq_style.testing import RedisServer
from tests.pushkit import create_topic, dead_letters, spawn_worker, until
from tests.test_orderly import check_order
from tests.test_orderly_faults import QUEUES, TAKEOVER_BOUND_S, lock_owners, send_chunk

pytestmark = pytest.mark.real_only
KEYS = 200
MESSAGES = int(os.environ.get("RMQ_KEY_ORDER_MESSAGES", "6000"))
HANDLER_MS = 2


def start_worker(url: str) -> tuple[subprocess.Popen[str], str]:
    proc, words = spawn_worker("tests.orderly_worker", url, "billing", str(HANDLER_MS), "key")
    _, member = words
    return proc, member


def test_kill_and_pause_key_ordered_owners_while_messages_flow(private_redis: RedisServer) -> None:
    url = private_redis.url
    rng = random.Random(11)
    asyncio.run(create_topic(url, queues=QUEUES))
    control = redis.Redis.from_url(url)
    workers = [start_worker(url) for _ in range(3)]
    sent: list[str] = []
    paused_key = f"k{rng.randrange(KEYS)}"

    def body(n: int) -> dict[str, object]:
        key, seq = f"k{n % KEYS}", n // KEYS
        return {"key": key, "seq": seq, "pause": key == paused_key and seq == 3}

    def send_range(start: int, end: int) -> None:
        messages = [Message("orders", body(n)) for n in range(start, end)]
        for i in range(0, len(messages), 500):
            sent.extend(asyncio.run(send_chunk(url, messages[i : i + 500])))

    def handled() -> int:
        return int(control.llen("test:handled"))

    try:
        send_range(0, MESSAGES // 3)
        # SIGSTOP the owner of the "pause" message in the middle of its handler (other keys run on)
        _, member = control.blpop(["test:in_handler"], timeout=30) or (None, b"")
        paused = next(p for p, m in workers if m == member.decode())
        paused.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        asyncio.run(
            until(lambda: member.decode() not in lock_owners(control), 15, "takeover of paused queues")
        )
        assert time.monotonic() - stopped_at < TAKEOVER_BOUND_S
        send_range(MESSAGES // 3, 2 * MESSAGES // 3)
        paused.send_signal(signal.SIGCONT)
        asyncio.run(
            until(lambda: int(control.hget("test:fenced", member) or 0) >= 1, 10, "the late ack refused")
        )
        # SIGKILL another owner mid-flow, start a replacement
        victim = rng.choice([w for w in workers if w[0] is not paused])
        asyncio.run(until(lambda: handled() >= MESSAGES // 2, 30, "half handled"))
        victim[0].send_signal(signal.SIGKILL)
        victim[0].wait()
        workers.remove(victim)
        killed_at = time.monotonic()
        asyncio.run(until(lambda: all(o and o != victim[1] for o in lock_owners(control)), 5, "takeover"))
        assert time.monotonic() - killed_at < TAKEOVER_BOUND_S
        workers.append(start_worker(url))
        send_range(2 * MESSAGES // 3, MESSAGES)

        def all_done() -> bool:
            ids = {line.split()[0] for line in control.lrange("test:handled", 0, -1)}
            return len(ids) >= MESSAGES

        asyncio.run(until(all_done, 60, "every message handled"))
    finally:
        for proc, _ in workers:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
    records = [line.decode().split() for line in control.lrange("test:handled", 0, -1)]
    dead = {d["i"] for d in asyncio.run(dead_letters(url, "billing", queues=QUEUES))}
    assert set(sent) <= {r[0] for r in records} | dead  # nothing lost
    assert not dead
    check_order([(key, int(seq)) for _, key, seq in records])
    duplicates = len(records) - len({r[0] for r in records})
    # per fault: what was running (concurrency 8) and what finished while one ack write was out (8)
    assert duplicates <= 2 * (8 + 8)
    control.close()
