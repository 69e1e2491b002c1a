"""The handler pool alone (no Redis): exact concurrency, batched hand-off, timeouts, shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

from rmq_style.push.outcomes import ConsumeTimeout
from rmq_style.push.runner import HandlerPool, Work
from tests.pushkit import until


def test_a_batch_spreads_over_exactly_concurrency_workers_when_listeners_suspend() -> None:
    async def main() -> None:
        done: list[tuple[Any, object]] = []
        pool = HandlerPool(5, 100, 60, lambda token, outcome: done.append((token, outcome)))
        pool.start()
        running, peak = 0, 0
        release = asyncio.Event()

        async def listener(i: int) -> int:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            if i % 2:
                await release.wait()  # half suspend, half complete at once
            running -= 1
            return i

        pool.submit_many([(listener, True, (i,), i) for i in range(20)])
        # 0 2 4 6 8 done, 1 3 5 7 9 suspended in all five workers, 10..19 queued
        await until(lambda: len(done) == 5 and running == 5, what="five workers suspended")
        assert peak == 5 and pool.running == 5 and sorted(token for token, _ in done) == [0, 2, 4, 6, 8]
        release.set()
        await until(lambda: len(done) == 20, what="every call done")
        assert sorted(token for token, _ in done) == list(range(20)) and peak == 5
        assert all(outcome == token for token, outcome in done)
        assert await pool.close(1) == 0

    asyncio.run(main())


def test_listeners_that_do_not_suspend_are_run_by_one_worker_in_turn() -> None:
    async def main() -> None:
        done: list[Any] = []
        pool = HandlerPool(20, 1000, 60, lambda token, outcome: done.append(token))
        pool.start()
        tasks: set[asyncio.Task[Any] | None] = set()

        async def listener(i: int) -> None:
            tasks.add(asyncio.current_task())

        pool.submit_many([(listener, True, (i,), i) for i in range(256)])
        pool.submit(Work(listener, True, (256,), 256))
        await until(lambda: len(done) == 257, what="every call done")
        assert done == list(range(257)) and len(tasks) <= 2
        await pool.close(1)

    asyncio.run(main())


def test_timeouts_failures_and_sync_listeners_report_their_outcome() -> None:
    async def main() -> None:
        outcomes: dict[str, object] = {}
        pool = HandlerPool(2, 10, 0.05, outcomes.__setitem__)
        pool.start()

        async def slow() -> None:
            await asyncio.sleep(10)

        async def fails() -> None:
            raise ValueError("bad")

        def sync() -> str:
            return "ok"

        pool.submit_many([(slow, True, (), "slow"), (fails, True, (), "fails"), (sync, False, (), "sync")])
        await until(lambda: len(outcomes) == 3, what="three outcomes")
        assert isinstance(outcomes["slow"], ConsumeTimeout)
        assert isinstance(outcomes["fails"], ValueError) and outcomes["sync"] == "ok"
        # the worker that timed out goes on working
        pool.submit_many([(fails, True, (), "again"), (sync, False, (), "sync2")])
        await until(lambda: len(outcomes) == 5, what="five outcomes")
        assert isinstance(outcomes["again"], ValueError) and outcomes["sync2"] == "ok"
        await pool.close(1)

    asyncio.run(main())


def test_close_waits_for_running_calls_and_starts_no_queued_one() -> None:
    async def main() -> None:
        done: list[Any] = []
        pool = HandlerPool(2, 10, 60, lambda token, outcome: done.append(token))
        pool.start()
        gate = asyncio.Event()

        async def listener(i: int) -> None:
            await gate.wait()

        pool.submit_many([(listener, True, (i,), i) for i in range(5)])
        await until(lambda: pool.running == 2, what="two calls running")
        closing = asyncio.ensure_future(pool.close(5))
        await until(lambda: pool._closing, what="close started")
        gate.set()
        assert await closing == 0
        assert sorted(done) == [0, 1]  # the three queued calls were never started

    asyncio.run(main())


def test_close_cuts_calls_off_at_the_deadline() -> None:
    async def main() -> None:
        done: list[Any] = []
        pool = HandlerPool(2, 10, 60, lambda token, outcome: done.append(token))
        pool.start()

        async def forever() -> None:
            await asyncio.sleep(60)

        pool.submit(Work(forever, True, (), 1))
        await until(lambda: pool.running == 1, what="the call running")
        assert await pool.close(0.05) == 1 and done == []

    asyncio.run(main())
