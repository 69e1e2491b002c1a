"""Idempotent consumption, the wiring: a listener wrapped with the marks of ``push.idempotence``.

Concurrent subscriptions (single or batch calls): the fetcher hands each read to ``admit``,
which claims the marks of the whole read in ONE round trip (``SET ... NX PX ... GET`` per mark
on the lane, ``push.mark_lane``; idem_claim.lua for the rest and on other clients: all marks of
a subscription share a slot) and queues only the claimed messages; duplicates are acked, those
in progress elsewhere retried. The outcome of a call is queued (``MarkBook``) and written by
the settle loop in the same round trip as the acks, just before them (idem_done.lua /
idem_release.lua). A listener call waits for no Redis round trip of its own.

Orderly calls (and a read whose claim failed) go through ``__call__``: claim, call, write,
per call (the marks of the calls running at once share one round trip per transition).
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable, Sequence
from functools import partial
from itertools import repeat
from typing import TYPE_CHECKING, Any, cast

from .._call_values import Call
from .context import TRANSIENT
from .idempotence import (
    DuplicateInProgress,
    Idempotent,
    Verdict,
    claim_call,
    dedup_key,
    done_call,
    key_getter,
    lease_ms,
    mark_prefix,
    raw_msg_id,
    release_call,
    shown,
    succeeded,
    verdicts,
)
from .mark_lane import claim
from .marks import Coalescer, MarkBook
from .outcomes import ConsumeResult
from .runner import _call_in_context

if TYPE_CHECKING:
    from .._message import ReceivedMessage
    from .context import Context
    from .fetch import Fetcher
    from .state import Delivery, Subscription

__all__ = ["DedupListener"]


class DedupListener:
    """An async listener that runs *listener* (async or sync) at most once per dedup key."""

    def __init__(self, ctx: Context, spec: Idempotent, listener: Callable[..., Any], is_async: bool) -> None:
        self.ctx = ctx
        self.spec = spec
        self.listener = listener
        self.is_async = is_async
        self.owner = b"consuming:" + os.urandom(6).hex().encode()
        self._unmarking: set[asyncio.Task[Any]] = set()  # releases of cancelled calls, kept referenced
        self._marks = Coalescer(ctx)
        self._prefix: str | None = None
        self.key_of = key_getter(spec)
        # the default key, the msg id, taken from the fields as read (no field map, no decode)
        self.by_msg_id = spec.key == "msg_id"
        # claims of admitted messages whose outcome is not queued yet: key -> its delivery
        self.held: dict[str | bytes, Delivery] = {}
        self.done: list[str | bytes] = []  # keys to write "consumed" in the next settle round
        self.release: list[str | bytes] = []  # keys to release in the next settle round
        if ctx.marks is None:
            ctx.marks = MarkBook(ctx)
        ctx.marks.listeners.append(self)

    @property
    def lease(self) -> int:
        return lease_ms(self.spec, self.ctx.settings.consume_timeout_ms)

    def prefix(self, topic: str) -> str:
        """The marks' prefix (a subscription has one topic, so one slot)."""
        if self._prefix is None:
            self._prefix = mark_prefix(self.ctx.keys.prefix, topic, self.ctx.group)
        return self._prefix

    # -- concurrent subscriptions: a read claimed at once, outcomes written with the acks ---------

    async def admit(self, sub: Subscription, deliveries: list[Delivery], fetcher: Fetcher) -> None:
        """Claim the marks of *deliveries* (one read) and hand the claimed ones to the pool."""
        c = self.ctx
        settling = fetcher.settling
        key_of = self.key_of
        good = deliveries
        keys: list[str | bytes]
        try:
            if self.by_msg_id:
                keys = [
                    r[1] if type(r) is list and r[0] == b"i" else raw_msg_id(r)
                    for r in [d.raw for d in deliveries]
                ]
            else:
                keys = [key_of(cast("ReceivedMessage", d.message)) for d in deliveries]
        except Exception:  # noqa: BLE001 - a key function that fails on a message: found below
            keys, good = [], []
            for d in deliveries:
                try:
                    keys.append(key_of(cast("ReceivedMessage", d.message)))
                    good.append(d)
                except Exception as exc:  # noqa: BLE001 - that message's outcome (retried, dead-lettered)
                    settling.fail(d, exc)
            if not good:
                return
        try:
            # plain SETs on the lane where the client packs calls, else idem_claim.lua
            claimed = await claim(c.redis(), self.prefix(sub.topic), self.owner, self.lease, keys)
            every = claimed is None  # the common case, all claimed
            found = claimed or []
        except TRANSIENT as exc:  # Redis away: left pending, read again (no reconsume time spent)
            c.log.warning("consumer.redis_unavailable", task="idempotent_claim", error=str(exc))
            c.drop(good)
            return
        except Exception as exc:  # noqa: BLE001 - an unexpected reply: each call claims its own marks
            c.log.warning("idempotent.claim_failed", error=str(exc), messages=len(good))
            for start in range(0, len(good), c.settings.consume_message_batch_max_size):
                fetcher.submit(sub, good[start : start + c.settings.consume_message_batch_max_size])
            return
        if every:
            self.held.update(zip(keys, good, strict=True))
            self.hand_on(sub, good, keys, fetcher)
            return
        run: list[Delivery] = []
        run_keys: list[str | bytes] = []
        held = self.held
        for d, key, verdict in zip(good, keys, found, strict=True):
            if verdict is Verdict.RUN or verdict is Verdict.REPLACED:
                if verdict is Verdict.REPLACED:
                    c.log.warning("idempotent.junk_mark_replaced", key=shown(key), offset=d.entry_id.decode())
                held[key] = d
                run.append(d)
                run_keys.append(key)
            elif verdict is Verdict.DUPLICATE:
                self.duplicate(d, key)
                settling.succeed(d)
            else:
                settling.fail(d, DuplicateInProgress(f"a duplicate of {key!r} is being consumed"))
        self.hand_on(sub, run, run_keys, fetcher)

    def hand_on(
        self, sub: Subscription, run: list[Delivery], keys: list[str | bytes], fetcher: Fetcher
    ) -> None:
        """Queue the calls of the claimed deliveries *run* (their dedup *keys*, in order)."""
        c = self.ctx
        size = c.settings.consume_message_batch_max_size
        if size == 1 and sub.model is None:  # the hot path: one call per message, queued at once
            pool = c.pool
            assert pool is not None
            call_one = self.call_one_async if self.is_async else self.call_one
            pool.submit_many(
                [(call_one, True, (d.message, key), d) for d, key in zip(run, keys, strict=True)]
            )
            return
        if sub.model is None:  # every delivery of a chunk is called: its keys are the chunk's
            for start in range(0, len(run), size):
                fetcher.submit(sub, run[start : start + size], self.calling(keys[start : start + size]))
            return
        claimed = dict(zip(run, keys, strict=True))
        for start in range(0, len(run), size):
            chunk = run[start : start + size]
            fetcher.submit(sub, chunk, lambda good: partial(self.call_claimed, [claimed[d] for d in good]))
            for d in chunk:
                if d.decision is not None:  # its body did not decode: dead-lettered, never called
                    self.finish([claimed[d]], False)

    def calling(self, keys: list[str | bytes]) -> Callable[[list[Delivery]], Callable[..., Any]]:
        """``Fetcher.submit``'s *claimed* for a chunk whose deliveries are all called."""
        call = partial(self.call_claimed, keys)
        return lambda _good: call

    async def call_one_async(self, msg: ReceivedMessage, key: str | bytes) -> object:
        """``call_claimed`` of one message for an async listener (the hot path: no list, no partial)."""
        try:
            outcome = await self.listener(msg)
        except BaseException:  # a raise, a timeout or a stop: the retry must run again
            self.finish((key,), False)
            raise
        self.held.pop(key, None)
        if outcome is None or succeeded(outcome):
            self.done.append(key)
        else:
            self.release.append(key)
        return outcome

    async def call_one(self, msg: ReceivedMessage, key: str | bytes) -> object:
        """``call_claimed`` of one message for a sync listener."""
        try:
            outcome = await self.call((msg,))
        except BaseException:  # a raise, a timeout or a stop: the retry must run again
            self.finish((key,), False)
            raise
        self.held.pop(key, None)
        if outcome is None or succeeded(outcome):
            self.done.append(key)
        else:
            self.release.append(key)
        return outcome

    async def call_claimed(self, keys: Sequence[str | bytes], *args: Any) -> object:
        """Run the listener for messages whose marks are claimed; queue the outcome's marks."""
        try:
            outcome = await self.call(args)
        except BaseException:  # a raise, a timeout or a stop: the retry must run again
            self.finish(keys, False)
            raise
        self.finish(keys, succeeded(outcome))
        return outcome

    def finish(self, keys: Sequence[str | bytes], ok: bool) -> None:
        """Queue the marks' outcome for the settle round that carries the acks of the same call."""
        deque(map(self.held.pop, keys, repeat(None)), 0)  # held.pop(key, None) of each, in one C loop
        (self.done if ok else self.release).extend(keys)
        self.ctx.settle_wakeup.set()

    def duplicate(self, d: Delivery, key: str | bytes) -> None:
        self.ctx.stats.duplicates += 1
        self.ctx.log.info("message.duplicate_skipped", key=shown(key), offset=d.entry_id.decode())

    def take(self, final: bool) -> list[Call]:
        """The mark writes queued since the last settle round (*final*: and every claim still
        held, whose call will never run)."""
        if final and self.held:
            self.release.extend(self.held)
            self.held.clear()
        if not (self.done or self.release) or self._prefix is None:
            return []
        calls: list[Call] = []
        if self.done:
            calls.append(done_call(self._prefix, self.spec.retention_ms, self.done))
        if self.release:
            calls.append(release_call(self._prefix, self.owner, self.release))
        self.done, self.release = [], []
        return calls

    # -- per call: orderly calls, and reads whose claim failed ------------------------------------

    async def call(self, args: Sequence[Any]) -> object:
        if self.is_async:
            return await self.listener(*args)
        loop = asyncio.get_running_loop()
        assert self.ctx.pool is not None
        return await loop.run_in_executor(self.ctx.pool.threads(), _call_in_context(self.listener, args))

    async def __call__(self, *args: Any) -> object:
        batch = isinstance(args[-1], list)
        messages: list[ReceivedMessage] = args[-1] if batch else [args[-1]]
        keys = [dedup_key(m, self.spec) for m in messages]
        prefix = self.prefix(messages[0].topic)
        unique = list(dict.fromkeys(keys))  # the same key twice in one call counts as a duplicate
        (reply,) = await self._marks.run([claim_call(prefix, self.owner, self.lease, unique)])
        by_key = dict(zip(unique, verdicts(reply, len(unique)), strict=True))
        keep: list[int] = []  # the messages to hand to the listener
        claimed: list[str] = []  # the marks this call set
        busy = False
        for i, key in enumerate(keys):
            verdict = by_key.pop(key, Verdict.DUPLICATE)
            if verdict is Verdict.RUN or verdict is Verdict.REPLACED:
                keep.append(i)
                claimed.append(key)
            elif verdict is Verdict.DUPLICATE:
                self.ctx.stats.duplicates += 1
                self.ctx.log.info("message.duplicate_skipped", key=key, msg_id=messages[i].msg_id)
            else:
                busy = True
        if busy:  # never two calls of one key at once: let go of ours, the whole call is tried later
            if claimed:
                await self._marks.run([release_call(prefix, self.owner, claimed)])
            raise DuplicateInProgress(
                f"a duplicate is being consumed ({len(keys) - len(keep)} of {len(keys)})"
            )
        if not keep:
            return ConsumeResult.SUCCESS
        if len(keep) < len(keys):
            args = tuple([a[i] for i in keep] for a in args)
        try:
            outcome = await self.call(args)
        except asyncio.CancelledError:  # a timeout or a stop: the retry must run again
            self._unmark([release_call(prefix, self.owner, claimed)])
            raise
        except Exception:
            await self._settle([release_call(prefix, self.owner, claimed)])
            raise
        if succeeded(outcome):
            await self._settle([done_call(prefix, self.spec.retention_ms, claimed)])
        else:
            await self._settle([release_call(prefix, self.owner, claimed)])
        return outcome

    async def _settle(self, calls: list[Call]) -> None:
        """Write the outcome's marks; a failure here is logged, not the listener's outcome (the
        mark's lease then lapses and a redelivery runs again: at least once)."""
        try:
            await self._marks.run(calls)
        except Exception:  # the listener ran: see above
            self.ctx.log.warning("idempotent.mark_failed", exc_info=True)

    def _unmark(self, calls: list[Call]) -> None:
        task = asyncio.ensure_future(self._settle(calls))
        self._unmarking.add(task)
        task.add_done_callback(self._unmarking.discard)
