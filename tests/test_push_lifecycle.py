"""The push consumer's lifecycle on both backends: ready when start() returns, one drain however
many stop() calls, and a crashing internal loop either restarted (Redis weather) or failing the
whole consumer loudly (a bug), never leaving it half alive."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog
from redis.exceptions import ResponseError
from structlog.testing import capture_logs

from rmq_style import App, ConsumerFailedError, Message, MessageQueue, PushConsumer, ReceivedMessage
from rmq_style._async._io import open_client
from rmq_style._names import Keys
from rmq_style.push.orderly_queue import OrderlyQueue
from rmq_style.push.retries import Retries
from rmq_style.push.tasks import TaskTree
from rmq_style.push.waits import Backoff
from tests.pushkit import create_topic, fast_settings, send, until

ALL = [MessageQueue("orders", q) for q in range(4)]


async def members(url: str, group: str = "billing") -> list[bytes]:
    client = open_client(url)
    try:
        return list(await client.zrange(Keys().members(group, "orders"), 0, -1))
    finally:
        await client.aclose()


async def pending(url: str, group: str = "billing") -> int:
    client = open_client(url)
    try:
        return sum(
            [
                int((await client.xpending(Keys().queue("orders", q).stream, group))["pending"])
                for q in range(4)
            ]
        )
    finally:
        await client.aclose()


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def test_start_returns_once_ready_and_a_cancelled_start_leaves_nothing(url: str) -> None:
    async def main() -> None:
        await create_topic(url)
        seen = asyncio.Event()

        async def listener(msg: ReceivedMessage) -> None:
            seen.set()

        consumer = PushConsumer(url, "billing", fast_settings(concurrency=2))
        consumer.subscribe("orders", "*", listener)
        starting = asyncio.create_task(consumer.start())
        await asyncio.sleep(0)  # start() is waiting for its lifetime task: cancel it there
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert consumer._ctx.tree.running() == []  # nothing left running
        assert await members(url) == []

        consumer = PushConsumer(url, "billing", fast_settings(concurrency=2))
        consumer.subscribe("orders", "*", listener)
        assert consumer.state == "new"
        await consumer.start()  # ready when this returns
        try:
            assert consumer.state == "running" and repr(consumer).startswith("<PushConsumer running ")
            assert consumer.queues == ALL  # first rebalance done: its queues taken, groups created
            assert await members(url) == [consumer.member.encode()]  # registered
            running = consumer._ctx.tree.running()
            assert {"membership", "fetch", "settle", "retries", "watchdog", "worker-0", "worker-1"} <= set(
                running
            )
            await send(url, [Message("orders", {"id": 1})])
            await asyncio.wait_for(seen.wait(), 5)
        finally:
            await consumer.stop()
        assert consumer._ctx.tree.running() == []  # leaving the task group waited for every child
        assert consumer.state == "stopped"
        assert await members(url) == []  # left the group

    with capture_logs():
        asyncio.run(main())


def test_concurrent_stops_both_wait_for_one_drain_that_settles_each_call_once(url: str) -> None:
    async def main(logs: list[dict[str, Any]]) -> None:
        await create_topic(url)
        await send(url, [Message("orders", {"id": i}) for i in range(3)])
        release = asyncio.Event()
        running: list[int] = []
        handled: list[int] = []

        async def listener(msg: ReceivedMessage) -> None:
            running.append(msg.value()["id"])
            await release.wait()
            handled.append(msg.value()["id"])

        consumer = PushConsumer(url, "billing", fast_settings(concurrency=4))
        consumer.subscribe("orders", "*", listener)
        await consumer.start()
        await until(lambda: len(running) == 3, what="three calls running")
        stops = [asyncio.create_task(consumer.stop()) for _ in range(2)]
        await asyncio.wait_for(consumer._ctx.stopping.wait(), 5)  # the drain began
        done, _ = await asyncio.wait(stops, timeout=0.3)
        assert not done  # neither stop() returns while calls run
        assert consumer.state == "draining"
        release.set()
        await asyncio.wait_for(asyncio.gather(*stops), 5)
        assert sorted(handled) == [0, 1, 2]
        assert consumer.stats.consumed == 3 and consumer.in_flight == 0
        assert await pending(url) == 0  # each acked
        (stopped,) = events(logs, "consumer.stopped")  # one drain
        assert (stopped["unfinished"], stopped["unsettled"], stopped["failed"]) == (0, 0, False)

    with capture_logs() as logs:
        asyncio.run(main(logs))


def test_the_drain_timeout_cuts_a_call_and_leaves_its_message_pending(url: str) -> None:
    async def main(logs: list[dict[str, Any]]) -> None:
        await create_topic(url)
        await send(url, [Message("orders", {"id": 1})])
        started = asyncio.Event()

        async def listener(msg: ReceivedMessage) -> None:
            started.set()
            await asyncio.Event().wait()  # never finishes

        consumer = PushConsumer(url, "billing", fast_settings(shutdown_timeout_ms=100))
        consumer.subscribe("orders", "*", listener)
        await consumer.start()
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.wait_for(consumer.stop(), 5)
        assert await pending(url) == 1  # handed back: neither acked, retried nor dead-lettered
        s = consumer.stats
        assert (s.consumed, s.failed, s.retried, s.dead_lettered) == (0, 0, 0, 0)
        (stopped,) = events(logs, "consumer.stopped")
        assert (stopped["unfinished"], stopped["unsettled"]) == (1, 1)

    with capture_logs() as logs:
        asyncio.run(main(logs))


def test_a_loop_that_keeps_crashing_fails_the_consumer_which_hands_its_queues_back(url: str) -> None:
    async def main(logs: list[dict[str, Any]]) -> None:
        await create_topic(url)

        async def bug() -> None:
            raise KeyError("a bug")

        handled: list[int] = []

        async def listener(msg: ReceivedMessage) -> None:
            handled.append(msg.value()["id"])

        consumer = PushConsumer(url, "billing", fast_settings(loop_crash_limit=2))
        consumer.subscribe("orders", "*", listener)
        consumer._retries.retry_loop = bug  # type: ignore[method-assign]
        await send(url, [Message("orders", {"id": 1})])
        await consumer.start()
        with pytest.raises(ConsumerFailedError, match="retries task crashed 3 times in a row") as failed:
            await asyncio.wait_for(consumer.wait(), 10)
        assert isinstance(failed.value.__cause__, KeyError)
        with pytest.raises(ConsumerFailedError):
            await consumer.stop()  # says so again, and returns at once
        assert consumer._ctx.tree.running() == []  # nothing half alive
        assert consumer.state == "failed"
        assert await members(url) == []  # it left: its queues go to the others now
        crashes = events(logs, "consumer.loop_crashed")
        assert [(e["loop"], e["crashes"], e["weather"]) for e in crashes] == [
            ("retries", 1, False),
            ("retries", 2, False),
            ("retries", 3, False),
        ]
        assert {(e["group"], e["member"]) for e in crashes} == {("billing", consumer.member)}
        assert len(events(logs, "consumer.failed")) == 1
        assert events(logs, "consumer.stopped")[0]["failed"] is True

        survivor = PushConsumer(url, "billing", fast_settings())
        survivor.subscribe("orders", "*", listener)
        async with survivor:
            assert survivor.queues == ALL  # taken at its first rebalance: no member expiry to wait for
            await send(url, [Message("orders", {"id": 2})])
            await until(lambda: 2 in handled, what="the survivor consumes")
        assert sorted(handled) == [1, 2]

    with capture_logs() as logs:
        asyncio.run(main(logs))


def test_redis_refusals_are_weather_the_loop_restarts_past_the_limit(url: str) -> None:
    async def main(logs: list[dict[str, Any]]) -> None:
        await create_topic(url)
        handled: list[int] = []

        async def listener(msg: ReceivedMessage) -> None:
            handled.append(msg.value()["id"])

        consumer = PushConsumer(url, "billing", fast_settings(loop_crash_limit=1))
        consumer.subscribe("orders", "*", listener)
        settle_loop, refusals = consumer._settling.settle_loop, iter(range(4))

        async def refused_then_fine() -> None:
            if next(refusals, None) is not None:
                raise ResponseError("READONLY You can't write against a read only replica.")
            await settle_loop()

        consumer._settling.settle_loop = refused_then_fine  # type: ignore[method-assign]
        async with consumer:
            await send(url, [Message("orders", {"id": 1})])
            await until(lambda: consumer.stats.consumed == 1 and consumer.in_flight == 0, what="settled")
        assert consumer._ctx.tree.failure is None
        crashes = events(logs, "consumer.loop_crashed")
        assert [(e["loop"], e["weather"]) for e in crashes] == [("settle", True)] * 4
        assert await pending(url) == 0

    with capture_logs() as logs:
        asyncio.run(main(logs))


def test_a_crashed_orderly_queue_task_fails_the_consumer_instead_of_holding_its_queue(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def bug(self: OrderlyQueue) -> None:
        raise RuntimeError("a bug in the queue task's own boundary")

    monkeypatch.setattr(OrderlyQueue, "run", bug)

    async def main(logs: list[dict[str, Any]]) -> None:
        await create_topic(url)
        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("orders", "*", lambda msg: None, orderly=True)
        await consumer.start()
        with pytest.raises(ConsumerFailedError, match=r"orderly orders:\d task crashed"):
            await asyncio.wait_for(consumer.wait(), 10)
        assert consumer._ctx.tree.running() == []
        assert await members(url) == []
        assert len(events(logs, "consumer.failed")) == 1

    with capture_logs() as logs:
        asyncio.run(main(logs))


def test_app_run_drains_every_consumer_then_raises_a_failure(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def bug(self: Retries) -> None:
        raise KeyError("a bug")

    app = App(url)

    @app.subscribe("orders", group="billing")
    async def on_billing(msg: ReceivedMessage) -> None: ...

    async def main(logs: list[dict[str, Any]]) -> None:
        await create_topic(url)
        monkeypatch.setattr(Retries, "retry_loop", bug)
        with pytest.raises(ConsumerFailedError):
            await asyncio.wait_for(app.run(asyncio.Event(), loop_crash_limit=0, **_fast()), 10)
        assert app.consumers == {}
        assert await members(url) == []
        assert [e["failed"] for e in events(logs, "app.stopped")] == [1]

    with capture_logs() as logs:
        asyncio.run(main(logs))


def _fast() -> dict[str, Any]:
    s = fast_settings()
    return {"consume_from": "first", "membership": s.membership, "reconnect_backoff_ms": 20}


@pytest.mark.parametrize(
    ("quiet_s", "raised", "failed_at"),
    [
        (60.0, ["weather", "bug", "weather", "bug", "bug", "bug"], 5),  # the third bug in a row: limit 2
        (60.0, ["weather"] * 6, None),  # Redis weather never fails the consumer
        (0.0, ["bug"] * 6, None),  # each crash after a quiet period counts anew
    ],
)
def test_the_boundary_counts_bugs_in_a_row(quiet_s: float, raised: list[str], failed_at: int | None) -> None:
    async def main() -> tuple[int, TaskTree]:
        stopping = asyncio.Event()
        tree = TaskTree(structlog.get_logger(), lambda: Backoff(1, 1), stopping, 2, quiet_s)
        left = iter(raised)
        calls = 0

        async def loop() -> None:
            nonlocal calls
            calls += 1
            what = next(left, None)
            if what == "weather":
                raise ResponseError("OOM command not allowed when used memory > 'maxmemory'.")
            if what == "bug":
                raise KeyError("a bug")

        async with asyncio.TaskGroup() as group:
            tree.open(group)
            tree.spawn("retries", loop)
        return calls, tree

    with capture_logs() as logs:
        calls, tree = asyncio.run(main())
    crashes = len(events(logs, "consumer.loop_crashed"))
    if failed_at is None:
        assert (tree.failure, calls, crashes) == (None, len(raised) + 1, len(raised))
    else:
        assert tree.failure is not None and tree.stop_requested.is_set()
        assert (calls, crashes) == (failed_at, failed_at)  # not restarted after it
