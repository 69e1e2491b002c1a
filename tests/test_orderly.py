"""Orderly push consumption, in-process on a private redis-server and on fakeredis.

Per queue: one message at a time, in offset order, by the holder of the queue's
lease; a failure holds the queue and retries the same message locally; after
max_reconsume_times it goes to the DLQ and the queue moves on.
"""

from __future__ import annotations

import asyncio
import functools
from collections import defaultdict
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from structlog.testing import capture_logs

from rmq_style import ConsumeResult, Keys, Message, PushConsumer, ReceivedMessage
from rmq_style._async._io import drive, execute, open_client
from rmq_style._group_admin import held_flow
from rmq_style._message import MessageQueue
from rmq_style.push.orderly_leases import (
    acquire_call,
    read_call,
    release_call,
    renew_call,
    settle_call,
)
from rmq_style.push.outcomes import decide_orderly
from tests.pushkit import create_topic, dead_letters, fast_settings, until

QUEUES = 4


def sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in its own event loop, with capture of structlog's output off."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return wrapper


def orderly_settings(**overrides: Any) -> Any:
    base: dict[str, Any] = {"orderly_lease_ms": 1000, "suspend_current_queue_time_ms": 30}
    base.update(overrides)
    return fast_settings(**base)


async def send_keyed(url: str, keys: int, per_key: int, topic: str = "orders", start: int = 0) -> list[str]:
    from rmq_style import AsyncProducer

    ids = []
    async with AsyncProducer(url) as producer:
        for seq in range(start, start + per_key):
            batch = [Message(topic, {"key": f"k{k}", "seq": seq}) for k in range(keys)]
            results = await producer.send_batch(batch, sharding_key=lambda m: m.body["key"])
            ids += [r.msg_id for r in results]
    return ids


def check_order(handled: list[tuple[str, int]]) -> None:
    """Per key, the handled seq numbers without re-deliveries (first occurrence kept) never go down."""
    per_key: dict[str, list[int]] = defaultdict(list)
    seen: set[tuple[str, int]] = set()
    for key, seq in handled:
        if (key, seq) in seen:
            continue
        seen.add((key, seq))
        per_key[key].append(seq)
    for key, seqs in per_key.items():
        assert seqs == sorted(seqs), f"order inversion for {key}: {seqs}"


def test_decisions_count_attempts() -> None:
    assert type(decide_orderly(RuntimeError("x"), 0, 0)).__name__ == "DeadLetterIt"
    assert decide_orderly(ConsumeResult.RECONSUME_LATER, 0, 1).attempts == 1  # type: ignore[union-attr]
    assert type(decide_orderly(ConsumeResult.SUCCESS, 5, 0)).__name__ == "Proceed"


@sync
async def test_one_queue_at_a_time_in_offset_order(url: str) -> None:
    await create_topic(url, queues=QUEUES)
    await send_keyed(url, keys=12, per_key=25)
    handled: list[tuple[str, int]] = []
    running: dict[int, int] = defaultdict(int)
    overlap = 0

    async def listener(msg: ReceivedMessage) -> None:
        nonlocal overlap
        running[msg.queue_id] += 1
        overlap = max(overlap, running[msg.queue_id])
        await asyncio.sleep(0)
        body = msg.value()
        handled.append((body["key"], body["seq"]))
        running[msg.queue_id] -= 1

    consumer = PushConsumer(url, "billing", orderly_settings(concurrency=8))
    consumer.subscribe("orders", "*", listener, orderly=True)
    async with consumer:
        await until(lambda: len(handled) >= 300, what="300 messages")
        assert consumer.queues == [MessageQueue("orders", q) for q in range(QUEUES)]
    assert overlap == 1
    check_order(handled)
    assert len(set(handled)) == 300
    assert consumer.stats.consumed == 300 and consumer.stats.fenced == 0
    client = open_client(url)
    for q in range(QUEUES):  # everything acknowledged, every lock released
        qk = Keys().queue("orders", q)
        assert (await client.xpending(qk.stream, "billing"))["pending"] == 0
        assert await client.get(qk.lock("billing")) is None
    await client.aclose()


