"""Features composed: orderly and concurrent listeners in one group or one consumer, replays of
an orderly group's dead letters. Each runs on a private redis-server and on fakeredis."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from structlog.testing import capture_logs
from typer.testing import CliRunner

from rmq_style import (
    AsyncAdmin,
    AsyncProducer,
    DeadLetter,
    Message,
    PushConsumer,
    ReceivedMessage,
    SubscriptionConflictError,
)
from rmq_style._async._io import execute, open_client
from rmq_style._names import Keys
from rmq_style.cli import app as cli_app
from rmq_style.push.orderly_leases import acquire_call, read_call
from rmq_style.push.runner import Budget
from tests.pushkit import create_topic, fast_settings, send, until


def run(coro: Any) -> None:
    with capture_logs():
        asyncio.run(coro)


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli_app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


async def until_async(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = ""
) -> None:
    """Poll an async *predicate* (bounded); fail the test if it stays false."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


# -- members that disagree on the listener kind ------------------------------------------------


@pytest.mark.parametrize("first_orderly", [True, False], ids=["orderly-first", "concurrent-first"])
def test_a_member_with_another_listener_kind_is_refused_and_the_running_one_goes_on(
    url: str, first_orderly: bool
) -> None:
    async def main() -> None:
        await create_topic(url, queues=2)
        seen: list[str] = []

        async def listener(msg: ReceivedMessage) -> None:
            seen.append(msg.msg_id)

        first = PushConsumer(url, "billing", fast_settings(orderly_lease_ms=1000))
        first.subscribe("orders", "*", listener, orderly=first_orderly)
        joiner = PushConsumer(url, "billing", fast_settings(orderly_lease_ms=1000))
        joiner.subscribe("orders", "*", listener, orderly=not first_orderly)
        kinds = ("orderly", "concurrent") if first_orderly else ("concurrent", "orderly")
        async with first:
            await until(lambda: len(first.queues) == 2, what="the first member owns both queues")
            with pytest.raises(SubscriptionConflictError) as refused:
                await joiner.start()
            assert str(refused.value) == (
                f"group 'billing' already subscribes topic 'orders' with '*' ({kinds[0]}), not '*' "
                f"({kinds[1]}): live members of one group must use the same expression and listener "
                "kind (stop all the old members first to change it, or use another group)"
            )
            # the running member is not disrupted: it still owns everything and handles what comes
            ids = await send(url, [Message("orders", {"i": i}) for i in range(6)])
            await until(lambda: len(seen) == 6, what="six messages handled by the first member")
            assert sorted(seen) == sorted(ids)
            assert len(first.queues) == 2
        # every member stopped: the group may be restarted with the other kind on purpose
        seen.clear()
        changed = PushConsumer(url, "billing", fast_settings(orderly_lease_ms=1000))
        changed.subscribe("orders", "*", listener, orderly=not first_orderly)
        async with changed:
            ids = await send(url, [Message("orders", {"i": i}) for i in range(4)])
            await until(lambda: len(seen) == 4, what="four messages handled after the change")
        assert sorted(seen) == sorted(ids)

    run(main())


# -- one budget for orderly and concurrent listeners --------------------------------------------


@pytest.mark.parametrize("handlers", ["async", "sync"])
def test_orderly_and_concurrent_subscriptions_share_one_concurrency_budget(url: str, handlers: str) -> None:
    async def main() -> None:
        n = 3
        await create_topic(url, "orders", queues=4)
        await create_topic(url, "audit", queues=2)
        # every orderly queue has work, and more concurrent work than the budget
        async with AsyncProducer(url) as producer:
            for q in range(4):
                for i in range(2):
                    await producer.send(Message("orders", {"q": q, "i": i}), queue_id=q)
        await send(url, [Message("audit", {"i": i}) for i in range(10)])
        lock = threading.Lock()
        running, peak, done = 0, 0, 0
        kinds: set[str] = set()
        gate = threading.Event()
        agate = asyncio.Event()

        def enter(kind: str) -> None:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
                kinds.add(kind)

        def leave() -> None:
            nonlocal running, done
            with lock:
                running -= 1
                done += 1

        def listener(kind: str) -> Any:
            if handlers == "sync":

                def sync_listener(msg: ReceivedMessage) -> None:
                    enter(kind)
                    gate.wait(10)
                    leave()

                return sync_listener

            async def async_listener(msg: ReceivedMessage) -> None:
                enter(kind)
                await agate.wait()
                leave()

            return async_listener

        consumer = PushConsumer(url, "billing", fast_settings(concurrency=n, orderly_lease_ms=2000))
        consumer.subscribe("orders", "*", listener("orderly"), orderly=True)
        consumer.subscribe("audit", "*", listener("concurrent"))
        async with consumer:
            await until(lambda: running >= n, what=f"{n} handlers running")
            # every orderly queue is owned and the concurrent messages are fetched: work is waiting
            await until(lambda: len(consumer.queues) == 6, what="all six queues owned")
            await until(lambda: consumer.in_flight == 10, what="the concurrent messages fetched")
            await asyncio.sleep(0.2)  # give a handler over the budget the chance to (wrongly) start
            assert (running, peak) == (n, n)
            gate.set()
            agate.set()
            await until(lambda: done == 18, what="every message handled")
            await until(lambda: consumer.in_flight == 0, what="acks")
        assert peak == n
        assert kinds == {"orderly", "concurrent"}

    run(main())


