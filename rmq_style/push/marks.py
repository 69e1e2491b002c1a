"""Idempotent consumption, the round trips: the mark calls of many listener calls sent together.

``MarkBook`` (one per consumer) holds every idempotent subscription of the consumer: the
settle loop takes their queued mark writes into its round (before the acks), and a keeper
task renews the leases of claims held longer than a third of a lease (calls queued or running)
and releases those whose call will not run (its queue went to another member).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._async._io import execute
from .._call_values import Call
from .context import TRANSIENT
from .idempotence import MarkReplyError, release_call, renew_call, shown

if TYPE_CHECKING:
    from .context import Context
    from .dedup import DedupListener

__all__ = ["Coalescer", "MarkBook"]


class Coalescer:
    """The mark calls of the calls running at once, sent in one round trip: a call's calls wait
    for the next flush (scheduled when the first arrives), so N concurrent listener calls cost
    one round trip per transition, not N (the settle loop does the same for acks)."""

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
                reply = replies[start:end]
                failed = next((r for r in reply if isinstance(r, Exception)), None)
                if failed is not None:
                    future.set_exception(failed)
                else:
                    future.set_result(reply)


class MarkBook:
    """The idempotent subscriptions of one consumer, for the settle loop and the lease keeper."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.listeners: list[DedupListener] = []
        self.admitting: set[asyncio.Task[None]] = set()  # claims of reads in flight

    def admit(self, task: asyncio.Task[None]) -> None:
        self.admitting.add(task)
        task.add_done_callback(self.admitting.discard)

    async def admitted(self) -> None:
        """Wait for the claims in flight (a stop: their messages are queued or handed back)."""
        if self.admitting:
            await asyncio.gather(*self.admitting, return_exceptions=True)

    def take(self, final: bool) -> list[Call]:
        """The mark writes for this settle round (*final*: the last one, every claim let go)."""
        calls: list[Call] = []
        for listener in self.listeners:
            calls += listener.take(final)
        return calls

    def read(self, calls: Sequence[Call], replies: Sequence[Any]) -> None:
        """A mark write that failed is logged: the listener ran (or will run again), so at worst its
        lease lapses and a later copy runs again (at least once)."""
        for reply in replies[: len(calls)]:
            if isinstance(reply, Exception):
                self.ctx.log.warning("idempotent.mark_failed", error=str(reply))

    async def keep_leases(self) -> None:
        """Renew the leases of held claims every third of a lease; release the unwanted ones."""
        c = self.ctx
        period = min(listener.lease for listener in self.listeners) / 3000
        while not c.drained.is_set():
            try:
                await asyncio.wait_for(c.drained.wait(), period)
                return
            except TimeoutError:
                pass
            calls: list[Call] = []
            asked: list[tuple[DedupListener, list[str | bytes]]] = []
            for listener in self.listeners:
                prefix = listener._prefix
                if not listener.held or prefix is None:
                    continue
                gone = [key for key, d in listener.held.items() if not c.wanted(d)]
                for key in gone:  # its call will not start: the next owner must not wait for the lease
                    del listener.held[key]
                if gone:
                    calls.append(release_call(prefix, listener.owner, gone))
                    asked.append((listener, []))
                keys = list(listener.held)
                if keys:
                    calls.append(renew_call(prefix, listener.owner, listener.lease, keys))
                    asked.append((listener, keys))
            if not calls:
                continue
            try:
                replies = await execute(c.redis(), calls)
            except TRANSIENT as exc:  # the next period tries again; a lease outlives three of them
                c.log.warning("consumer.redis_unavailable", task="idempotent_leases", error=str(exc))
                continue
            for (listener, keys), reply in zip(asked, replies, strict=True):
                if keys:
                    self.renewed(listener, keys, reply)

    def renewed(self, listener: DedupListener, keys: list[str | bytes], reply: Any) -> None:
        if isinstance(reply, str):
            reply = reply.encode()
        if isinstance(reply, Exception) or not isinstance(reply, bytes) or len(reply) != len(keys):
            self.ctx.log.warning("idempotent.renew_failed", error=str(MarkReplyError(repr(reply)[:80])))
            return
        for key, letter in zip(keys, reply, strict=True):
            if letter != ord("k") and key in listener.held:
                # another owner took it after our lease lapsed (a stall): its call may overlap ours
                self.ctx.log.warning("idempotent.lease_lost", key=shown(key))
                del listener.held[key]
