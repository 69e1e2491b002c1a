"""PushConsumer on both backends: consume, ack, retry, dead letters, filters, batches, concurrency."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import pytest
from pydantic import BaseModel
from structlog.testing import capture_logs

from rmq_style import (
    ConsumeResult,
    DeadLetter,
    Message,
    PushConsumer,
    ReceivedMessage,
    SubscriptionConflictError,
)
from rmq_style._async._io import open_client
from rmq_style._names import Keys
from tests.pushkit import create_topic, dead_letters, fast_settings, send, until


class Order(BaseModel):
    id: int


def run(coro: object) -> None:
    with capture_logs():
        asyncio.run(coro)  # type: ignore[arg-type]


def test_consumes_and_acks_every_message(url: str) -> None:
    async def main() -> None:
        await create_topic(url)
        ids = await send(url, [Message("orders", {"id": i}) for i in range(50)])
        seen: list[str] = []

        async def listener(msg: ReceivedMessage) -> None:
            seen.append(msg.msg_id)

        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("orders", "*", listener)
        async with consumer:
            await until(lambda: len(seen) == 50, what="50 messages")
            await until(lambda: consumer.in_flight == 0, what="acks")
        assert sorted(seen) == sorted(ids)
        assert consumer.stats.consumed == 50
        client = open_client(url)
        for q in range(4):
            assert (await client.xpending(Keys().queue("orders", q).stream, "billing"))["pending"] == 0
        await client.aclose()

    run(main())


def test_failure_comes_back_with_same_id_and_one_more_reconsume_time(url: str) -> None:
    async def main() -> None:
        await create_topic(url)
        (msg_id,) = await send(url, [Message("orders", {"id": 1}, tag="created")])
        attempts: list[tuple[str, int]] = []

        def listener(msg: ReceivedMessage) -> ConsumeResult:  # sync: runs in the thread pool
            attempts.append((msg.msg_id, msg.reconsume_times))
            return ConsumeResult.RECONSUME_LATER if len(attempts) < 3 else ConsumeResult.SUCCESS

        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("orders", "created", listener)
        async with consumer:
            await until(lambda: consumer.stats.consumed == 1, what="success on the third delivery")
        assert attempts == [(msg_id, 0), (msg_id, 1), (msg_id, 2)]
        assert (consumer.stats.failed, consumer.stats.retried, consumer.stats.dead_lettered) == (2, 2, 0)

    run(main())


def test_poison_message_is_delivered_max_plus_one_times_then_dead_lettered(url: str) -> None:
    async def main() -> None:
        await create_topic(url)
        await send(url, [Message("orders", {"id": 1})])
        deliveries: list[int] = []

        async def listener(msg: ReceivedMessage) -> None:
            deliveries.append(msg.reconsume_times)
            raise ValueError("cannot bill order 1")

        consumer = PushConsumer(url, "billing", fast_settings(max_reconsume_times=3))
        consumer.subscribe("orders", "*", listener)
        async with consumer:
            await until(lambda: consumer.stats.dead_lettered == 1, what="dead letter")
        assert deliveries == [0, 1, 2, 3]
        (dead,) = await dead_letters(url, "billing")
        assert dead["reason"].startswith("ValueError: cannot bill order 1 [")
        assert "after 3 retries" in dead["reason"]
        assert (dead["topic"], dead["r"], dead["group"]) == ("orders", "3", "billing")
        assert dead["offset"] and dead["i"]

    run(main())


def test_dead_letter_on_request_and_bad_payload_on_first_delivery(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        bodies: list[object] = [{"id": 1}, {"id": "x"}, b"\xff"]
        await send(url, [Message("orders", body) for body in bodies])
        handled: list[int] = []

        async def listener(order: Order, msg: ReceivedMessage) -> None:
            handled.append(order.id)
            raise DeadLetter("order 1 is cancelled")

        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("orders", "*", listener, model=Order)
        async with consumer:
            await until(lambda: consumer.stats.dead_lettered == 3, what="three dead letters")
        assert handled == [1]
        reasons = {d["d"]: d["reason"] for d in await dead_letters(url, "billing", queues=1)}
        assert reasons['{"id":1}'].startswith("DeadLetter: order 1 is cancelled")
        assert reasons['{"id":"x"}'].startswith("SerializationError: body does not validate as Order")
        assert reasons["\ufffd"].startswith("SerializationError")
        assert consumer.stats.retried == 0

    run(main())


def test_tag_filter_acks_without_calling_the_listener(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=2)
        await send(url, [Message("orders", {"i": i}, tag=t) for i, t in enumerate(["a", "b", "c", "a"])])
        tags: list[str | None] = []

        async def listener(msg: ReceivedMessage) -> None:
            tags.append(msg.tag)

        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("orders", "a || c", listener)
        async with consumer:
            await until(lambda: consumer.stats.consumed + consumer.stats.filtered == 4, what="all four")
            await until(lambda: consumer.in_flight == 0, what="acks")
        assert sorted(tags) == ["a", "a", "c"]  # type: ignore[type-var]
        assert consumer.stats.filtered == 1

    run(main())


def test_second_member_with_another_expression_is_refused(url: str) -> None:
    async def main() -> None:
        await create_topic(url)

        async def listener(msg: ReceivedMessage) -> None:
            return None

        first = PushConsumer(url, "billing", fast_settings())
        first.subscribe("orders", "created", listener)
        second = PushConsumer(url, "billing", fast_settings())
        second.subscribe("orders", "paid", listener)
        async with first:
            with pytest.raises(SubscriptionConflictError, match="already subscribes"):
                await second.start()

    run(main())


def test_concurrency_is_exactly_the_number_of_handlers_running(url: str) -> None:
    async def main() -> None:
        await create_topic(url)
        await send(url, [Message("orders", {"i": i}) for i in range(40)])
        running, peak = 0, 0
        release = asyncio.Event()

        async def listener(msg: ReceivedMessage) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await release.wait()
            running -= 1

        consumer = PushConsumer(url, "billing", fast_settings(concurrency=7))
        consumer.subscribe("orders", "*", listener)
        async with consumer:
            await until(lambda: running == 7, what="seven handlers running")
            await asyncio.sleep(0.05)  # give an eighth handler the chance to (wrongly) start
            assert peak == 7
            release.set()
            await until(lambda: consumer.stats.consumed == 40, what="all consumed")
        assert peak == 7

    run(main())


def test_sync_handlers_run_in_threads_up_to_concurrency(url: str) -> None:
    async def main() -> None:
        await create_topic(url)
        await send(url, [Message("orders", {"i": i}) for i in range(20)])
        threads: Counter[str] = Counter()
        gate = threading.Barrier(4, timeout=5)

        def listener(msg: ReceivedMessage) -> None:
            threads[threading.current_thread().name] += 1
            if msg.reconsume_times == 0 and len(threads) <= 4 and threads.total() <= 4:
                gate.wait()  # four handlers at once, each in its own thread

        consumer = PushConsumer(url, "billing", fast_settings(concurrency=4))
        consumer.subscribe("orders", "*", listener)
        async with consumer:
            await until(lambda: consumer.stats.consumed == 20, what="all consumed")
        assert len(threads) == 4 and all(name.startswith("rmq-push") for name in threads)

    run(main())


def test_batch_listener_gets_lists(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        await send(url, [Message("orders", {"id": i}) for i in range(10)])
        sizes: list[int] = []
        ids: list[int] = []

        async def listener(orders: list[Order], msgs: list[ReceivedMessage]) -> None:
            sizes.append(len(msgs))
            ids.extend(o.id for o in orders)

        consumer = PushConsumer(url, "billing", fast_settings(consume_message_batch_max_size=4))
        consumer.subscribe("orders", "*", listener, model=Order)
        async with consumer:
            await until(lambda: consumer.stats.consumed == 10, what="all consumed")
        assert sorted(ids) == list(range(10))
        assert max(sizes) <= 4 and max(sizes) > 1

    run(main())


def test_new_group_from_last_skips_history_and_from_first_reads_it(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        await send(url, [Message("orders", {"id": 0})])
        got: dict[str, list[int]] = {"last": [], "first": []}

        def listener_for(name: str):  # type: ignore[no-untyped-def]
            async def listener(msg: ReceivedMessage) -> None:
                got[name].append(msg.value()["id"])

            return listener

        last = PushConsumer(url, "from-last", fast_settings(consume_from="last"))
        last.subscribe("orders", "*", listener_for("last"))
        first = PushConsumer(url, "from-first", fast_settings(consume_from="first"))
        first.subscribe("orders", "*", listener_for("first"))
        async with last, first:
            await send(url, [Message("orders", {"id": 1})])
            await until(lambda: len(got["last"]) == 1 and len(got["first"]) == 2, what="both groups")
        assert got == {"last": [1], "first": [0, 1]}
        info = await open_client(url).xinfo_groups(Keys().queue("orders", 0).stream)
        assert {g["name"]: g["lag"] for g in info} == {b"from-last": 0, b"from-first": 0}

    run(main())


def test_stop_waits_for_running_handlers_and_acks(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        await send(url, [Message("orders", {"id": 1})])
        started = asyncio.Event()
        finished: list[int] = []

        async def listener(msg: ReceivedMessage) -> None:
            started.set()
            await asyncio.sleep(0.2)
            finished.append(1)

        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("orders", "*", listener)
        await consumer.start()
        await asyncio.wait_for(started.wait(), 5)
        await consumer.stop()
        assert finished == [1] and consumer.stats.consumed == 1 and consumer.in_flight == 0
        client = open_client(url)
        assert (await client.xpending(Keys().queue("orders", 0).stream, "billing"))["pending"] == 0
        assert await client.zrange(Keys().members("billing", "orders"), 0, -1) == []

    run(main())
