"""The turns of the key-ordered queues of one consumer: who runs the next key's head, with which slot.

Every key-ordered queue with a key that may go is in ``KeyTurns.queues``
(once); workers take the head of the next key of the next queue in turn
(queues round-robin, keys round-robin inside each queue) and run it. A
worker holds one slot of the consumer's Budget while it runs listeners and
keeps it from one head to the next, so a busy consumer costs no task and no
hand-off per message; it gives the slot back when nothing may go, when a
failure has to be written, or as soon as another listener call of the
consumer (concurrent, orderly) waits for a slot, so the budget stays first
come, first served. New work starts a worker per free slot; without a free
slot and no worker running (a running one takes the next head itself), one
task waits in the budget's queue for the key-ordered queues.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from typing import Any, Protocol

import structlog

from .runner import Budget

__all__ = ["KeyTurns"]

log = structlog.get_logger("rmq_style.orderly")


class Turning(Protocol):
    """What a worker uses of a key-ordered queue (``rmq_style.push.key_order.KeyQueue``)."""

    in_turns: bool

    def next_head(self) -> tuple[Hashable, Any] | None:
        """The head of its next key in turn, now out; None when none may go (or the queue stops)."""
        ...

    def has_ready(self) -> bool: ...

    async def run_head(self, key: Hashable, item: Any) -> bool:
        """Run a head; False when what is left to do must be done without the slot (``after``)."""
        ...

    async def after(self, key: Hashable, item: Any) -> None: ...


class KeyTurns:
    """The key-ordered queues with work, in turn, and the workers running their heads."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.queues: deque[Turning] = deque()
        self.tasks: set[asyncio.Task[None]] = set()
        self._waiter: asyncio.Task[None] | None = None
        self.active = 0  # workers holding a slot
        self._closed = False

    def __repr__(self) -> str:
        return f"<KeyTurns queues={len(self.queues)} workers={len(self.tasks)}>"

    def offer(self, q: Turning) -> None:
        """*q* has a key that may go: into the turns (once), and a worker for it if a slot is free."""
        if not q.in_turns:
            q.in_turns = True
            self.queues.append(q)
        self.staff()

    def staff(self) -> None:
        """A worker more while there is work and a free slot; else, with no worker running (they
        take the next head themselves), one task waits for a slot."""
        if self._closed or not self.queues:
            return
        budget = self.budget
        if budget.free > 0:
            budget.free -= 1
            self.active += 1
            self._start(self._work())
        elif self._waiter is None and not self.active:
            self._waiter = self._start(self._wait_for_slot())

    def _start(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _next(self) -> tuple[Turning, Hashable, Any] | None:
        """The next queue in turn and the head of its next key; queues rotate while they have work."""
        queues = self.queues
        while queues:
            q = queues[0]
            taken = q.next_head()
            if taken is None:
                queues.popleft()
                q.in_turns = False
                continue
            if q.has_ready():
                queues.rotate(-1)
            else:
                queues.popleft()
                q.in_turns = False
            return q, taken[0], taken[1]
        return None

    async def _wait_for_slot(self) -> None:
        try:
            await self.budget.take()
        finally:
            self._waiter = None
        self.active += 1
        await self._work()

    async def _work(self) -> None:
        """Run heads with one slot (held on entry) until nothing may go or someone else waits."""
        budget = self.budget
        held = True
        try:
            while not self._closed:
                turn = self._next()
                if turn is None:
                    break
                q, key, item = turn
                if self.queues and budget.free > 0:
                    self.staff()  # more work than this worker: another one on a free slot
                if await q.run_head(key, item):
                    if budget.waiters:
                        break  # another listener call waits: first come, first served
                    continue
                budget.give()  # a failure to write: not a listener call, no slot
                held = False
                self.active -= 1
                self.staff()
                await q.after(key, item)
                break
        finally:
            if held:
                self.active -= 1
                budget.give()
            if self.queues:
                self.staff()  # work is left: a worker on a free slot, or a wait in the budget's queue

    async def close(self) -> None:
        """Stop every worker (the queues are stopped first: nothing may go any more)."""
        self._closed = True
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