@pytest.mark.parametrize("handlers", ["async", "sync"])
def test_an_orderly_listener_over_the_consume_timeout_is_cut_and_tried_again(url: str, handlers: str) -> None:
    async def main() -> None:
        await create_topic(url, "orders", queues=1)
        await send(url, [Message("orders", {"i": 1})])
        attempts: list[int] = []
        stuck = threading.Event()

        def sync_listener(msg: ReceivedMessage) -> None:
            attempts.append(msg.reconsume_times)
            if len(attempts) == 1:
                stuck.wait(10)  # not interruptible: finishes in the background, result ignored

        async def async_listener(msg: ReceivedMessage) -> None:
            attempts.append(msg.reconsume_times)
            if len(attempts) == 1:
                await asyncio.Event().wait()  # cancelled by the watchdog

        consumer = PushConsumer(
            url,
            "billing",
            fast_settings(consume_timeout_ms=200, orderly_lease_ms=2000, suspend_current_queue_time_ms=10),
        )
        consumer.subscribe(
            "orders", "*", sync_listener if handlers == "sync" else async_listener, orderly=True
        )
        async with consumer:
            await until(lambda: consumer.stats.consumed == 1, what="the second attempt succeeded")
            stuck.set()
        assert attempts == [0, 1]
        assert consumer.stats.suspended == 1

    run(main())


def test_a_budget_slot_is_never_lost_by_a_waiter_cancelled_as_it_gets_it() -> None:
    async def main() -> None:
        budget = Budget(1)
        await budget.take()
        first = asyncio.create_task(budget.take())
        second = asyncio.create_task(budget.take())
        await asyncio.sleep(0)  # both wait, first in line
        assert (budget.free, len(budget.waiters)) == (0, 2)
        budget.give()  # the slot goes to the first waiter ...
        first.cancel()  # ... cancelled before it resumed: it passes the slot on
        await asyncio.gather(first, return_exceptions=True)
        await asyncio.wait_for(second, 1)
        assert (budget.free, len(budget.waiters)) == (0, 0)
        budget.give()
        assert budget.free == 1

    asyncio.run(main())


# -- replaying an orderly group's dead letters -------------------------------------------------


@pytest.mark.parametrize("via", ["admin", "cli"])
@pytest.mark.parametrize("handlers", ["async", "sync"])
def test_a_replayed_dead_letter_of_an_orderly_group_is_handled_once(
    url: str, via: str, handlers: str
) -> None:
    async def main() -> None:
        await create_topic(url, queues=2)
        async with AsyncProducer(url) as producer:
            sent = [await producer.send(Message("orders", {"i": i}), queue_id=0) for i in range(3)]
        poison = sent[1].msg_id
        handled: list[tuple[str, int]] = []
        healed = False

        def handle(msg: ReceivedMessage) -> None:
            handled.append((msg.msg_id, msg.reconsume_times))
            if msg.msg_id == poison and not healed:
                raise DeadLetter("not yet")

        async def async_listener(msg: ReceivedMessage) -> None:
            handle(msg)

        consumer = PushConsumer(url, "billing", fast_settings(orderly_lease_ms=2000))
        consumer.subscribe("orders", "*", async_listener if handlers == "async" else handle, orderly=True)
        async with AsyncAdmin(url) as admin, consumer:
            await until(lambda: consumer.stats.consumed == 2, what="the two good messages")
            (dead,) = await admin.dead_letters("billing", "orders")
            assert (dead.message.msg_id, dead.origin_offset) == (poison, sent[1].offset)
            healed = True
            before = len(handled)
            if via == "admin":
                assert await admin.replay_dead_letters("billing", [dead]) == 1
            else:
                out = await asyncio.to_thread(invoke, "dlq", "replay", "--group", "billing", "--url", url)
                assert "replayed 1 of 1" in out

            async def settled() -> bool:
                rows = await admin.progress("billing", "orders")
                return all(r.retrying == 0 and r.progress.pending == 0 and r.held is None for r in rows)

            await until_async(settled, what="the replayed message handled and acknowledged")
            assert handled[before:] == [(poison, 0)]  # once, same msg id, reconsume times 0
            assert await admin.dead_letters("billing", "orders") == []
            # the queue goes on with what comes next
            async with AsyncProducer(url) as producer:
                await producer.send(Message("orders", {"i": 3}), queue_id=0)
            await until(lambda: consumer.stats.consumed == 4, what="the next message")
        assert [m for m, _ in handled].count(poison) == 2  # dead-lettered once, then handled once
        assert consumer.stats.dead_lettered == 1

    run(main())


