"""A worker SIGSTOPped past member expiry, then resumed: what it read ahead is dropped, not run again.

While it is stopped, a survivor takes its queue over and handles every pending
entry. Resumed, the worker must not run its queued listener calls (about 600
here): duplicates stay within the calls that were running when it stopped
(at most the concurrency) plus one settle round of handled-not-yet-acked ones.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess

import pytest
import redis

from rmq_style import Message
from rmq_style._names import Keys
from rmq_style.testing import RedisServer
from tests.pushkit import create_topic, dead_letters, send, spawn_worker, until

pytestmark = pytest.mark.real_only

CONCURRENCY = 8  # tests/push_worker.py


def start_worker(url: str, handler_ms: int) -> subprocess.Popen[str]:
    proc, words = spawn_worker("tests.push_worker", url, "billing", str(handler_ms))
    assert words == ["ready"]
    return proc


def test_a_worker_resumed_past_member_expiry_drops_its_read_ahead(private_redis: RedisServer) -> None:
    url = private_redis.url
    asyncio.run(create_topic(url, queues=1))
    ids = set(asyncio.run(send(url, [Message("orders", {"i": i}) for i in range(600)])))
    control = redis.Redis.from_url(url)
    stream = Keys().queue("orders", 0).stream
    stopped = start_worker(url, handler_ms=50)
    survivor: subprocess.Popen[str] | None = None
    in_flight = f"test:in_flight:{stopped.pid}"
    try:
        asyncio.run(until(lambda: int(control.get(in_flight) or 0) >= 500, what="the worker read ahead"))
        asyncio.run(until(lambda: control.scard("test:handled") >= 16, what="the worker under way"))
        stopped.send_signal(signal.SIGSTOP)
        survivor = start_worker(url, handler_ms=1)
        # the survivor outlives the stopped member's expiry (800 ms), takes its queue and entries over
        asyncio.run(until(lambda: control.scard("test:handled") == 600, timeout=30, what="every message"))
        stopped.send_signal(signal.SIGCONT)
        # resumed: its read-ahead goes (or, unfixed, runs) until nothing is in flight there
        asyncio.run(until(lambda: int(control.get(in_flight) or 0) == 0, timeout=60, what="read-ahead gone"))
        asyncio.run(until(lambda: control.xpending(stream, "billing")["pending"] == 0, what="all acked"))
    finally:
        for proc in (stopped, survivor):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
                proc.wait(15)
    counts = {k.decode(): int(v) for k, v in control.hgetall("test:counts").items()}
    assert set(counts) == ids
    duplicates = sum(n - 1 for n in counts.values())
    # running when stopped (<= concurrency) + handled and not acked yet (one settle round <= concurrency)
    assert duplicates <= 2 * CONCURRENCY, duplicates
    assert asyncio.run(dead_letters(url, "billing")) == []
