"""Entries that no producer of ours wrote (raw XADD into a queue stream), on both backends.

An entry whose fields do not decode goes to the dead-letter queue on first
delivery, with a reason naming the field; no task of the consumer dies, no
handler slot is lost, and every CLI view shows what decodes and marks what
does not (docs/storage.md, "Field validity").
"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from typing import Any

import pytest
from structlog.testing import capture_logs

from rmq_style import App, Keys, Message, MessageTooLargeError, Producer, PushConsumer, ReceivedMessage
from rmq_style._async._io import open_client
from rmq_style.push.runner import HandlerPool
from tests.pushkit import create_topic, dead_letters, fast_settings, send, until

MSG_ID = b"0123456789abcdef0123456789abcdef"
FAILURES = ("consumer.loop_crashed", "handler.outcome_failed", "message.outcome_failed", "queue.task_crashed")


def entry(**fields: bytes) -> dict[bytes, bytes]:
    """A well-formed entry (as send.lua writes it) with *fields* replaced; ``None`` values are left out."""
    base = {"i": MSG_ID, "q": b"0", "r": b"0", "b": b"1700000000000", "t": b"", "k": b"", "p": b"",
            "c": b"s", "d": b"hostile"}  # fmt: skip
    base.update(fields)
    return {k.encode(): v for k, v in base.items() if v is not None}


async def xadd(url: str, entries: list[dict[bytes, bytes]], topic: str = "orders", queue: int = 0) -> None:
    client = open_client(url)
    for fields in entries:
        await client.xadd(Keys().queue(topic, queue).stream, fields)  # type: ignore[arg-type]
    await client.aclose()


async def pending(url: str, group: str, topic: str = "orders", queues: int = 1) -> int:
    client = open_client(url)
    total = 0
    for q in range(queues):
        total += int((await client.xpending(Keys().queue(topic, q).stream, group))["pending"])
    await client.aclose()
    return total


class LoopErrors:
    """What the event loop reports to its exception handler (``Task exception was never retrieved``)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: self.errors.append(ctx["message"]))

    def check(self) -> None:
        gc.collect()  # a dead task reports its exception when it is collected
        assert self.errors == []


def run(coro: Any) -> list[dict[str, Any]]:
    with capture_logs() as logs:
        asyncio.run(coro)
    crashes = [e for e in logs if e["event"] in FAILURES]
    assert crashes == []
    return logs


# -- 7: settling a message never kills a handler slot ---------------------------------------------

BAD_METADATA = [
    entry(i=b"\xff\xfe-binary-msg-id"),
    entry(i=b"\x80" * 8, d=b"\xc3\x28"),
    entry(r=b"often"),
    entry(r=b"-1"),
    entry(i=None, r=None, b=None, c=None),  # no msg id: a raw "XADD s * d body"
]


def _reason_kinds(dead: list[dict[str, str]]) -> Counter[str]:
    assert all(d["reason"].startswith("undecodable entry: field ") for d in dead), dead
    return Counter(d["reason"].removeprefix("undecodable entry: ").split(":")[0] for d in dead)