def test_the_retry_stream_is_read_after_the_queues_pending_entries_and_taken_over_like_them(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        async with AsyncProducer(url) as producer:
            await producer.send_batch([Message("orders", {"i": i}) for i in range(2)], queue_id=0)
        client = open_client(url)
        qk = Keys().queue("orders", 0)
        rs = qk.retry_stream("billing")
        await client.xgroup_create(qk.stream, "billing", "0")
        assert await execute(client, [acquire_call(qk, "billing", "a/1", 5000)]) == [True]
        (first,) = await execute(client, [read_call(qk, "billing", "a", "a/1", 1, [])])
        assert first[0] == b"new"
        m0 = first[1][0][0]
        (m1, fields), *_ = await client.xrange(qk.stream, f"({m0.decode()}", "+")
        replayed = await client.xadd(rs, {**fields, b"o": m1})  # as dlq_replay writes it
        # a replay never overtakes an entry of the queue still in hand (not acknowledged)
        (again,) = await execute(client, [read_call(qk, "billing", "a", "a/1", 1, [])])
        assert (again[0], [e[0] for e in again[1]]) == (b"pending", [m0])
        (retry,) = await execute(client, [read_call(qk, "billing", "a", "a/1", 1, [m0])])
        assert (retry[0], [e[0] for e in retry[1]]) == (b"retry", [replayed])
        # the owner dies while handling it: the next one claims it from the retry stream
        await client.delete(qk.lock("billing"))
        assert await execute(client, [acquire_call(qk, "billing", "b/1", 5000)]) == [True]
        (taken,) = await execute(client, [read_call(qk, "billing", "b", "b/1", 1, [])])
        assert (taken[0], [e[0] for e in taken[1]]) == (b"retry", [replayed])
        (after,) = await execute(client, [read_call(qk, "billing", "b", "b/1", 1, [replayed], retry=True)])
        assert (after[0], [e[0] for e in after[1]]) == (b"new", [m1])
        assert await client.xlen(rs) == 0  # acknowledged and deleted
        assert (await client.xpending(rs, "billing"))["pending"] == 0
        await client.aclose()

    run(main())


def test_a_replayed_message_that_fails_again_is_held_then_dead_lettered_again(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        async with AsyncProducer(url) as producer:
            sent = await producer.send(Message("orders", {"i": 0}), queue_id=0)
        attempts: list[int] = []

        async def listener(msg: ReceivedMessage) -> None:
            attempts.append(msg.reconsume_times)
            raise ValueError("still broken")

        settings = fast_settings(
            orderly_lease_ms=2000, suspend_current_queue_time_ms=10, max_reconsume_times=1
        )
        consumer = PushConsumer(url, "billing", settings)
        consumer.subscribe("orders", "*", listener, orderly=True)
        async with AsyncAdmin(url) as admin, consumer:
            await until(lambda: consumer.stats.dead_lettered == 1, what="the first dead letter")
            (dead,) = await admin.dead_letters("billing", "orders")
            assert await admin.replay_dead_letters("billing", [dead]) == 1
            await until(lambda: consumer.stats.dead_lettered == 2, what="the second dead letter")
            (again,) = await admin.dead_letters("billing", "orders")
            (row,) = await admin.progress("billing", "orders")
        assert attempts == [0, 1, 0, 1]  # held and tried again each time, counting from 0 after the replay
        assert (again.message.msg_id, again.origin_offset) == (sent.msg_id, sent.offset)
        assert again.reason.startswith("ValueError: still broken")
        assert (row.retrying, row.dead_letters, row.held, row.progress.pending) == (0, 1, None, 0)

    run(main())


def test_dead_consumers_of_an_orderly_groups_retry_stream_are_pruned(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        client = open_client(url)
        rs = Keys().queue("orders", 0).retry_stream("billing")
        await client.xgroup_create(rs, "billing", "0", mkstream=True)
        await client.xgroup_createconsumer(rs, "billing", "ghost-1")  # a member long gone, owning nothing

        async def listener(msg: ReceivedMessage) -> None:
            return None

        async def names() -> list[str]:
            return sorted(c["name"].decode() for c in await client.xinfo_consumers(rs, "billing"))

        consumer = PushConsumer(url, "billing", fast_settings(orderly_lease_ms=2000))
        consumer.subscribe("orders", "*", listener, orderly=True)
        assert await names() == ["ghost-1"]
        async with consumer:

            async def pruned() -> bool:
                return await names() == []

            await until_async(pruned, what="the ghost consumer pruned from the retry stream")
        await client.aclose()

    run(main())
