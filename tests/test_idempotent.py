"""Idempotent consumption (docs/idempotence.md), on both backends: duplicates made on purpose
(same business key twice, a redelivery after a takeover, a DLQ replay) are handled once and
counted; a duplicate in progress is never run at the same time; the documented limits."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from structlog.testing import capture_logs

from rmq_style import (
    App,
    AsyncAdmin,
    Idempotent,
    Message,
    PushConsumer,
    ReceivedMessage,
)
from rmq_style._async._io import open_client
from rmq_style._names import Keys
from rmq_style.push.idempotence import mark_key
from rmq_style.testing import AppTester
from tests.pushkit import create_topic, fast_settings, send, until


def field(msg: ReceivedMessage, name: str) -> int:
    return int(json.loads(msg.body)[name])


def run(coro: Any) -> None:
    with capture_logs():
        asyncio.run(coro)


def test_the_same_business_key_sent_twice_is_handled_once(url: str) -> None:
    async def main() -> None:
        await create_topic(url)
        await send(
            url,
            [Message("orders", {"n": 1}, keys=("order-7",)), Message("orders", {"n": 2}, keys=("order-7",))],
        )
        await send(url, [Message("orders", {"n": 3}, keys=("order-8",))])
        seen: list[int] = []

        async def listener(msg: ReceivedMessage) -> None:
            seen.append(field(msg, "n"))

        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("orders", "*", listener, idempotent="keys")
        async with consumer:
            await until(
                lambda: consumer.stats.duplicates == 1 and len(seen) == 2, what="one duplicate skipped"
            )
            await until(lambda: consumer.in_flight == 0, what="acks")
        assert len(seen) == 2 and 3 in seen  # the two copies of order-7 may be in two queues: one ran
        # another group is not deduplicated by billing's marks
        other: list[int] = []
        shipping = PushConsumer(url, "shipping", fast_settings())
        shipping.subscribe("orders", "*", lambda m: other.append(field(m, "n")), idempotent="keys")
        async with shipping:
            await until(
                lambda: shipping.stats.duplicates == 1 and len(other) == 2, what="shipping's own dedup"
            )
        assert len(other) == 2 and 3 in other

    run(main())


def test_msg_id_is_the_default_key_so_two_sends_of_one_key_both_run(url: str) -> None:
    async def main() -> None:
        await create_topic(url)
        await send(url, [Message("orders", {"n": i}, keys=("order-7",)) for i in range(2)])
        seen: list[int] = []
        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("orders", "*", lambda m: seen.append(field(m, "n")), idempotent=True)
        async with consumer:
            await until(lambda: len(seen) == 2, what="both handled")
            await until(lambda: consumer.in_flight == 0, what="acks")
        assert consumer.stats.duplicates == 0

    run(main())


def test_the_msg_id_names_one_mark_in_the_producers_layout_and_in_any_other(url: str) -> None:
    """The default key is read from the fields as Redis sent them (no decode): an entry in the
    producers' layout and a copy of it in another field order (a map) must find the same mark."""

    async def main() -> None:
        await create_topic(url)
        await send(url, [Message("orders", {"n": 0})])
        client = open_client(url)
        stream = Keys().queue("orders", 0).stream
        ((_, first),) = await client.xrange(stream)
        copy = dict(reversed(list(first.items())))  # same fields, another order: not the plain layout
        copy[b"d"] = json.dumps({"n": 1}).encode()
        await client.xadd(stream, copy)  # type: ignore[arg-type]
        seen: list[int] = []
        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("orders", "*", lambda m: seen.append(field(m, "n")), idempotent=True)
        async with consumer:
            await until(lambda: consumer.stats.duplicates == 1, what="the copy skipped")
            await until(lambda: consumer.in_flight == 0, what="acks")
        msg_id = first[b"i"].decode()
        assert seen == [0]
        assert await client.get(mark_key("rmq", "orders", "billing", msg_id)) == b"consumed"
        await client.aclose()

    run(main())