@sync
async def test_a_failing_message_holds_its_queue_and_is_retried_locally(url: str) -> None:
    await create_topic(url, queues=2)
    from rmq_style import AsyncProducer

    async with AsyncProducer(url) as producer:
        for n in range(5):
            await producer.send(Message("orders", {"n": n}), queue_id=0)
    seen: list[tuple[int, int]] = []
    held_seen: list[Any] = []
    client = open_client(url)

    async def listener(msg: ReceivedMessage) -> Any:
        n = msg.value()["n"]
        seen.append((n, msg.reconsume_times))
        if n == 2 and msg.reconsume_times < 3:
            if msg.reconsume_times == 2:
                held_seen.append(await drive(client, held_flow(Keys(), "billing", MessageQueue("orders", 0))))
            if msg.reconsume_times == 0:
                raise RuntimeError("not yet")
            return ConsumeResult.SUSPEND_CURRENT_QUEUE_A_MOMENT
        return None

    consumer = PushConsumer(url, "billing", orderly_settings())
    consumer.subscribe("orders", "*", listener, orderly=True)
    async with consumer:
        await until(lambda: len(seen) == 8, what="8 calls")
        await until(lambda: consumer.stats.consumed == 5, what="all consumed")
        held_after = await drive(client, held_flow(Keys(), "billing", MessageQueue("orders", 0)))
    assert seen == [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2), (2, 3), (3, 0), (4, 0)]
    (held,) = held_seen
    assert held is not None and held.attempts == 2 and held.offset
    assert held.reason.startswith("SUSPEND_CURRENT_QUEUE_A_MOMENT")
    assert held.owner == consumer.member and held.lock_owner == consumer.member
    assert held_after is None
    assert consumer.stats.suspended == 3
    await client.aclose()


@sync
async def test_a_poison_message_goes_to_the_dlq_after_max_plus_one_attempts(url: str) -> None:
    await create_topic(url, queues=2)
    from rmq_style import AsyncProducer

    async with AsyncProducer(url) as producer:
        poison = await producer.send(Message("orders", {"n": "poison"}), queue_id=0)
        for n in range(3):
            await producer.send(Message("orders", {"n": n}), queue_id=0)
        for n in range(20):
            await producer.send(Message("orders", {"n": 100 + n}), queue_id=1)
    attempts = 0
    order: list[Any] = []
    other_done_while_held = asyncio.Event()

    async def listener(msg: ReceivedMessage) -> None:
        nonlocal attempts
        n = msg.value()["n"]
        if n == "poison":
            attempts += 1
            if sum(1 for x in order if isinstance(x, int) and x >= 100) == 20:
                other_done_while_held.set()
            raise ValueError("cannot handle")
        order.append(n)

    consumer = PushConsumer(url, "billing", orderly_settings(max_reconsume_times=3))
    consumer.subscribe("orders", "*", listener, orderly=True)
    async with consumer:
        await until(lambda: 2 in order, what="queue 0 moving on")
    assert attempts == 4
    assert [x for x in order if isinstance(x, int) and x < 100] == [0, 1, 2]
    assert [x for x in order if isinstance(x, int) and x >= 100] == list(range(100, 120))
    (dead,) = await dead_letters(url, "billing", queues=2)
    assert dead["i"] == poison.msg_id and "ValueError: cannot handle" in dead["reason"]
    assert "after 4 attempts" in dead["reason"] and dead["r"] == "3"
    assert consumer.stats.dead_lettered == 1


@sync
async def test_batches_of_consecutive_messages_with_a_model(url: str) -> None:
    from pydantic import BaseModel

    class Body(BaseModel):
        key: str
        seq: int

    await create_topic(url, queues=2)
    await send_keyed(url, keys=4, per_key=10)
    calls: list[int] = []
    handled: list[tuple[str, int]] = []

    async def listener(bodies: list[Body], msgs: list[ReceivedMessage]) -> None:
        calls.append(len(bodies))
        assert len({m.queue_id for m in msgs}) == 1
        handled.extend((b.key, b.seq) for b in bodies)

    consumer = PushConsumer(url, "billing", orderly_settings(consume_message_batch_max_size=4))
    consumer.subscribe("orders", "*", listener, model=Body, orderly=True)
    async with consumer:
        await until(lambda: len(handled) == 40, what="40 handled")
    assert max(calls) == 4 and len(calls) < 40
    check_order(handled)


@sync
async def test_tag_filter_acks_without_a_call(url: str) -> None:
    await create_topic(url, queues=1)
    from rmq_style import AsyncProducer

    async with AsyncProducer(url) as producer:
        for n in range(6):
            await producer.send(Message("orders", {"n": n}, tag="a" if n % 2 else "b"))
    got: list[int] = []

    async def listener(msg: ReceivedMessage) -> None:
        got.append(msg.value()["n"])

    consumer = PushConsumer(url, "billing", orderly_settings())
    consumer.subscribe("orders", "a", listener, orderly=True)
    async with consumer:
        await until(lambda: consumer.stats.filtered == 3 and len(got) == 3, what="all settled")
    assert got == [1, 3, 5]


