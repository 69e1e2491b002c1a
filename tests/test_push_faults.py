"""Faults against a real redis-server: SIGKILL of a worker, killed connections, Redis restarted under load."""

from __future__ import annotations

import asyncio
import signal
import subprocess

import pytest
import redis
import redis.asyncio as redis_asyncio
from structlog.testing import capture_logs

from rmq_style import Message, PushConsumer, ReceivedMessage
from rmq_style._names import Keys
from rmq_style.testing import RedisServer
from tests.pushkit import create_topic, dead_letters, fast_settings, send, spawn_worker, until

pytestmark = pytest.mark.real_only


def start_worker(url: str, handler_ms: int) -> subprocess.Popen[str]:
    proc, words = spawn_worker("tests.push_worker", url, "billing", str(handler_ms))
    assert words == ["ready"]
    return proc


def pending(url: str, queues: int = 4) -> int:
    client = redis.Redis.from_url(url)
    total = sum(
        int(client.xpending(Keys().queue("orders", q).stream, "billing")["pending"]) for q in range(queues)
    )
    client.close()
    return total


def test_sigkill_of_a_worker_mid_batch_loses_nothing(private_redis: RedisServer) -> None:
    url = private_redis.url
    asyncio.run(create_topic(url))
    ids = set(asyncio.run(send(url, [Message("orders", {"i": i}) for i in range(300)])))
    control = redis.Redis.from_url(url)
    first = start_worker(url, handler_ms=20)
    try:
        asyncio.run(until(lambda: control.scard("test:handled") >= 30, what="the first worker under way"))
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert control.scard("test:handled") < 300  # killed mid-way, with entries pending
        more = set(asyncio.run(send(url, [Message("orders", {"i": i}) for i in range(300, 350)])))
        second = start_worker(url, handler_ms=1)
        try:
            asyncio.run(
                until(lambda: control.scard("test:handled") == 350, timeout=30, what="every message handled")
            )
            asyncio.run(until(lambda: pending(url) == 0, what="every entry acknowledged"))
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    handled = {m.decode() for m in control.smembers("test:handled")}
    assert handled == ids | more
    assert asyncio.run(dead_letters(url, "billing")) == []


def _consume_through(url: str, fault: str, server: RedisServer) -> None:
    async def main() -> None:
        await create_topic(url)
        ids = set(await send(url, [Message("orders", {"i": i}) for i in range(400)]))
        recorder = redis_asyncio.Redis.from_url(url)
        control = redis_asyncio.Redis.from_url(url)

        async def listener(msg: ReceivedMessage) -> None:
            await asyncio.sleep(0.002)
            await recorder.sadd("test:handled", msg.msg_id)

        consumer = PushConsumer(url, "billing", fast_settings(concurrency=8))
        consumer.subscribe("orders", "*", listener)
        async with consumer:
            await until(lambda: consumer.stats.consumed >= 50, what="consumption under way")
            if fault == "client-kill":
                for _ in range(3):
                    kill = ("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
                    killed = await control.execute_command(*kill)
                    assert killed >= 1
                    await asyncio.sleep(0.05)
            else:
                await asyncio.to_thread(server.restart)  # kill -9, start again on the same AOF
            ids |= set(await send(url, [Message("orders", {"i": i}) for i in range(400, 450)]))
            sizes: list[int] = [0]

            async def count() -> None:
                while sizes[-1] < 450:
                    sizes.append(await control.scard("test:handled"))
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(count(), 30)  # at least once: duplicates may make consumed > 450
            await until(lambda: consumer.in_flight == 0, what="settled")
        got = {m.decode() for m in await control.smembers("test:handled")}
        assert got == ids and consumer.stats.consumed >= 450
        assert await dead_letters(url, "billing") == []
        await recorder.aclose()
        await control.aclose()

    with capture_logs() as events:
        asyncio.run(main())
    assert any(e["event"] == "consumer.redis_unavailable" for e in events)
    assert pending(url) == 0


def test_killed_connections_reconnect_and_nothing_is_lost(private_redis: RedisServer) -> None:
    _consume_through(private_redis.url, "client-kill", private_redis)


def test_redis_restarted_with_aof_under_load_resumes_by_itself(private_redis: RedisServer) -> None:
    _consume_through(private_redis.url, "restart", private_redis)
