"""The background check loop of a transactional producer: an asyncio task, or a thread for the sync front.

The fronts are generated (rmq_style/_sync from rmq_style/_async), but a
background loop is not the same code in both: ``AsyncCheckRunner`` and
``CheckRunner`` have one interface and the generator's ``Async`` prefix rule
picks the right one. ``invoke`` calls a user function (execute, check):
awaited when it is a coroutine function in the asyncio front, called directly
in the sync one.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from ._wait_event import wait_event

__all__ = ["AsyncCheckRunner", "CheckRunner"]

log = structlog.get_logger("rmq_style.transaction")


class AsyncCheckRunner:
    """Runs ``tick`` every *interval_s* in an asyncio task until stopped; a failed tick is logged."""

    def __init__(self, tick: Callable[[], Awaitable[Any]], interval_s: float, name: str) -> None:
        self._tick, self._interval, self._name = tick, interval_s, name
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=self._name)

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                await self._tick()
            except Exception as exc:  # noqa: BLE001 - Redis away, a bug: logged, the next tick tries again
                log.warning("transaction.check_loop_failed", runner=self._name, error=repr(exc))
            await wait_event(self._stop, self._interval)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    @staticmethod
    async def invoke(func: Callable[..., Any], *args: Any) -> Any:
        """The local transaction: called in the caller's task (awaited if it is async)."""
        result = func(*args)
        if inspect.isawaitable(result):
            result = await result
        return result

    @staticmethod
    async def check(func: Callable[..., Any], *args: Any) -> Any:
        """A checker: awaited if async, else run in a worker thread so the event loop (a worker's
        consumers) keeps going (RocketMQ runs checks on its own executor too)."""
        if inspect.iscoroutinefunction(func):
            return await func(*args)
        result = await asyncio.to_thread(func, *args)
        if inspect.isawaitable(result):
            result = await result
        return result


class CheckRunner:
    """The same in a daemon thread (the sync producer's client is thread-safe)."""

    def __init__(self, tick: Callable[[], Any], interval_s: float, name: str) -> None:
        self._tick, self._interval, self._name = tick, interval_s, name
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as exc:  # noqa: BLE001 - as in AsyncCheckRunner
                log.warning("transaction.check_loop_failed", runner=self._name, error=repr(exc))
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    @staticmethod
    def invoke(func: Callable[..., Any], *args: Any) -> Any:
        return func(*args)

    @staticmethod
    def check(func: Callable[..., Any], *args: Any) -> Any:
        return func(*args)  # already off the caller's thread when the loop runs it
