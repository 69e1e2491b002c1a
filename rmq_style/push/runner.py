"""The listener runner of a push consumer: exactly ``concurrency`` listener calls run at once.

One runner for every kind of listener call: concurrent ones (single or batch)
are queued here and run by its workers; an orderly queue task runs its call
through ``run`` in its own task. Both use the one thread pool for sync
listeners, the one timeout watchdog and the one exception boundary (what a
listener raises is its outcome, never the runner's failure).

With orderly subscriptions too, the limit is a Budget of ``concurrency``
slots (``shared()``) that the workers and the orderly queue tasks take a slot
of around each listener call (sync ones in the same thread pool): one budget,
whatever the mix of listener kinds.

``concurrency`` long-lived worker tasks take calls from one shared deque
(``submit_many`` queues a fetched batch at once). One idle worker is woken
at a time: a worker that takes a call wakes the next one if calls are left,
so a batch of listeners that complete without suspending costs one or two
task switches, and listeners that do suspend still spread over the workers. Async listeners are awaited in
the worker; sync listeners run in a thread pool of the same size. A watchdog
fails a handler that runs longer than the consume timeout (an async one is
cancelled; a sync thread cannot be interrupted, so it finishes in the
background and its result is ignored).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from time import perf_counter
from typing import Any, cast

import structlog

from .._telemetry import ConsumerHooks
from .handler_times import BUCKETS_S, HandlerTimes
from .outcomes import ConsumeTimeout

__all__ = ["Budget", "Call", "HandlerPool", "Spawn", "Work"]

log = structlog.get_logger("rmq_style.push")

# starts a named task running a loop, as a child of a task group (tasks.TaskTree.spawn)
Spawn = Callable[[str, Callable[[], Awaitable[Any]]], "asyncio.Task[None]"]

# One listener call as queued: (listener, is_async, args, token); the token is handed back to on_done.
Call = tuple[Callable[..., Any], bool, Sequence[Any], Any]


@dataclass(slots=True, eq=False)
class Work:
    """One listener call: its arguments and what to report the outcome for."""

    listener: Callable[..., Any]
    is_async: bool
    args: Sequence[Any]
    token: Any  # handed back to on_done


class Budget:
    """Slots for listener calls. A freed slot goes straight to the longest waiter (first come, first
    served), so ``free > 0`` means nobody waits and taking a slot is one decrement."""

    __slots__ = ("free", "waiters")

    def __init__(self, slots: int) -> None:
        self.free = slots
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def take(self) -> None:
        if self.free > 0:
            self.free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a slot just as we were cancelled: pass it on
            raise

    def give(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1

    async def __aenter__(self) -> None:
        await self.take()

    async def __aexit__(self, *exc: object) -> None:
        self.give()


@dataclass(slots=True, eq=False)
class _Running:
    """A call run by ``HandlerPool.run`` in its caller's task."""

    started: float  # perf_counter
    sync: bool
    log: Any
    timed_out: bool = False


