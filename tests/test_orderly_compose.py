"""Features composed: orderly and concurrent listeners in one group or one consumer, replays of
an orderly group's dead letters. Each runs on a private redis-server and on fakeredis."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from structlog.testing import capture_logs

from rmq_style import AsyncProducer, Message, PushConsumer, ReceivedMessage, SubscriptionConflictError
from rmq_style._push_pool import Budget
from tests.pushkit import create_topic, fast_settings, send, until


def run(coro: Any) -> None:
    with capture_logs():
        asyncio.run(coro)


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
