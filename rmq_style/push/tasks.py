"""The task tree of one PushConsumer: one asyncio.TaskGroup and one exception boundary.

Every task of a consumer is a child of one ``asyncio.TaskGroup`` entered by
the consumer's lifetime task (``PushConsumer._lifetime``): the service loops
(membership, fetch, settle, retries, lease renewal), the runner's workers and
its timeout watchdog, and one task per owned orderly queue. Leaving the group
waits for every child, so no task outlives the consumer. (asyncio.TaskGroup,
not anyio's: the runtime is asyncio-only, its clients too; what anyio would
add, ``TaskGroup.start`` readiness and cancel scopes, is a future and a few
bounded waits here.)

The one exception boundary (``guard``) decides what a crash means. A loop's
expected failures (Redis away, NOGROUP, one bad message) are handled inside
the loop; what escapes it is either:

- a Redis error (an unforeseen reply: OOM, READONLY during a failover): weather.
  ``consumer.loop_crashed`` is logged and the loop restarts after the
  reconnect backoff, however long it lasts;
- anything else: a bug. The loop restarts too, but a loop crashing
  ``loop_crash_limit`` times in a row (without a quiet member expiry between
  two crashes) fails the consumer: ``consumer.failed`` is logged, the consumer
  drains and leaves its group (its queues go to the other members at once)
  and ``stop()``/``wait()`` raise ConsumerFailedError. A half-alive consumer,
  holding queues that it no longer consumes, is worse than one that stops.

A task that cannot be restarted (an orderly queue's, whose state is its own)
fails the consumer at its first crash.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .._async._io import REDIS_ERRORS
from .._errors import BrokerRefusedError, BrokerUnavailableError, ConsumerFailedError
from .waits import Backoff

__all__ = ["Loop", "TaskTree"]

Loop = Callable[[], Awaitable[Any]]
_WEATHER = (*REDIS_ERRORS, BrokerRefusedError, BrokerUnavailableError, OSError)


class TaskTree:
    """The children of one consumer's TaskGroup, and the boundary around each of them."""

    def __init__(
        self,
        log: Any,
        backoff: Callable[[], Backoff],
        stopping: asyncio.Event,
        crash_limit: int,
        quiet_s: float,
    ) -> None:
        self.log = log
        self._backoff = backoff
        self._stopping = stopping  # the drain began: crashed loops end (the settle loop excepted)
        self.crash_limit = crash_limit
        self.quiet_s = quiet_s  # a loop that ran this long since its last crash counts anew
        self.failure: ConsumerFailedError | None = None
        self.stop_requested = asyncio.Event()  # by stop(), or by a failure: the drain begins
        self._group: asyncio.TaskGroup | None = None
        self._tasks: dict[asyncio.Task[None], str] = {}

    def __repr__(self) -> str:
        return f"<TaskTree running={len(self._tasks)} failed={self.failure is not None}>"

    def open(self, group: asyncio.TaskGroup) -> None:
        self._group = group

    def running(self) -> list[str]:
        """The names of the children running now."""
        return sorted(self._tasks.values())

    def spawn(self, name: str, loop: Loop, *, restart: bool = True) -> asyncio.Task[None]:
        """Run *loop* as a child of the group, inside the exception boundary."""
        assert self._group is not None, "the consumer's task group is not open"
        task = self._group.create_task(self.guard(name, loop, restart=restart), name=name)
        self._tasks[task] = name
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    def cancel_all(self) -> None:
        """Cancel the children left (the end of a drain, or a start that failed)."""
        for task in list(self._tasks):
            task.cancel()

    async def guard(self, name: str, loop: Loop, *, restart: bool = True) -> None:
        """Run *loop* until it returns; a crash is logged, then restarted or the consumer fails."""
        backoff = self._backoff()
        crashes = bugs = 0  # in a row: every crash, and those that were not Redis weather
        since = time.monotonic()
        while True:
            try:
                await loop()
                return
            except Exception as exc:
                now = time.monotonic()
                weather = isinstance(exc, _WEATHER)
                if now - since >= self.quiet_s:
                    crashes = bugs = 0
                    backoff.reset()
                crashes, bugs, since = crashes + 1, bugs + (not weather), now
                self.log.exception("consumer.loop_crashed", loop=name, crashes=crashes, weather=weather)
                if not restart:
                    self.fail(name, exc, "crashed")
                    return
                if bugs > self.crash_limit:
                    self.fail(name, exc, f"crashed {bugs} times in a row")
                    return
                await backoff.wait(self._stopping)
                if self._stopping.is_set() and name != "settle":
                    return  # draining: only the settle loop is still needed

    def fail(self, name: str, exc: BaseException, how: str) -> None:
        """The consumer cannot go on: the first failure is kept and the drain begins."""
        if self.failure is not None:
            return
        self.failure = ConsumerFailedError(
            f"the consumer's {name} task {how}: {exc!r} (logged as consumer.loop_crashed)"
        )
        self.failure.__cause__ = exc
        self.log.error("consumer.failed", loop=name, error=repr(exc))
        self.stop_requested.set()
