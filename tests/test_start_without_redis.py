"""Starting while Redis is down: push consumers fail cleanly and can start again; App workers wait."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from rmq_style import Admin, App, BrokerUnavailableError, Message, Producer, PushConsumer, ReceivedMessage
from rmq_style.testing import RedisServer

pytestmark = pytest.mark.real_only


async def _until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)  # bounded poll


@pytest.mark.parametrize("orderly", [False, True])
def test_push_consumer_start_fails_cleanly_and_starts_again_later(
    private_redis: RedisServer, orderly: bool
) -> None:
    url = private_redis.url
    with Admin(url) as admin:
        admin.create_topic("orders", queues=2)
    private_redis.kill()
    got: list[bytes] = []

    async def main() -> None:
        consumer = PushConsumer(url, "g", consume_from="first")
        consumer.subscribe("orders", "*", lambda m: got.append(m.body), orderly=orderly)
        with pytest.raises(BrokerUnavailableError, match="Redis unreachable at start") as caught:
            await consumer.start()
        assert type(caught.value.__cause__).__module__.startswith("redis")
        assert consumer.queues == [] and consumer._ctx.client is None
        private_redis.start()
        with Producer(url) as producer:
            producer.send(Message("orders", b"after"))
        async with consumer:  # the same consumer starts now
            await _until(lambda: got == [b"after"])

    asyncio.run(main())


def _app(url: str, handled: list[str], **settings: Any) -> App:
    app = App(url, **settings)

    @app.subscribe("orders", group="billing")
    def bill(msg: ReceivedMessage) -> None:
        handled.append(msg.body.decode())

    return app


def test_app_waits_for_redis_at_start_then_consumes(private_redis: RedisServer) -> None:
    url = private_redis.url
    with Admin(url) as admin:
        admin.create_topic("orders", queues=2)
    private_redis.kill()
    handled: list[str] = []
    app = _app(url, handled)

    async def main() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        with capture_logs() as events:
            running = asyncio.create_task(app.run(stop, ready=ready, consume_from="first"))
            await _until(lambda: sum(e["event"] == "app.redis_unavailable" for e in events) >= 2)
            assert not ready.is_set() and not running.done()
        private_redis.start()
        await asyncio.wait_for(ready.wait(), 10)
        with Producer(url) as producer:
            producer.send(Message("orders", b"o-1"))
        await _until(lambda: handled == ["o-1"])
        stop.set()
        await asyncio.wait_for(running, 10)

    asyncio.run(main())


def test_app_waiting_for_redis_stops_on_request_and_gives_up_after_startup_wait(
    private_redis: RedisServer,
) -> None:
    private_redis.kill()
    handled: list[str] = []

    async def main() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(_app(private_redis.url, handled).run(stop))
        stop.set()  # set while it waits (or before its first attempt): the same outcome
        await asyncio.wait_for(running, 5)  # returns without error, nothing started
        start = time.monotonic()
        with pytest.raises(BrokerUnavailableError, match="Redis unreachable"):
            await _app(private_redis.url, handled, startup_wait_s=0.3).run(asyncio.Event())
        assert 0.3 <= time.monotonic() - start < 5

    asyncio.run(main())
    assert handled == []
