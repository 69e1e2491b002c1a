"""Orderly consumption under faults, three worker processes on a real redis-server.

Messages with sharding keys flow over 8 queues while owners are SIGKILLed,
SIGSTOPped (then SIGCONTed) and SIGTERMed. Checked: no message lost (every
msg_id handled or dead-lettered), no per-key order inversion, the paused
owner's late acknowledgements refused (fenced), graceful stop exits 0.

Order, precisely: for each sharding key, take the seq numbers of its handled
messages in the order handling completed, drop every repeat of a seq already
seen (a re-delivery: duplicates are allowed); the rest must be non-decreasing.
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
from rmq_style._names import Keys
from rmq_style.testing import RedisServer
from tests.pushkit import create_topic, dead_letters, spawn_worker, until
from tests.test_orderly import check_order

pytestmark = pytest.mark.real_only
QUEUES = 8
KEYS = 200
# the 20,000 (about 13 s here); RMQ_ORDERLY_MESSAGES changes it
MESSAGES = int(os.environ.get("RMQ_ORDERLY_MESSAGES", "20000"))
HANDLER_MS = 2
TAKEOVER_BOUND_S = 0.8 + 1.0 + 0.1 + 1.0  # member expiry + lease + heartbeat + slack


def start_worker(url: str) -> tuple[subprocess.Popen[str], str]:
    proc, words = spawn_worker("tests.orderly_worker", url, "billing", str(HANDLER_MS))
    _, member = words
    return proc, member


def lock_owners(control: redis.Redis) -> list[str]:
    values = [control.get(Keys().queue("orders", q).lock("billing")) for q in range(QUEUES)]
    return [v.decode().rpartition("/")[0] if v else "" for v in values]


def test_kill_pause_and_stop_owners_while_keyed_messages_flow(private_redis: RedisServer) -> None:
    url = private_redis.url
    rng = random.Random(5)
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
        for i in range(0, len(messages), 200):
            sent.extend(asyncio.run(send_chunk(url, messages[i : i + 200])))

    def handled() -> int:
        return int(control.llen("test:handled"))

    try:
        send_range(0, MESSAGES // 3)
        # SIGSTOP the owner of the "pause" message in the middle of its handler
        _, member = control.blpop(["test:in_handler"], timeout=30) or (None, b"")
        paused = next(p for p, m in workers if m == member.decode())
        paused.send_signal(signal.SIGSTOP)
        asyncio.run(
            until(lambda: member.decode() not in lock_owners(control), 15, "takeover of paused queues")
        )
        send_range(MESSAGES // 3, 2 * MESSAGES // 3)
        paused.send_signal(signal.SIGCONT)
        asyncio.run(
            until(lambda: int(control.hget("test:fenced", member) or 0) >= 1, 10, "the late ack refused")
        )
        # SIGKILL a random other owner mid-flow, start a replacement
        victim = rng.choice([w for w in workers if w[0] is not paused])
        asyncio.run(until(lambda: handled() >= MESSAGES // 2, 30, "half handled"))
        victim[0].send_signal(signal.SIGKILL)
        victim[0].wait()
        workers.remove(victim)
        # its queues are taken over within member expiry (0.8 s) + lease (1 s) + a heartbeat, plus slack
        killed_at = time.monotonic()
        asyncio.run(until(lambda: all(o and o != victim[1] for o in lock_owners(control)), 5, "takeover"))
        assert time.monotonic() - killed_at < TAKEOVER_BOUND_S
        workers.append(start_worker(url))
        send_range(2 * MESSAGES // 3, MESSAGES)
        # SIGTERM one more: a graceful stop hands its queues over
        asyncio.run(until(lambda: handled() >= 3 * MESSAGES // 4, 30, "three quarters handled"))
        leaving = workers.pop(0)
        leaving[0].send_signal(signal.SIGTERM)
        assert leaving[0].wait(timeout=20) == 0

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
    check_order([(key, int(seq)) for _, key, seq in records])
    control.close()


async def send_chunk(url: str, messages: list[Message]) -> list[str]:
    from rmq_style import AsyncProducer

    async with AsyncProducer(url) as producer:
        results = await producer.send_batch(messages, sharding_key=lambda m: m.body["key"])
    return [r.msg_id for r in results]
