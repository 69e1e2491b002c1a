"""The handler pool alone (no Redis): exact concurrency, batched hand-off, timeouts, shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

from rmq_style._push_core import ConsumeTimeout
from rmq_style._push_pool import HandlerPool, Work


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
        for _ in range(50):
            await asyncio.sleep(0)
        assert running == 5 and peak == 5 and pool.running == 5
        release.set()
        for _ in range(100):
            await asyncio.sleep(0)
        assert sorted(token for token, _ in done) == list(range(20)) and peak == 5
        assert all(outcome == token for token, outcome in done)
        assert await pool.close(1) == 0

    asyncio.run(main())


def test_listeners_that_do_not_suspend_are_run_by_one_worker_in_turn() -> None:
    async def main() -> None:
        done: list[Any] = []
        pool = HandlerPool(20, 1000, 60, lambda token, outcome: done.append(token))
        pool.start()
        await asyncio.sleep(0)
        tasks: set[asyncio.Task[Any] | None] = set()

        async def listener(i: int) -> None:
            tasks.add(asyncio.current_task())

        pool.submit_many([(listener, True, (i,), i) for i in range(256)])
        pool.submit(Work(listener, True, (256,), 256))
        for _ in range(10):
            await asyncio.sleep(0)
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
        for _ in range(100):
            if len(outcomes) == 3:
                break
            await asyncio.sleep(0.01)
        assert isinstance(outcomes["slow"], ConsumeTimeout)
        assert isinstance(outcomes["fails"], ValueError) and outcomes["sync"] == "ok"
        # the worker that timed out goes on working
        pool.submit_many([(fails, True, (), "again"), (sync, False, (), "sync2")])
        for _ in range(100):
            if len(outcomes) == 5:
                break
            await asyncio.sleep(0.01)
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
        await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(pool.close(5))
        await asyncio.sleep(0.01)
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
        await asyncio.sleep(0.01)
        assert await pool.close(0.05) == 1 and done == []

    asyncio.run(main())
