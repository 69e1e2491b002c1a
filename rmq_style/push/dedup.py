"""Idempotent consumption, the wiring: a listener wrapped with the marks of ``push.idempotence``.

The wrapper is the subscription's listener, so concurrent, batch and orderly calls all go
through it (and through the runner's budget, watchdog and exception boundary). Per call: one
round trip claims every message of the call (``SET NX PX`` + ``GET``, pipelined; all marks of a
call are on one slot, its topic's and group's), one more writes "consumed" (or deletes the marks on failure).
A duplicate already consumed is left out of the call (a call left empty is not made: its
messages are acked); one in progress elsewhere fails the call with DuplicateInProgress, so
it is tried again later and never runs twice at once.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._async._io import execute
from .._call_values import Call, command
from .idempotence import (
    CONSUMED,
    DuplicateInProgress,
    Idempotent,
    Verdict,
    dedup_key,
    lease_ms,
    mark_key,
    succeeded,
    verdict,
)
from .outcomes import ConsumeResult
from .runner import _call_in_context

if TYPE_CHECKING:
    from .._message import ReceivedMessage
    from .context import Context

__all__ = ["DedupListener"]


class Coalescer:
    """The mark calls of the calls running at once, sent in one round trip: a call's calls wait
    for the next flush (scheduled when the first arrives), so N concurrent listener calls cost
    one round trip per transition, not N (the settle loop does the same for acks). One per
    subscription: its marks share one slot, so a Cluster takes the pipeline."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._calls: list[Call] = []
        self._waiters: list[tuple[int, int, asyncio.Future[list[Any]]]] = []
        self._flush: asyncio.Task[None] | None = None

    def run(self, calls: list[Call]) -> asyncio.Future[list[Any]]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        start = len(self._calls)
        self._calls += calls
        self._waiters.append((start, len(self._calls), future))
        if self._flush is None:
            self._flush = asyncio.ensure_future(self._send())
        return future

    async def _send(self) -> None:
        await asyncio.sleep(0)  # let the other calls ready now add theirs
        calls, waiters = self._calls, self._waiters
        self._calls, self._waiters, self._flush = [], [], None
        try:
            replies = await execute(self.ctx.redis(), calls)
        except Exception as exc:  # noqa: BLE001 - each waiting call gets the failure as its own
            for _, _, future in waiters:
                if not future.done():
                    future.set_exception(exc)
            return
        for start, end, future in waiters:
            if not future.done():
                future.set_result(replies[start:end])


class DedupListener:
    """An async listener that runs *listener* (async or sync) at most once per dedup key."""

    def __init__(self, ctx: Context, spec: Idempotent, listener: Callable[..., Any], is_async: bool) -> None:
        self.ctx = ctx
        self.spec = spec
        self.listener = listener
        self.is_async = is_async
        self._owner = b"consuming:" + os.urandom(6).hex().encode()
        self._unmarking: set[asyncio.Task[Any]] = set()  # DELs of cancelled calls, kept referenced
        self._marks = Coalescer(ctx)

    def marks(self, messages: Sequence[ReceivedMessage]) -> list[str]:
        prefix, group, spec = self.ctx.keys.prefix, self.ctx.group, self.spec
        return [mark_key(prefix, m.topic, group, dedup_key(m, spec)) for m in messages]

    async def __call__(self, *args: Any) -> object:
        c = self.ctx
        batch = isinstance(args[-1], list)
        messages: list[ReceivedMessage] = args[-1] if batch else [args[-1]]
        marks = self.marks(messages)
        lease = lease_ms(self.spec, c.settings.consume_timeout_ms)
        claims: list[Call] = []
        for mark in marks:
            claims += [command("SET", mark, self._owner, "NX", "PX", lease), command("GET", mark)]
        replies = await self._marks.run(claims)
        keep: list[int] = []  # the messages to hand to the listener
        claimed: list[str] = []  # the marks this call set
        busy = False
        seen: set[str] = set()
        for i, mark in enumerate(marks):
            if replies[2 * i]:
                keep.append(i)
                claimed.append(mark)
                seen.add(mark)
                continue
            state = Verdict.DUPLICATE if mark in seen else verdict(replies[2 * i + 1])
            if state is Verdict.DUPLICATE:  # the same key twice in one batch counts as a duplicate too
                c.stats.duplicates += 1
                c.log.info("message.duplicate_skipped", mark=mark, msg_id=messages[i].msg_id)
            elif state is Verdict.IN_PROGRESS:
                busy = True
            else:
                keep.append(i)
        if busy:  # never two calls of one key at once: let go of ours, the whole call is tried later
            if claimed:
                await self._marks.run([command("DEL", *claimed)])
            raise DuplicateInProgress(
                f"a duplicate is being consumed ({len(marks) - len(keep)} of {len(marks)})"
            )
        if not keep:
            return ConsumeResult.SUCCESS
        if len(keep) < len(marks):
            args = tuple([a[i] for i in keep] for a in args)
        try:
            if self.is_async:
                outcome: object = await self.listener(*args)
            else:
                loop = asyncio.get_running_loop()
                assert c.pool is not None
                outcome = await loop.run_in_executor(c.pool.threads(), _call_in_context(self.listener, args))
        except asyncio.CancelledError:  # a timeout or a stop: the retry must run again
            self._unmark([command("DEL", *claimed)] if claimed else [])
            raise
        except Exception:
            if claimed:
                await self._settle([command("DEL", *claimed)])
            raise
        if succeeded(outcome):
            retention = self.spec.retention_ms
            done: list[Call] = [command("SET", marks[i], CONSUMED, "PX", retention) for i in keep]
            await self._settle(done)
        elif claimed:
            await self._settle([command("DEL", *claimed)])
        return outcome

    async def _settle(self, calls: list[Call]) -> None:
        """Write the outcome's marks; a failure here is logged, not the listener's outcome (the
        mark's lease then lapses and a redelivery runs again: at least once)."""
        if not calls:
            return
        try:
            await self._marks.run(calls)
        except Exception:  # the listener ran: see above
            self.ctx.log.warning("idempotent.mark_failed", exc_info=True)

    def _unmark(self, calls: list[Call]) -> None:
        if calls:
            task = asyncio.ensure_future(self._settle(calls))
            self._unmarking.add(task)
            task.add_done_callback(self._unmarking.discard)
