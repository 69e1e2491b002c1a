"""Recovery on both backends: rebalance, dead members' entries, slow handlers, timeouts, lost groups."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from structlog.testing import capture_logs

from rmq_style import Message, PushConsumer, ReceivedMessage
from rmq_style._async._io import open_client
from rmq_style._names import Keys
from tests.pushkit import create_topic, fast_settings, send, until


def run(coro: object) -> list[dict[str, object]]:
    with capture_logs() as events:
        asyncio.run(coro)  # type: ignore[arg-type]
    return events


async def noop(msg: ReceivedMessage) -> None:
    return None


def test_queues_are_rebalanced_when_members_join_and_leave(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=4)
        a = PushConsumer(url, "billing", fast_settings())
        a.subscribe("orders", "*", noop)
        b = PushConsumer(url, "billing", fast_settings())
        b.subscribe("orders", "*", noop)
        async with a:
            assert len(a.queues) == 4
            async with b:
                await until(lambda: len(a.queues) == 2 and len(b.queues) == 2, what="a 2/2 split")
                assert sorted(a.queues + b.queues) == sorted({*a.queues, *b.queues})
            await until(lambda: len(a.queues) == 4, what="a takes every queue back")

    run(main())


def test_entries_of_a_dead_member_are_redelivered_to_a_live_one(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=2)
        ids = await send(url, [Message("orders", {"i": i}) for i in range(10)])
        # a member that read entries and died: they sit in its pending list, it never heartbeats
        client = open_client(url)
        for q in range(2):
            await client.xgroup_create(Keys().queue("orders", q).stream, "billing", "0", mkstream=True)
            await client.xreadgroup("billing", "ghost", {Keys().queue("orders", q).stream: ">"})
        seen: list[str] = []

        async def listener(msg: ReceivedMessage) -> None:
            seen.append(msg.msg_id)

        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("orders", "*", listener)
        async with consumer:
            await until(lambda: len(seen) == 10, what="adopted entries handled")
            await until(lambda: consumer.in_flight == 0, what="acks")
        assert sorted(seen) == sorted(ids)
        for q in range(2):
            assert (await client.xpending(Keys().queue("orders", q).stream, "billing"))["pending"] == 0
        await client.aclose()

    events = run(main())
    assert any(e["event"] == "entries.adopted" and e["from_member"] == "ghost" for e in events)


def test_a_handler_slower_than_member_expiry_is_not_delivered_twice(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        settings = fast_settings()
        deliveries: list[str] = []

        async def slow(msg: ReceivedMessage) -> None:
            deliveries.append(msg.msg_id)
            await asyncio.sleep(3 * settings.membership.member_expiry_ms / 1000)

        a = PushConsumer(url, "billing", settings)
        a.subscribe("orders", "*", slow)
        b = PushConsumer(url, "billing", settings)
        b.subscribe("orders", "*", slow)
        async with a, b:
            await send(url, [Message("orders", {"i": 1})])
            await until(lambda: a.stats.consumed + b.stats.consumed == 1, timeout=15, what="handled")
        assert len(deliveries) == 1

    run(main())


def test_hung_handler_times_out_and_is_retried(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        await send(url, [Message("orders", {"i": 1})])
        attempts: list[int] = []

        async def listener(msg: ReceivedMessage) -> None:
            attempts.append(msg.reconsume_times)
            if msg.reconsume_times == 0:
                await asyncio.sleep(60)

        consumer = PushConsumer(url, "billing", fast_settings(consume_timeout_ms=200))
        consumer.subscribe("orders", "*", listener)
        async with consumer:
            await until(lambda: consumer.stats.consumed == 1, what="the retry succeeds")
        assert attempts == [0, 1] and consumer.stats.retried == 1

    events = run(main())
    assert any("ConsumeTimeout" in str(e.get("reason")) for e in events if e["event"] == "message.failed")


def test_entries_of_ours_stranded_in_a_queue_that_moved_to_another_member_are_handled(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=2)
        handled: dict[str, list[int]] = {"a": [], "b": []}
        release = asyncio.Event()

        def listener(name: str) -> Any:
            async def on_message(msg: ReceivedMessage) -> None:
                i = msg.value()["i"]
                if name == "b" and i < 3 and not release.is_set():
                    await release.wait()  # held at b until they have been taken from it
                handled[name].append(i)

            return on_message

        a = PushConsumer(url, "billing", fast_settings())
        a.subscribe("orders", "*", listener("a"))
        b = PushConsumer(url, "billing", fast_settings())
        b.subscribe("orders", "*", listener("b"))
        client = open_client(url)
        async with a:
            async with b:
                await until(lambda: len(a.queues) == 1 and len(b.queues) == 1, what="a 1/1 split")
                (queue,) = b.queues
                stream = Keys().queue("orders", queue.queue_id).stream
                # a's last read of the queue may still be waiting: a probe read by b proves it is over
                # (Redis serves the longest-waiting reader first)
                for probe in range(100, 110):
                    await send(url, [Message("orders", {"i": probe})], queue_id=queue.queue_id)
                    await until(lambda p=probe: p in handled["a"] + handled["b"], what="the probe")
                    if probe in handled["b"]:
                        break
                await send(url, [Message("orders", {"i": i}) for i in range(3)], queue_id=queue.queue_id)
                await until(lambda: b.in_flight == 3, what="three held at b")
                # as if a had read them just before the queue moved, and lost the reply
                ids = [entry_id for entry_id, _ in await client.xrevrange(stream, count=3)]  # the held ones
                assert len(await client.xclaim(stream, "billing", a.member, 0, ids, justid=True)) == 3
                stranded = [0, 1, 2]
                await until(lambda: sorted(i for i in handled["a"] if i < 3) == stranded, what="a has them")
                release.set()
                await until(lambda: b.in_flight == 0, what="b lets go")
            await until(lambda: a.in_flight == 0, what="acks")
        assert (await client.xpending(stream, "billing"))["pending"] == 0
        await client.aclose()

    run(main())


@pytest.mark.parametrize("sync_listener", [False, True])
def test_orderly_hung_handler_times_out_holds_the_queue_and_is_tried_again_in_order(
    url: str, sync_listener: bool
) -> None:
    release = threading.Event()  # lets a hung sync listener's thread end with the test

    async def main() -> None:
        await create_topic(url, queues=1)
        await send(url, [Message("orders", {"i": i}) for i in range(3)])
        calls: list[tuple[int, int]] = []

        def record(msg: ReceivedMessage) -> bool:
            calls.append((msg.value()["i"], msg.reconsume_times))
            return msg.value()["i"] == 1 and msg.reconsume_times == 0  # hang on the first try of 1

        async def on_async(msg: ReceivedMessage) -> None:
            if record(msg):
                await asyncio.sleep(60)

        def on_sync(msg: ReceivedMessage) -> None:
            if record(msg):
                release.wait(60)

        consumer = PushConsumer(url, "billing", fast_settings(consume_timeout_ms=200))
        consumer.subscribe("orders", "*", on_sync if sync_listener else on_async, orderly=True)
        async with consumer:
            await until(lambda: consumer.stats.consumed == 3, what="all three, 1 after its timeout")
        release.set()
        assert calls == [(0, 0), (1, 0), (1, 1), (2, 0)]  # 2 waited for 1: the queue was held
        assert consumer.stats.suspended == 1 and consumer.stats.failed == 1

    events = run(main())
    assert [e["sync"] for e in events if e["event"] == "handler.timeout"] == [sync_listener]
    failed = [e for e in events if e["event"] == "message.failed"]
    assert len(failed) == 1 and "ConsumeTimeout" in str(failed[0]["reason"])


def test_a_lost_group_is_recreated_from_the_last_known_position(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        stream = Keys().queue("orders", 0).stream
        seen: list[int] = []

        async def listener(msg: ReceivedMessage) -> None:
            seen.append(msg.value()["i"])

        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("orders", "*", listener)
        client = open_client(url)
        async with consumer:
            await send(url, [Message("orders", {"i": 0})])
            await until(lambda: seen == [0], what="first message")
            await until(lambda: consumer.in_flight == 0, what="ack")
            await client.xgroup_destroy(stream, "billing")  # as after a restart without persistence
            await send(url, [Message("orders", {"i": 1})])
            await until(lambda: seen == [0, 1], what="the message sent while the group was lost")
        await client.aclose()

    events = run(main())
    assert any(e["event"] == "group.recreated" and e["where"] == "after" for e in events)