def test_undecodable_entries_are_dead_lettered_and_every_slot_survives(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        await xadd(url, BAD_METADATA)
        ids = await send(url, [Message("orders", {"id": i}) for i in range(20)])
        seen: list[tuple[str, int]] = []

        async def listener(msg: ReceivedMessage) -> None:  # reads what a listener reads: may raise
            seen.append((msg.msg_id, msg.reconsume_times))

        consumer = PushConsumer(url, "billing", fast_settings(concurrency=2))
        consumer.subscribe("orders", "*", listener)
        async with consumer:
            await until(lambda: len(seen) >= 20, timeout=8, what="the good messages")
            await until(lambda: consumer.in_flight == 0, what="every entry settled")
            assert consumer._ctx.pool is not None
            assert all(not w.done() for w in consumer._ctx.pool._workers)  # no slot lost
        assert Counter(m for m, _ in seen) == Counter(ids)  # each exactly once
        dead = await dead_letters(url, "billing", queues=1)
        assert _reason_kinds(dead) == {
            "field 'i' (msg id) is not UTF-8 text": 2,
            "field 'r' (reconsume times) is not a decimal integer": 2,
            "field 'i' (msg id) is missing or empty": 1,
        }
        assert consumer.stats.dead_lettered == 5 and consumer.stats.consumed == 20
        assert await pending(url, "billing") == 0
        by_r = {d["r"]: d for d in dead}
        assert by_r["often"]["i"] == MSG_ID.decode() and by_r["often"]["d"] == "hostile"  # a readable copy
        assert by_r[""]["i"] == "" and by_r[""]["d"] == "hostile"  # missing fields: written empty

    run(main())


@pytest.mark.parametrize("q", [b"9" * 19, b"9" * 16, b"1.5", b"-1", b"1e3"])
def test_a_consumer_starts_on_a_queue_whose_first_entry_has_an_odd_q(url: str, q: bytes) -> None:
    """The group's ENTRIESREAD is taken from the first entry's q: one that no producer wrote is ignored."""

    async def main() -> None:
        await create_topic(url, queues=1)
        await xadd(url, [entry(q=q)])
        ids = await send(url, [Message("orders", {"id": i}) for i in range(3)])
        seen: list[str] = []

        async def listener(msg: ReceivedMessage) -> None:
            seen.append(msg.msg_id)

        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("orders", "*", listener)
        async with consumer:
            await until(lambda: len(seen) == 3 and consumer.stats.dead_lettered == 1, what="the verdicts")
        assert seen == ids
        (dead,) = await dead_letters(url, "billing", queues=1)
        assert dead["reason"].startswith(
            "undecodable entry: field 'q' (queue offset) is not a decimal integer"
        )

    run(main())


def test_a_failure_while_settling_is_contained(url: str) -> None:
    """Whatever the bookkeeping of one outcome raises, the message is dead-lettered and the slot lives."""

    async def main() -> None:
        await create_topic(url, queues=1)
        ids = await send(url, [Message("orders", {"id": i}) for i in range(6)])
        consumer = PushConsumer(url, "billing", fast_settings(concurrency=1))

        async def listener(msg: ReceivedMessage) -> None:
            raise ValueError("fails, so the outcome is planned")

        consumer.subscribe("orders", "*", listener)
        consumer._ctx.policy = None  # type: ignore[assignment]  # planning a retry now raises
        with capture_logs() as logs:
            async with consumer:
                await until(lambda: consumer.stats.dead_lettered == 6, what="six dead letters")
                await until(lambda: consumer.in_flight == 0, what="every entry settled")
        assert [e["event"] for e in logs].count("message.outcome_failed") == 6
        dead = await dead_letters(url, "billing", queues=1)
        assert sorted(d["i"] for d in dead) == sorted(ids)
        assert all(d["reason"].startswith("settling failed: AttributeError") for d in dead)
        assert await pending(url, "billing") == 0

    asyncio.run(main())


def test_a_message_whose_settling_cannot_be_planned_is_dead_lettered_alone(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry call that cannot be built: that message is dead-lettered, the rest of its round settles."""
    from rmq_style.push import settle_plan

    def broken_retry_call(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("cannot build the retry")

    monkeypatch.setattr(settle_plan, "retry_call", broken_retry_call)

    async def main() -> None:
        await create_topic(url, queues=1)
        ids = await send(url, [Message("orders", {"id": i}) for i in range(20)])
        seen: list[str] = []

        async def listener(msg: ReceivedMessage) -> None:
            seen.append(msg.msg_id)
            if msg.msg_id == ids[7]:
                raise ValueError("retry me")

        consumer = PushConsumer(url, "billing", fast_settings(concurrency=4))
        consumer.subscribe("orders", "*", listener)
        with capture_logs() as logs:
            async with consumer:
                await until(lambda: consumer.stats.dead_lettered == 1, what="the dead letter")
                await until(lambda: consumer.in_flight == 0, what="every entry settled")
        assert sorted(seen) == sorted(ids) and consumer.stats.consumed == 19
        assert [e["event"] for e in logs if e["log_level"] == "error"] == ["message.settle_failed"]
        (dead,) = await dead_letters(url, "billing", queues=1)
        assert (dead["i"], dead["reason"].split(" [")[0]) == (
            ids[7],
            "settling failed: RuntimeError: cannot build the retry",
        )
        assert await pending(url, "billing") == 0

    asyncio.run(main())


def test_the_pool_keeps_a_worker_whose_outcome_callback_raised() -> None:
    """The pool's last line: whatever on_done raises is logged, and the worker takes the next call."""

    async def main() -> None:
        done: list[int] = []

        def on_done(token: int, outcome: object) -> None:
            if token < 3:
                raise ValueError(f"bookkeeping of {token} failed")
            done.append(token)

        async def listener(i: int) -> None:
            await asyncio.sleep(0)

        pool = HandlerPool(2, 100, 60, on_done)
        pool.start()
        with capture_logs() as logs:
            pool.submit_many([(listener, True, (i,), i) for i in range(8)])
            await until(lambda: len(done) == 5, timeout=5, what="the calls after the failures")
        assert [e["event"] for e in logs] == ["handler.outcome_failed"] * 3
        assert all(not w.done() for w in pool._workers)
        assert await pool.close(1) == 0

    asyncio.run(main())


# -- 8: an orderly queue dead-letters it and goes on -----------------------------------------------


def test_orderly_queue_dead_letters_an_undecodable_entry_and_goes_on(url: str) -> None:
    async def main() -> None:
        errors = LoopErrors()
        await create_topic(url, queues=1)
        await xadd(url, BAD_METADATA)
        ids = await send(url, [Message("orders", {"id": i}) for i in range(10)])
        seen: list[str] = []

        async def listener(msg: ReceivedMessage) -> None:
            seen.append(msg.msg_id)
            assert msg.reconsume_times == 0

        settings = fast_settings(orderly_lease_ms=5000, suspend_current_queue_time_ms=30)
        consumer = PushConsumer(url, "billing", settings)
        consumer.subscribe("orders", "*", listener, orderly=True)
        async with consumer:
            await until(lambda: len(seen) >= 10, timeout=8, what="the good messages")
            await until(lambda: consumer.stats.dead_lettered == 5, what="the dead letters")
        assert seen == ids  # in offset order, each once
        assert _reason_kinds(await dead_letters(url, "billing", queues=1)) == {
            "field 'i' (msg id) is not UTF-8 text": 2,
            "field 'r' (reconsume times) is not a decimal integer": 2,
            "field 'i' (msg id) is missing or empty": 1,
        }
        assert await pending(url, "billing") == 0
        errors.check()

    run(main())


def test_an_orderly_queue_task_that_fails_is_logged_and_started_again(url: str) -> None:
    """A bug in the orderly runtime is logged (not "Task exception was never retrieved"); it goes on."""

    async def main() -> None:
        errors = LoopErrors()
        await create_topic(url, queues=1)
        seen: list[str] = []

        async def listener(msg: ReceivedMessage) -> None:
            seen.append(msg.msg_id)

        consumer = PushConsumer(url, "billing", fast_settings(orderly_lease_ms=5000))
        consumer.subscribe("orders", "*", listener, orderly=True)
        with capture_logs() as logs:
            async with consumer:
                assert consumer._ctx.orderly is not None
                call, failures = consumer._ctx.orderly.call, [RuntimeError("a bug in the runtime")]

                async def failing_once(*args: Any) -> object:
                    if failures:
                        raise failures.pop()
                    return await call(*args)

                consumer._ctx.orderly.call = failing_once  # type: ignore[method-assign]
                ids = await send(url, [Message("orders", {"id": i}) for i in range(3)])
                await until(lambda: seen == ids, what="the messages, after the queue was started again")
        assert [e["event"] for e in logs].count("queue.task_crashed") == 1
        errors.check()

    asyncio.run(main())


# -- 9: a tag that does not decode, with a tag filter ----------------------------------------------


@pytest.mark.parametrize("orderly", [False, True], ids=["concurrent", "orderly"])
def test_a_tag_that_does_not_decode_is_dead_lettered_under_a_tag_filter(url: str, orderly: bool) -> None:
    async def main() -> None:
        errors = LoopErrors()
        await create_topic(url, queues=1)
        good = await send(url, [Message("orders", {"id": i}, tag="created") for i in range(3)])
        await xadd(url, [entry(t=b"\xffcreated"), entry(t=b"cr\xe9ated", k=b"k\xff")])
        good += await send(
            url, [Message("orders", {"id": i}, tag=t) for i, t in enumerate(["paid", "created"])]
        )
        seen: list[str] = []

        async def listener(msg: ReceivedMessage) -> None:
            seen.append(msg.msg_id)

        consumer = PushConsumer(url, "billing", fast_settings(orderly_lease_ms=5000))
        consumer.subscribe("orders", "created", listener, orderly=orderly)
        async with consumer:
            await until(lambda: consumer.stats.dead_lettered == 2, what="two dead letters")
            await until(lambda: len(seen) == 4 and consumer.in_flight == 0, what="the created messages")
        assert sorted(seen) == sorted(good[:3] + good[4:])
        assert consumer.stats.filtered == 1
        dead = await dead_letters(url, "billing", queues=1)
        assert sorted(d["reason"].split(":")[1] for d in dead) == [" field 't' (tag) is not UTF-8 text"] * 2
        assert await pending(url, "billing") == 0
        errors.check()

    run(main())


def test_a_body_nested_too_deep_is_bad_input_dead_lettered_on_first_delivery(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        await xadd(url, [entry(c=b"j", d=b"[" * 100_000)])
        calls: list[int] = []

        async def listener(msg: ReceivedMessage) -> None:
            calls.append(msg.reconsume_times)
            msg.value()

        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("orders", "*", listener)
        async with consumer:
            await until(lambda: consumer.stats.dead_lettered == 1, what="the dead letter")
        assert calls == [0]  # bad input: never retried
        (dead,) = await dead_letters(url, "billing", queues=1)
        assert dead["reason"].startswith("SerializationError: undecodable body (content type 'j')")

    run(main())


# -- 11: one size rule for producers and consumers -------------------------------------------------


def test_a_message_over_the_producers_limit_is_dead_lettered_by_consumers(url: str) -> None:
    limit = 4 * 1024 * 1024

    async def main() -> None:
        await create_topic(url, queues=1)
        with Producer(url) as producer:
            with pytest.raises(MessageTooLargeError):
                producer.send(Message("orders", b"x" * (limit + 1)))
            exact = producer.send(Message("orders", b"x" * limit)).msg_id
        await xadd(url, [entry(c=b"b", d=b"x" * (limit + 1)), entry(c=b"b", d=b"x" * limit, k=b"key")])
        seen: list[str] = []

        async def listener(msg: ReceivedMessage) -> None:
            seen.append(msg.msg_id)

        consumer = PushConsumer(url, "billing", fast_settings())  # the default limit: the producer's
        consumer.subscribe("orders", "*", listener)
        async with consumer:
            await until(lambda: consumer.stats.dead_lettered == 2 and seen == [exact], what="the verdicts")
            await until(lambda: consumer.in_flight == 0, what="every entry settled")
        reasons = sorted(d["reason"] for d in await dead_letters(url, "billing", queues=1))
        assert reasons == [
            f"message too large: the message is {n} bytes (body, properties and keys), over the limit of "
            f"{limit} bytes (max_message_size)"
            for n in (limit + 1, limit + 3)
        ]
        assert await pending(url, "billing") == 0

    run(main())
    assert App(url, max_message_size=100).push_settings("billing").max_message_size == 100