def test_a_redelivery_after_a_takeover_of_a_consumed_message_is_acked_without_a_call(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        ids = await send(url, [Message("orders", {"n": i}) for i in range(4)])
        client = open_client(url)
        stream = Keys().queue("orders", 0).stream
        # a member read all four, handled two (their marks say consumed) and died before acking
        await client.xgroup_create(stream, "billing", "0", mkstream=True)
        await client.xreadgroup("billing", "ghost", {stream: ">"})
        for msg_id in ids[:2]:
            await client.set(mark_key("rmq", "orders", "billing", msg_id), b"consumed", px=60_000)
        seen: list[str] = []
        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("orders", "*", lambda m: seen.append(m.msg_id), idempotent=True)
        async with consumer:
            await until(lambda: len(seen) == 2 and consumer.stats.duplicates == 2, what="adopted entries")
            await until(lambda: consumer.in_flight == 0, what="acks")
        assert sorted(seen) == sorted(ids[2:])
        assert (await client.xpending(stream, "billing"))["pending"] == 0  # duplicates are acked too
        await client.aclose()

    run(main())


def test_a_failed_key_runs_again_and_its_dlq_replay_after_a_resend_is_skipped(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        calls: list[int] = []

        def listener(msg: ReceivedMessage) -> None:
            calls.append(field(msg, "n"))
            if len(calls) == 1:
                raise RuntimeError("first try fails")  # dead-lettered: its mark is deleted

        consumer = PushConsumer(url, "billing", fast_settings(max_reconsume_times=0))
        consumer.subscribe("orders", "*", listener, idempotent="keys")
        async with consumer, AsyncAdmin(url) as admin:
            await send(url, [Message("orders", {"n": 1}, keys=("order-7",))])
            await until(lambda: consumer.stats.dead_lettered == 1, what="dead-lettered")
            await send(url, [Message("orders", {"n": 2}, keys=("order-7",))])  # a resend, handled
            await until(lambda: calls == [1, 2], what="the resend handled")
            records = await admin.dead_letters("billing")
            assert await admin.replay_dead_letters("billing", records) == 1
            await until(lambda: consumer.stats.duplicates == 1, what="the replay skipped")
            await until(lambda: consumer.in_flight == 0, what="acks")
        assert calls == [1, 2] and consumer.stats.duplicates == 1

    run(main())


def test_a_duplicate_in_progress_is_retried_later_never_run_at_the_same_time(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=2)
        for q in range(2):  # one copy of the business key in each queue: both read at once
            await send(url, [Message("orders", {"q": q}, keys=("order-7",))], queue_id=q)
        release = asyncio.Event()
        running: list[int] = []
        calls: list[int] = []

        async def listener(msg: ReceivedMessage) -> None:
            running.append(1)
            calls.append(field(msg, "q"))
            assert len(running) == 1, "two calls of one key at once"
            await release.wait()
            running.pop()

        consumer = PushConsumer(url, "billing", fast_settings(concurrency=4))
        consumer.subscribe("orders", "*", listener, idempotent="keys")
        async with consumer:
            await until(lambda: consumer.stats.failed >= 1, what="the other copy told to retry later")
            assert len(calls) == 1
            release.set()
            await until(lambda: consumer.stats.duplicates == 1, what="the retried copy skipped")
            await until(lambda: consumer.in_flight == 0, what="acks")
        assert len(calls) == 1 and consumer.stats.dead_lettered == 0

    run(main())


def test_batch_and_orderly_listeners_skip_duplicates(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        await send(url, [Message("orders", {"n": n}, keys=(f"k{n % 3}",)) for n in range(6)])
        batches: list[list[int]] = []
        ordered: list[int] = []
        batch = PushConsumer(url, "billing", fast_settings(consume_message_batch_max_size=6))
        batch.subscribe(
            "orders", "*", lambda ms: batches.append([field(m, "n") for m in ms]), idempotent="keys"
        )
        orderly = PushConsumer(url, "audit", fast_settings())
        orderly.subscribe(
            "orders", "*", lambda m: ordered.append(field(m, "n")), orderly=True, idempotent="keys"
        )
        async with batch, orderly:
            await until(lambda: batch.stats.duplicates == 3, what="batch duplicates")
            await until(lambda: orderly.stats.duplicates == 3, what="orderly duplicates")
            await until(lambda: batch.in_flight == 0, what="acks")
        assert sorted(n for b in batches for n in b) == [0, 1, 2]
        assert ordered == [0, 1, 2]

    run(main())


# -- documented limits ----------------------------------------------------------------------------


def test_limit_a_crash_between_the_side_effect_and_the_consumed_mark_runs_the_handler_again(
    url: str,
) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        (msg_id,) = await send(url, [Message("orders", {"n": 1})])
        client = open_client(url)
        stream = Keys().queue("orders", 0).stream
        # a member claimed it ("consuming", 200 ms lease), did its side effect and crashed
        await client.xgroup_create(stream, "billing", "0", mkstream=True)
        await client.xreadgroup("billing", "ghost", {stream: ">"})
        mark = mark_key("rmq", "orders", "billing", msg_id)
        await client.set(mark, b"consuming:ghost", px=200)
        side_effects = ["ghost's"]
        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("orders", "*", lambda m: side_effects.append("ours"), idempotent=True)
        async with consumer:
            await until(lambda: len(side_effects) == 2, what="run again once the lease lapsed")
            await until(lambda: consumer.in_flight == 0, what="acks")
        assert side_effects == ["ghost's", "ours"] and consumer.stats.duplicates == 0
        assert await client.get(mark) == b"consumed"
        await client.aclose()

    run(main())


def test_limit_a_retention_shorter_than_the_redelivery_window_lets_a_duplicate_through(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        seen: list[int] = []
        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe(
            "orders", "*", lambda m: seen.append(field(m, "n")), idempotent=Idempotent("keys", 3000)
        )
        client = open_client(url)
        mark = mark_key("rmq", "orders", "billing", "order-7")
        async with consumer:
            await send(url, [Message("orders", {"n": 1}, keys=("order-7",))])
            await until(lambda: seen == [1], what="first copy")
            await send(url, [Message("orders", {"n": 2}, keys=("order-7",))])  # within the retention
            await until(lambda: consumer.stats.duplicates == 1, what="the early duplicate skipped")
            assert 0 < await client.pttl(mark) <= 3000  # the "consumed" mark lasts the retention
            await client.pexpire(mark, 1)  # the retention over (fast-forwarded, not waited for)
            await asyncio.wait_for(_gone(client, mark), 10)
            await send(url, [Message("orders", {"n": 3}, keys=("order-7",))])
            await until(lambda: seen == [1, 3], what="the late duplicate runs")
        assert consumer.stats.duplicates == 1
        await client.aclose()

    run(main())


async def _gone(client: Any, key: str) -> None:
    while await client.exists(key):
        await asyncio.sleep(0.02)  # bounded by the caller's wait_for


def test_rmq_tester_counts_skipped_duplicates() -> None:
    app = App("memory://idem-tester", auto_create_topics=True)
    billed: list[int] = []

    @app.subscribe("orders", group="billing", idempotent="keys")
    def bill(order: dict[str, int]) -> None:
        billed.append(order["id"])

    with AppTester(app) as tester:
        tester.send("orders", {"id": 1}, keys=("order-1",))
        tester.send("orders", {"id": 1}, keys=("order-1",))
        tester.drain()
        assert billed == [1]
        assert tester.stats("billing").duplicates == 1
