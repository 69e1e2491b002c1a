"""Key-ordered push consumption (order="key"), in-process on a private redis-server and on fakeredis.

Within a queue: the messages of one ordering key one at a time in queue order,
different keys in parallel (one budget); a failure holds its key only, retried
locally, then dead-lettered; the group's pending entries are what is not finished.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from typing import Any

import pytest

from rmq_style import (
    App,
    AsyncProducer,
    ConfigurationError,
    Keys,
    Message,
    PushConsumer,
    ReceivedMessage,
    SubscriptionConflictError,
    UsageError,
)
from rmq_style._async._io import open_client
from rmq_style._message import MessageQueue
from rmq_style.push.key_window import KeyWindow, ordering_key
from rmq_style.testing import RedisServer
from tests.pushkit import create_topic, dead_letters, fast_settings, until
from tests.test_orderly import check_order, sync

QUEUES = 8


def key_settings(**overrides: Any) -> Any:
    base: dict[str, Any] = {"orderly_lease_ms": 1000, "suspend_current_queue_time_ms": 30}
    base.update(overrides)
    return fast_settings(**base)


async def send_keyed(url: str, keys: int, per_key: int, *, extra: dict[str, Any] | None = None) -> list[str]:
    """*per_key* messages of each of *keys* keys, interleaved; the key is the sharding and business key."""
    ids: list[str] = []
    async with AsyncProducer(url) as producer:
        for seq in range(per_key):
            batch = [
                Message("orders", {"key": f"k{k}", "seq": seq, **(extra or {})}, keys=[f"k{k}"])
                for k in range(keys)
            ]
            for i in range(0, len(batch), 500):
                results = await producer.send_batch(batch[i : i + 500], sharding_key=lambda m: m.keys[0])
                ids += [r.msg_id for r in results]
    return ids


async def pending_total(url: str, queues: int) -> int:
    client = open_client(url)
    total = 0
    for q in range(queues):
        total += (await client.xpending(Keys().queue("orders", q).stream, "billing"))["pending"]
    await client.aclose()
    return total


@sync
async def test_keys_run_in_parallel_each_key_in_queue_order(url: str) -> None:
    await create_topic(url, queues=QUEUES)
    keys, per_key = 500, 40  # 20,000 messages (fakeredis: about 3 s on a quiet machine)
    await send_keyed(url, keys, per_key)
    rng = random.Random(7)
    handled: list[tuple[str, int]] = []
    running_keys: set[str] = set()
    per_queue: dict[int, int] = defaultdict(int)
    overlap_key = overlap_queue = 0

    async def listener(msg: ReceivedMessage) -> None:
        nonlocal overlap_key, overlap_queue
        body = msg.value()
        key = body["key"]
        overlap_key = max(overlap_key, 2 if key in running_keys else 1)
        running_keys.add(key)
        per_queue[msg.queue_id] += 1
        overlap_queue = max(overlap_queue, per_queue[msg.queue_id])
        if rng.random() < 0.02:
            await asyncio.sleep(0.0005 * rng.random())
        else:
            await asyncio.sleep(0)
        handled.append((key, body["seq"]))
        per_queue[msg.queue_id] -= 1
        running_keys.discard(key)

    consumer = PushConsumer(url, "billing", key_settings(concurrency=64))
    consumer.subscribe("orders", "*", listener, order="key")
    async with consumer:
        await until(lambda: len(handled) >= keys * per_key, 60, "every message")
        assert consumer.queues == [MessageQueue("orders", q) for q in range(QUEUES)]
    assert overlap_key == 1  # never two messages of one key at once
    assert overlap_queue > 1  # keys of one queue did run in parallel
    check_order(handled)
    assert len(set(handled)) == keys * per_key
    assert consumer.stats.consumed == keys * per_key and consumer.stats.fenced == 0
    assert await pending_total(url, QUEUES) == 0  # every entry acknowledged
    client = open_client(url)
    for q in range(QUEUES):
        assert await client.get(Keys().queue("orders", q).lock("billing")) is None
    assert await client.hget(Keys().subscription_kinds("billing"), "orders") == b"key"
    await client.aclose()


@sync
async def test_a_poison_message_holds_its_key_only(url: str) -> None:
    await create_topic(url, queues=1)  # one queue: every key shares it
    ids = await send_keyed(url, keys=5, per_key=4)
    poison = ids[2]  # k2's first message
    attempts: list[int] = []
    handled: list[tuple[str, int]] = []
    first_done: dict[str, float] = {}
    loop = asyncio.get_running_loop()

    async def listener(msg: ReceivedMessage) -> None:
        body = msg.value()
        if msg.msg_id == poison:
            attempts.append(msg.reconsume_times)
            raise RuntimeError("poison")
        handled.append((body["key"], body["seq"]))
        first_done.setdefault(body["key"], loop.time())

    consumer = PushConsumer(url, "billing", key_settings(concurrency=8, max_reconsume_times=2))
    consumer.subscribe("orders", "*", listener, order="key")
    async with consumer:
        await until(lambda: len(handled) >= 19, what="the other 19 messages")
    assert attempts == [0, 1, 2]  # max_reconsume_times + 1 attempts, counted, then the DLQ
    check_order(handled)
    k2 = [seq for key, seq in handled if key == "k2"]
    assert k2 == [1, 2, 3]  # k2 went on after its first message was dead-lettered
    # the other keys did not wait for k2's retries (3 attempts, 2 suspends of 30 ms)
    assert max(first_done[k] for k in ("k0", "k1", "k3", "k4")) < first_done["k2"]
    (dead,) = await dead_letters(url, "billing", queues=1)
    assert dead["i"] == poison and "poison" in dead["reason"]
    assert consumer.stats.dead_lettered == 1 and consumer.stats.suspended == 2
    assert await pending_total(url, 1) == 0
    client = open_client(url)
    assert await client.exists(Keys().queue("orders", 0).key_held("billing")) == 0
    await client.aclose()


@sync
async def test_a_new_owner_goes_on_where_the_previous_one_stopped(url: str) -> None:
    """Entries left pending (read, not finished) are claimed first, in offset order; a recorded
    attempt count goes on; a hostile count starts again."""
    await create_topic(url, queues=1)
    ids = await send_keyed(url, keys=3, per_key=3)
    qk = Keys().queue("orders", 0)
    client = open_client(url)
    await client.xgroup_create(qk.stream, "billing", "0")
    # 5 entries in hand at a member that is gone
    entries = await client.xreadgroup("billing", "gone", {qk.stream: ">"}, count=5)
    first = entries[0][1][0][0]
    await client.hset(qk.key_held("billing"), mapping={first: b"2", entries[0][1][1][0]: b"x!"})
    seen: list[tuple[str, int, int]] = []

    async def listener(msg: ReceivedMessage) -> None:
        body = msg.value()
        seen.append((body["key"], body["seq"], msg.reconsume_times))

    consumer = PushConsumer(url, "billing", key_settings())
    consumer.subscribe("orders", "*", listener, order="key")
    async with consumer:
        await until(lambda: len(seen) >= len(ids), what="every message")
    check_order([(k, s) for k, s, _ in seen])
    assert ("k0", 0, 2) in seen and ("k1", 0, 0) in seen
    assert await pending_total(url, 1) == 0
    assert await client.exists(qk.key_held("billing")) == 0
    await client.aclose()


@sync
async def test_key_members_and_orderly_members_of_one_group_conflict(url: str) -> None:
    await create_topic(url, queues=2)

    async def listener(msg: ReceivedMessage) -> None:
        return None

    first = PushConsumer(url, "billing", key_settings())
    first.subscribe("orders", "*", listener, order="key")
    async with first:
        other = PushConsumer(url, "billing", key_settings())
        other.subscribe("orders", "*", listener, orderly=True)
        with pytest.raises(SubscriptionConflictError):
            await other.start()


def test_order_options_are_checked() -> None:
    consumer = PushConsumer("memory://key-order-options", "billing")
    with pytest.raises(UsageError):
        consumer.subscribe("orders", "*", print, order="other")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        consumer.subscribe("orders", "*", print, order_key=lambda m: m.msg_id)
    batch = PushConsumer("memory://key-order-options", "billing", consume_message_batch_max_size=4)
    with pytest.raises(UsageError):
        batch.subscribe("orders", "*", print, order="key")
    app = App("memory://key-order-app")
    with pytest.raises(ConfigurationError):
        app.subscribe("orders", group="billing", order="key", batch=4)


def test_window_is_fair_and_bounded() -> None:
    w: KeyWindow[int] = KeyWindow(cap=6)
    for n, key in enumerate("aaabbc"):
        w.add(key, n)
    assert w.room == 0
    order = []
    while (taken := w.take()) is not None:
        order.append(taken)
        w.done(taken[0])
    assert order == [("a", 0), ("b", 3), ("c", 5), ("a", 1), ("b", 4), ("a", 2)]
    assert w.size == 0 and w.room == 6 and not w.shards


@sync
async def test_a_held_key_fills_the_window_then_the_queue_waits(url: str) -> None:
    """Back pressure per queue: at most pull_threshold_for_queue entries in hand, whatever the backlog."""
    await create_topic(url, queues=1)
    async with AsyncProducer(url) as producer:
        # k0 (failing until released) and k1..k3, interleaved: 120 messages
        batch = [
            Message("orders", {"key": f"k{n % 4}", "seq": n // 4}, keys=[f"k{n % 4}"]) for n in range(120)
        ]
        await producer.send_batch(batch, queue_id=0)
    release = asyncio.Event()
    handled: list[tuple[str, int]] = []
    in_hand: list[int] = []
    consumer = PushConsumer(
        url, "billing", key_settings(pull_threshold_for_queue=20, pull_batch_size=8, max_reconsume_times=-1)
    )

    async def listener(msg: ReceivedMessage) -> None:
        q = consumer._ctx.orderly.queues[MessageQueue("orders", 0)]  # type: ignore[union-attr]
        in_hand.append(q.window.size)  # type: ignore[attr-defined]
        body = msg.value()
        if body["key"] == "k0" and not release.is_set():
            raise RuntimeError("held")
        handled.append((body["key"], body["seq"]))

    consumer.subscribe("orders", "*", listener, order="key")
    async with consumer:
        # the window fills with k0's messages behind its held head; the other keys stop with it
        await until(lambda: consumer.stats.suspended >= 5, what="k0 held")
        stalled = len(handled)
        await asyncio.sleep(0.05)  # nothing more comes while k0 holds a full window
        assert len(handled) == stalled < 20
        release.set()
        await until(lambda: len(handled) >= 120, what="every message once k0 is released")
    assert max(in_hand) <= 20
    check_order(handled)
    assert [s for k, s in handled if k == "k0"] == list(range(30))


def test_app_handlers_subscribe_with_order_key() -> None:
    app = App("memory://key-order-app-subscribe")

    @app.subscribe("orders", group="billing", order="key", order_key=lambda m: m.msg_id[:2])
    async def on_order(msg: ReceivedMessage) -> None:
        return None

    @app.subscribe("payments", group="billing", order="key")
    async def on_payment(msg: ReceivedMessage) -> None:
        return None

    @app.subscribe("refunds", group="billing", order="queue")
    async def on_refund(msg: ReceivedMessage) -> None:
        return None

    consumer = app.consumer("billing")
    subs = consumer._ctx.subs
    assert subs["orders"].key_order is not None and subs["orders"].key_order is not ordering_key
    assert subs["payments"].key_order is ordering_key
    assert subs["refunds"].key_order is None
    assert consumer._ctx.orderly_topics == {"orders", "payments", "refunds"}


@sync
async def test_stop_cuts_listeners_running_past_the_shutdown_deadline(url: str) -> None:
    await create_topic(url, queues=1)
    await send_keyed(url, keys=3, per_key=1)
    started, cancelled = asyncio.Event(), []

    async def listener(msg: ReceivedMessage) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(msg.msg_id)
            raise

    consumer = PushConsumer(url, "billing", key_settings(shutdown_timeout_ms=200))
    consumer.subscribe("orders", "*", listener, order="key")
    await consumer.start()
    await asyncio.wait_for(started.wait(), 5)
    await until(lambda: consumer._ctx.orderly.queues[MessageQueue("orders", 0)]._busy == 3)  # type: ignore[union-attr, attr-defined]
    await asyncio.wait_for(consumer.stop(), 5)
    assert len(cancelled) == 3  # cut, not left running
    assert await pending_total(url, 1) == 3  # not acknowledged: the next owner runs them


@sync
async def test_a_kheld_key_of_the_wrong_type_changes_nothing_but_the_count(url: str) -> None:
    await create_topic(url, queues=1)
    ids = await send_keyed(url, keys=2, per_key=2)
    client = open_client(url)
    await client.set(Keys().queue("orders", 0).key_held("billing"), "not a hash")
    attempts: list[int] = []
    handled: list[str] = []

    async def listener(msg: ReceivedMessage) -> None:
        if msg.msg_id == ids[0] and not attempts:
            attempts.append(msg.reconsume_times)
            raise RuntimeError("once")
        handled.append(msg.msg_id)

    consumer = PushConsumer(url, "billing", key_settings())
    consumer.subscribe("orders", "*", listener, order="key")
    async with consumer:
        await until(lambda: len(handled) >= 4, what="every message")
    assert sorted(handled) == sorted(ids) and consumer.stats.suspended == 1
    assert await pending_total(url, 1) == 0
    await client.aclose()


@sync
async def test_key_order_and_concurrent_listeners_share_one_budget(url: str) -> None:
    """Key-ordered workers keep their slot only while nobody else waits: a concurrent topic of the
    same consumer is served while a key-ordered backlog runs, and never more than concurrency at once."""
    await create_topic(url, queues=2)
    await create_topic(url, "payments", queues=2)
    await send_keyed(url, keys=40, per_key=10)  # 400 key-ordered messages
    async with AsyncProducer(url) as producer:
        await producer.send_batch([Message("payments", {"n": n}) for n in range(20)])
    running = peak = 0
    done: dict[str, list[float]] = {"orders": [], "payments": []}
    loop = asyncio.get_running_loop()

    async def listener(msg: ReceivedMessage) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.002)
        running -= 1
        done[msg.topic].append(loop.time())

    consumer = PushConsumer(url, "billing", key_settings(concurrency=4))
    consumer.subscribe("orders", "*", listener, order="key")
    consumer.subscribe("payments", "*", listener)
    async with consumer:
        await until(lambda: len(done["orders"]) >= 400 and len(done["payments"]) >= 20, what="both topics")
    assert peak <= 4
    assert max(done["payments"]) < max(done["orders"])  # not starved until the key-ordered backlog ended


@sync
async def test_sync_listeners_run_in_the_thread_pool_in_key_order(url: str) -> None:
    import threading

    await create_topic(url, queues=2)
    await send_keyed(url, keys=6, per_key=5)
    handled: list[tuple[str, int]] = []
    threads: set[int] = set()
    lock = threading.Lock()

    def listener(msg: ReceivedMessage) -> None:
        body = msg.value()
        with lock:
            threads.add(threading.get_ident())
            handled.append((body["key"], body["seq"]))

    consumer = PushConsumer(url, "billing", key_settings(concurrency=4))
    consumer.subscribe("orders", "*", listener, order="key")
    async with consumer:
        await until(lambda: len(handled) >= 30, what="every message")
    check_order(handled)
    assert threading.get_ident() not in threads  # not on the event loop's thread
    assert await pending_total(url, 2) == 0


@sync
async def test_a_listener_past_the_consume_timeout_holds_its_key_and_is_tried_again(url: str) -> None:
    await create_topic(url, queues=1)
    ids = await send_keyed(url, keys=3, per_key=2)
    attempts: list[int] = []
    handled: list[tuple[str, int]] = []

    async def listener(msg: ReceivedMessage) -> None:
        if msg.msg_id == ids[0]:
            attempts.append(msg.reconsume_times)
            if msg.reconsume_times == 0:
                await asyncio.Event().wait()  # hangs: the watchdog cuts it
        body = msg.value()
        handled.append((body["key"], body["seq"]))

    consumer = PushConsumer(url, "billing", key_settings(consume_timeout_ms=200))
    consumer.subscribe("orders", "*", listener, order="key")
    async with consumer:
        await until(lambda: len(handled) >= 6, what="every message")
    assert attempts == [0, 1]
    check_order(handled)
    assert handled.index(("k1", 1)) < handled.index(("k0", 0))  # k1 did not wait for k0's timeout
    assert consumer.stats.suspended == 1


@pytest.mark.real_only
def test_redis_restarting_mid_flow_loses_nothing_and_keeps_key_order(private_redis: RedisServer) -> None:
    url = private_redis.url

    async def main() -> None:
        await create_topic(url, queues=2)
        await send_keyed(url, keys=20, per_key=10)
        handled: list[tuple[str, int]] = []
        restarted = asyncio.Event()

        async def listener(msg: ReceivedMessage) -> None:
            if len(handled) >= 50:
                await restarted.wait()  # the calls running while Redis is away finish after it
            body = msg.value()
            handled.append((body["key"], body["seq"]))

        consumer = PushConsumer(url, "billing", key_settings(concurrency=8, orderly_lease_ms=3000))
        consumer.subscribe("orders", "*", listener, order="key")
        async with consumer:
            await until(lambda: len(handled) >= 50 and consumer.queues, what="a first part")
            await asyncio.to_thread(private_redis.restart)  # AOF: messages and group survive
            restarted.set()
            await until(lambda: len(set(handled)) >= 200, 30, "every message after the restart")
        check_order(handled)
        assert await pending_total(url, 2) == 0

    asyncio.run(main())