class HandlerPool:
    def __init__(
        self,
        concurrency: int,
        capacity: int,
        consume_timeout_s: float,
        on_done: Callable[[Any, object], None],
        times: HandlerTimes | None = None,
        wanted: Callable[[Any], bool] | None = None,
        dropped: Callable[[Any], None] | None = None,
        observer: ConsumerHooks | None = None,
    ) -> None:
        """*on_done(token, outcome)*: outcome is None, the listener's return value, or its exception.

        With *times*, each call's duration is counted there. With *wanted*, a queued call is
        started only if ``wanted(token)``; else ``dropped(token)`` is told instead. With
        *observer* (telemetry), each call is reported: ``begin(token)`` in the task that makes
        the call, before it, and ``end(begun, outcome)`` after it.
        """
        self.concurrency = concurrency
        self.budget: Budget | None = None  # shared(): a budget with the orderly queue tasks
        self.capacity = capacity  # the caller's flow control keeps the queue under this
        self._pending: deque[Call] = deque()
        self._idle: list[asyncio.Future[None]] = []  # one per worker waiting for calls
        self._waking = 0  # workers woken that have not looked at the deque yet
        self._timeout = consume_timeout_s
        self._on_done = on_done
        self._times = times
        self._wanted = wanted
        self._dropped = dropped
        self._observer = observer
        self._executor: ThreadPoolExecutor | None = None
        self._workers: list[asyncio.Task[None]] = []
        # per worker slot: the call running (None: idle), and whether the watchdog cut it
        self._current: list[Call | None] = [None] * concurrency
        self._timed_out: list[bool] = [False] * concurrency
        self._watchdog: asyncio.Task[None] | None = None
        self._closing = False
        self._inline: dict[asyncio.Task[Any], _Running] = {}  # calls run by run(), by their task

    def __repr__(self) -> str:
        return f"<HandlerPool running={self.running}/{self.concurrency} queued={len(self._pending)}>"

    @property
    def running(self) -> int:
        return sum(1 for c in self._current if c is not None)

    def start(self, spawn: Spawn | None = None) -> None:
        """Start the workers and the watchdog: children of the caller's task group with *spawn*
        (a PushConsumer's ``TaskTree.spawn``), else plain tasks that ``close()`` ends."""
        if spawn is None:
            self._workers = [asyncio.create_task(self._worker(i)) for i in range(self.concurrency)]
            self._watchdog = asyncio.create_task(self._watch())
            return
        self._workers = [
            spawn(f"worker-{i}", functools.partial(self._worker, i)) for i in range(self.concurrency)
        ]
        self._watchdog = spawn("watchdog", self._watch)

    def submit(self, work: Work) -> None:
        """Queue a call."""
        self._pending.append((work.listener, work.is_async, work.args, work.token))
        self._wake_one()

    def submit_many(self, calls: Sequence[Call]) -> None:
        """Queue calls (a fetched batch)."""
        self._pending.extend(calls)
        self._wake_one()

    def _wake_one(self) -> None:
        """Wake an idle worker, unless one is already on its way (it wakes the next one in turn)."""
        if self._waking:
            return
        idle = self._idle
        while idle:
            waiter = idle.pop()
            if not waiter.done():  # done: its worker was cancelled
                waiter.set_result(None)
                self._waking += 1
                return

    async def _worker(self, slot: int) -> None:
        loop = asyncio.get_running_loop()
        clock = perf_counter
        pending, idle, budget = self._pending, self._idle, self.budget
        current, timed_out = self._current, self._timed_out
        on_done, wanted, observer = self._on_done, self._wanted, self._observer
        times = self._times
        # the first bucket, where nearly every call of a quick listener falls: counted inline
        quick, counts = (BUCKETS_S[0], times.counts) if times is not None else (0.0, [])
        while not self._closing:
            if not pending:
                waiter = loop.create_future()
                idle.append(waiter)
                try:
                    await waiter
                finally:
                    if waiter.done() and not waiter.cancelled():
                        self._waking -= 1
                continue
            if budget is not None:  # shared with orderly calls: take a slot
                if budget.free > 0:
                    budget.free -= 1
                else:
                    await budget.take()
                    if not pending:  # another worker took the calls meanwhile
                        budget.give()
                        continue
            call = pending.popleft()
            if pending and idle and not self._waking:
                self._wake_one()  # the rest of the calls may need another worker
            listener, is_async, args, token = call
            if wanted is not None and not wanted(token):
                if budget is not None:
                    budget.give()
                self._drop(token)
                continue
            timed_out[slot] = False
            current[slot] = call
            outcome: object
            started = clock() if times is not None else 0.0
            begun = observer.begin(token) if observer is not None else None
            try:
                if is_async:
                    outcome = await listener(*args)
                else:
                    outcome = await loop.run_in_executor(self._threads(), _call_in_context(listener, args))
            except asyncio.CancelledError as exc:
                if not timed_out[slot]:
                    if observer is not None:
                        observer.end(begun, exc)
                    raise
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                outcome = ConsumeTimeout(f"listener ran longer than consume_timeout ({self._timeout:g} s)")
            except Exception as exc:  # noqa: BLE001 - the listener's failure is the message's outcome
                outcome = exc
            finally:
                current[slot] = None
                if budget is not None:
                    if budget.waiters:
                        budget.give()
                    else:
                        budget.free += 1
            if times is not None:
                took = clock() - started
                if took <= quick:
                    counts[0] += 1
                    times.sum_s += took
                else:
                    times.observe(took)
            if observer is not None:
                observer.end(begun, outcome)
            try:
                on_done(token, outcome)
            except Exception:  # a bookkeeping bug must not take this worker's slot away
                log.exception("handler.outcome_failed")

    def _drop(self, token: Any) -> None:
        try:
            if self._dropped is not None:
                self._dropped(token)
        except Exception:  # a bookkeeping bug must not take this worker's slot away
            log.exception("handler.drop_failed")

    async def run(
        self,
        listener: Callable[..., Any],
        is_async: bool,
        args: Sequence[Any],
        bound: Any = None,
        token: Any = None,
    ) -> object:
        """Run one listener call in the calling task (an orderly queue's); its outcome: the return
        value, the exception raised, or ConsumeTimeout. The caller holds a slot of the budget.

        *bound*: the logger the watchdog tells of a timeout (the queue's). *token*: what the
        observer is told the call is about (the messages).
        """
        task = asyncio.current_task()
        assert task is not None
        started = perf_counter()
        running = self._inline[task] = _Running(started, not is_async, bound or log)
        observer = self._observer
        begun = observer.begin(token) if observer is not None else None
        outcome: object = None
        try:
            if is_async:
                outcome = cast(object, await listener(*args))
            else:
                loop = asyncio.get_running_loop()
                outcome = await loop.run_in_executor(self._threads(), _call_in_context(listener, args))
            return outcome
        except asyncio.CancelledError as exc:
            if not running.timed_out or task.uncancel() > 0:
                outcome = exc
                raise  # a stop, not (only) the watchdog
            outcome = ConsumeTimeout(f"listener ran longer than consume_timeout ({self._timeout:g} s)")
            return outcome
        except Exception as exc:  # noqa: BLE001 - the listener's failure is the message's outcome
            outcome = exc
            return exc
        finally:
            del self._inline[task]
            if self._times is not None:
                self._times.observe(perf_counter() - started)
            if observer is not None:
                observer.end(begun, outcome)

    def shared(self) -> Budget:
        """The budget of this pool's ``concurrency`` slots, to share with other callers (before start).

        Without it the workers alone are the limit, and take no slot at all (the hot path).
        """
        assert not self._workers, "share the budget before start()"
        if self.budget is None:
            self.budget = Budget(self.concurrency)
        return self.budget

    def threads(self) -> ThreadPoolExecutor:
        """The thread pool of sync listeners (the orderly ones run there too)."""
        return self._threads()

    def _threads(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="rmq-push")
        return self._executor

    async def _watch(self) -> None:
        """Cut calls running longer than the timeout.

        Workers do not read the clock per call: a call is timed from the first look
        of the watchdog that finds it running, so it is cut between timeout and
        timeout + 2 periods (a period is half of what one clock reading per call would need).
        """
        loop = asyncio.get_running_loop()
        period = min(max(self._timeout / 8, 0.005), 0.5)
        seen: list[tuple[Call | None, float]] = [(None, 0.0)] * self.concurrency
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for slot, call in enumerate(self._current):
                if call is None:
                    seen[slot] = (None, 0.0)
                elif seen[slot][0] is not call:
                    seen[slot] = (call, now)  # it started after the last look: never cut early
                elif now - seen[slot][1] > self._timeout and not self._timed_out[slot]:
                    self._timed_out[slot] = True
                    log.warning("handler.timeout", timeout_s=self._timeout, sync=not call[1])
                    self._workers[slot].cancel()
            clock = perf_counter()  # calls run in their caller's task: timed from their start
            for task, running in list(self._inline.items()):
                if not running.timed_out and clock - running.started > self._timeout:
                    running.timed_out = True
                    running.log.warning("handler.timeout", timeout_s=self._timeout, sync=running.sync)
                    task.cancel()

    async def close(self, deadline_s: float) -> int:
        """Start nothing new, wait up to *deadline_s* for running handlers; return how many were cut off."""
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        for slot, worker in enumerate(self._workers):
            if self._current[slot] is None:
                worker.cancel()  # idle: waiting for calls
        busy = [w for w in self._workers if not w.done()]
        cut = 0
        if busy:
            _, pending = await asyncio.wait(busy, timeout=deadline_s)
            cut = len(pending)
            for task in pending:
                task.cancel()
        await asyncio.gather(
            *self._workers, *([self._watchdog] if self._watchdog else []), return_exceptions=True
        )
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        return cut


def _call_in_context(listener: Callable[..., Any], args: Sequence[Any]) -> Callable[[], Any]:
    ctx = contextvars.copy_context()
    return functools.partial(ctx.run, listener, *args)
