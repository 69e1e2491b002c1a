"""Helpers of the push consumer tests: fast settings, sending, reading dead letters, bounded waits."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rmq_style import AsyncAdmin, AsyncProducer, Keys, Message, PushSettings
from rmq_style._async._io import open_client
from rmq_style._membership import MembershipSettings


def fast_settings(**overrides: Any) -> PushSettings:
    base: dict[str, Any] = {
        "consume_from": "first",
        "poll_timeout_ms": 100,
        "retry_delays_ms": (20,),
        "retry_poll_ms": 50,
        "shutdown_timeout_ms": 5000,
        "reconnect_backoff_ms": 20,
        "reconnect_backoff_max_ms": 200,
        "membership": MembershipSettings(heartbeat_interval_ms=100, member_expiry_ms=800),
    }
    base.update(overrides)
    return PushSettings(**base)


async def create_topic(url: str, topic: str = "orders", queues: int = 4) -> None:
    async with AsyncAdmin(url) as admin:
        await admin.create_topic(topic, queues=queues)


async def send(url: str, messages: list[Message], **options: Any) -> list[str]:
    async with AsyncProducer(url) as producer:
        results = await producer.send_batch(messages, **options)
    return [r.msg_id for r in results]


async def dead_letters(url: str, group: str, topic: str = "orders", queues: int = 4) -> list[dict[str, str]]:
    client = open_client(url)
    out = []
    for q in range(queues):
        for _, fields in await client.xrange(Keys().queue(topic, q).dlq(group)):
            out.append({k.decode(): v.decode(errors="replace") for k, v in fields.items()})
    await client.aclose()
    return out


async def until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll *predicate* (bounded); fail the test if it stays false."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


ROOT = Path(__file__).resolve().parent.parent


def spawn_worker(module: str, *args: str) -> tuple[subprocess.Popen[str], list[str]]:
    """Start ``python -m module *args``; return it once it printed its ready line (split in words)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    assert proc.stdout is not None
    words = proc.stdout.readline().split()
    assert words[:1] == ["ready"], words
    return proc, words
