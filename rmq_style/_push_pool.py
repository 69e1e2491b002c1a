"""The handler pool of a push consumer: exactly ``concurrency`` handlers run at once.

``concurrency`` long-lived worker tasks take work from one bounded channel.
Async listeners are awaited in the worker; sync listeners run in a thread
pool of the same size. A watchdog fails a handler that runs longer than the
consume timeout (an async one is cancelled; a sync thread cannot be
interrupted, so it finishes in the background and its result is ignored).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog

from ._push_core import ConsumeTimeout

__all__ = ["HandlerPool", "Work"]

log = structlog.get_logger("rmq_style.push")


@dataclass(slots=True, eq=False)
class Work:
    """One listener call: its arguments and what to report the outcome for."""

    listener: Callable[..., Any]
    is_async: bool
    args: Sequence[Any]
    token: Any  # handed back to on_done
    timed_out: bool = field(default=False)


class HandlerPool:
    def __init__(
        self,
        concurrency: int,
        capacity: int,
        consume_timeout_s: float,
        on_done: Callable[[Work, object], None],
    ) -> None:
        self.concurrency = concurrency
        self._channel: asyncio.Queue[Work] = asyncio.Queue(maxsize=capacity)
        self._timeout = consume_timeout_s
        self._on_done = on_done
        self._executor: ThreadPoolExecutor | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._running: list[tuple[float, Work] | None] = [None] * concurrency
        self._watchdog: asyncio.Task[None] | None = None
        self._closing = False

    def __repr__(self) -> str:
        busy = sum(1 for r in self._running if r is not None)
        return f"<HandlerPool running={busy}/{self.concurrency} queued={self._channel.qsize()}>"

    @property
    def running(self) -> int:
        return sum(1 for r in self._running if r is not None)

    def start(self) -> None:
        self._workers = [asyncio.create_task(self._worker(i)) for i in range(self.concurrency)]
        self._watchdog = asyncio.create_task(self._watch())

    def submit(self, work: Work) -> None:
        """Queue a call; the caller's flow control keeps the channel from filling up."""
        self._channel.put_nowait(work)

    async def _worker(self, slot: int) -> None:
        loop = asyncio.get_running_loop()
        channel = self._channel
        while not self._closing:
            work = await channel.get()
            if self._closing:
                return  # not started: stays pending in Redis and is handed back
            self._running[slot] = (loop.time(), work)
            outcome: object
            try:
                if work.is_async:
                    outcome = await work.listener(*work.args)
                else:
                    outcome = await loop.run_in_executor(self._threads(), _call_in_context(work))
            except asyncio.CancelledError:
                if not work.timed_out:
                    raise
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                outcome = ConsumeTimeout(f"listener ran longer than consume_timeout ({self._timeout:g} s)")
            except Exception as exc:  # noqa: BLE001 - the listener's failure is the message's outcome
                outcome = exc
            finally:
                self._running[slot] = None
            self._on_done(work, outcome)

    def _threads(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="rmq-push")
        return self._executor

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        period = min(max(self._timeout / 4, 0.01), 1.0)
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for slot, running in enumerate(self._running):
                if running is not None and now - running[0] > self._timeout and not running[1].timed_out:
                    running[1].timed_out = True
                    log.warning("handler.timeout", timeout_s=self._timeout, sync=not running[1].is_async)
                    self._workers[slot].cancel()

    async def close(self, deadline_s: float) -> int:
        """Start nothing new, wait up to *deadline_s* for running handlers; return how many were cut off."""
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        for slot, worker in enumerate(self._workers):
            if self._running[slot] is None:
                worker.cancel()  # idle: waiting on the channel
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


def _call_in_context(work: Work) -> Callable[[], Any]:
    ctx = contextvars.copy_context()
    return functools.partial(ctx.run, work.listener, *work.args)