@sync
async def test_writes_of_a_caller_without_the_lease_are_fenced(url: str) -> None:
    await create_topic(url, queues=1)
    await send_keyed(url, keys=1, per_key=3)
    client = open_client(url)
    qk = Keys().queue("orders", 0)
    await client.xgroup_create(qk.stream, "billing", "0")
    ok = await execute(client, [acquire_call(qk, "billing", "a/1", 1000)])
    assert ok == [True]
    again = await execute(client, [acquire_call(qk, "billing", "b/1", 1000)])
    assert again == [None]
    (reply,) = await execute(client, [read_call(qk, "billing", "a", "a/1", 2, [])])
    first_id = reply[1][0][0]
    (refused,) = await execute(client, [settle_call(qk, "billing", "b/1", [first_id])])
    assert str(refused).startswith("FENCED")
    (refused_read,) = await execute(client, [read_call(qk, "billing", "b", "b/1", 2, [])])
    assert str(refused_read).startswith("FENCED")
    assert (await client.xpending(qk.stream, "billing"))["pending"] == 2
    assert await execute(client, [renew_call(qk, "billing", "b/1", 1000)]) == [0]
    assert await execute(client, [renew_call(qk, "billing", "a/1", 1000)]) == [1]
    assert await execute(client, [release_call(qk, "billing", "b/1")]) == [0]
    assert await execute(client, [release_call(qk, "billing", "a/1")]) == [1]
    # a new owner takes the lock and first gets the pending entries, claimed to itself, in order
    assert await execute(client, [acquire_call(qk, "billing", "b/2", 1000)]) == [True]
    (taken,) = await execute(client, [read_call(qk, "billing", "b", "b/2", 10, [])])
    assert taken[0] == b"pending" and [e[0] for e in taken[1]] == [e[0] for e in reply[1]]
    await client.aclose()


@sync
async def test_a_new_owner_rehandles_the_previous_owners_pending_entries_first(url: str) -> None:
    await create_topic(url, queues=1)
    await send_keyed(url, keys=1, per_key=10)
    client = open_client(url)
    qk = Keys().queue("orders", 0)
    await client.xgroup_create(qk.stream, "billing", "0")
    # a previous owner took 4 entries, acked none, and died holding the lease (1 s left)
    await execute(client, [acquire_call(qk, "billing", "gone@1/1", 300)])
    await execute(client, [read_call(qk, "billing", "gone@1", "gone@1/1", 4, [])])
    handled: list[tuple[str, int]] = []

    async def listener(msg: ReceivedMessage) -> None:
        handled.append((msg.value()["key"], msg.value()["seq"]))

    consumer = PushConsumer(url, "billing", orderly_settings())
    consumer.subscribe("orders", "*", listener, orderly=True)
    with capture_logs() as events:
        async with consumer:
            await until(lambda: len(handled) == 10, what="10 handled")
    assert [s for _, s in handled] == list(range(10))
    assert any(e["event"] == "queue.locked" and e["waited"] for e in events)
    await client.aclose()


@sync
async def test_two_consumers_share_queues_and_hand_over_on_stop(url: str) -> None:
    await create_topic(url, queues=QUEUES)
    await send_keyed(url, keys=16, per_key=10)
    handled: list[tuple[str, int]] = []
    first_batch = asyncio.Event()

    async def slow(msg: ReceivedMessage) -> None:
        await asyncio.sleep(0.002)
        body = msg.value()
        handled.append((body["key"], body["seq"]))
        if len(handled) >= 40:
            first_batch.set()

    a = PushConsumer(url, "billing", orderly_settings())
    b = PushConsumer(url, "billing", orderly_settings())
    a.subscribe("orders", "*", slow, orderly=True)
    b.subscribe("orders", "*", slow, orderly=True)
    await a.start()
    await b.start()
    await until(lambda: len(a.queues) == 2 and len(b.queues) == 2, what="2 queues each")
    assert set(a.queues).isdisjoint(b.queues)
    await asyncio.wait_for(first_batch.wait(), 10)
    await a.stop()
    await until(lambda: len(b.queues) == QUEUES, what="b owns every queue")
    await send_keyed(url, keys=16, per_key=2, start=10)
    await until(lambda: len(set(handled)) == 16 * 12, timeout=20, what="every message")
    await b.stop()
    check_order(handled)
    assert a.stats.fenced == 0 and b.stats.fenced == 0


@sync
async def test_mixed_orderly_and_concurrent_topics(url: str) -> None:
    await create_topic(url, "orders", queues=2)
    await create_topic(url, "events", queues=2)
    await send_keyed(url, keys=4, per_key=5)
    from rmq_style import AsyncProducer

    async with AsyncProducer(url) as producer:
        await producer.send_batch([Message("events", {"n": n}) for n in range(10)])
    got: dict[str, int] = defaultdict(int)

    async def listener(msg: ReceivedMessage) -> None:
        got[msg.topic] += 1

    consumer = PushConsumer(url, "billing", orderly_settings())
    consumer.subscribe("orders", "*", listener, orderly=True)
    consumer.subscribe("events", "*", listener)
    async with consumer:
        await until(lambda: got["orders"] == 20 and got["events"] == 10, what="both topics")
        assert len(consumer.queues) == 4


@pytest.mark.parametrize("forever", [True])
def test_minus_one_means_forever_for_orderly(forever: bool) -> None:
    assert type(decide_orderly(RuntimeError("x"), 10_000, -1)).__name__ == "Suspend"
    assert fast_settings(max_reconsume_times=-1).concurrent_max_reconsume_times == 16
