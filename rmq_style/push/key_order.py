"""Key-ordered consumption, the runtime: one owned queue whose keys run in parallel (KeyQueue).

``order="key"`` keeps the orderly listener's queue lease and fencing
(``rmq_style.push.orderly``: acquire, renew, release, every write checked) and
changes what happens inside the queue. Its task runs two loops:

- feed: ``key_read`` takes entries while the window has room (the group's
  entries pending above the cursor first: a takeover, or a reply lost on the
  way), into a ``KeyWindow`` split by ordering key; at the cap (the queue's
  ``pull_threshold_for_queue``) it reads no more: back pressure per queue;
- acknowledge: ``key_settle`` acknowledges finished entries as they finish, in
  any order, in the consumer's acknowledgement rounds (``AckRounds``).

The heads of its keys are run by the consumer's ``KeyTurns`` workers, each
holding a slot of the one concurrency budget (queues in turn, keys in turn
inside each queue): at most one entry of a key runs at a time, in queue order.

The group's pending entries list is the offset map: what is acknowledged is
finished, what is pending is in hand (queued behind its key, or running). A
new owner claims the pending entries in offset order before any new one, and
each key's pending entries come after all its finished ones, so a takeover
re-runs at most what was running (and one acknowledgement round) and never
runs a later message of a key before an earlier one.

A failure holds its key only: the head stays, out of turn, for the suspend
time (its failed attempts recorded in ``kheld`` so a new owner goes on
counting), then is tried again; after ``max_reconsume_times`` failed retries
it goes to the dead-letter queue and the key moves on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from .._call_values import Call
from .._entry_check import rejection, shown
from .._message import MessageQueue, ReceivedMessage, decode_entry
from .._replies import ReplyCode, classify
from .key_acks import AckRounds
from .key_calls import KeyRead, held_field, key_read_call, key_settle_call, parse_key_read
from .key_turns import KeyTurns
from .key_window import KeyWindow, key_of
from .orderly_leases import fenced_dead_letter_call, is_fenced
from .orderly_queue import Host, OrderlyQueue, _Lost, _with_attempts
from .outcomes import DeadLetterIt, OrderlyDecision, Proceed, Suspend, decide_orderly, describe_error
from .redis_calls import packed_record
from .runner import Budget, HandlerPool
from .state import Subscription

__all__ = ["KeyQueue"]


@dataclass(slots=True, eq=False)
class _Item:
    """An entry in hand: where it came from and how often it failed."""

    entry_id: bytes
    fields: dict[bytes, bytes]
    msg: ReceivedMessage
    retry: bool  # an entry of the group's retry stream (a replayed dead letter)
    attempts: int
    decision: OrderlyDecision | None = None  # a failure, carried out by ``after`` (without a slot)


class KeyHost(Host, Protocol):
    """What a key-ordered queue uses of its runner besides what an orderly one does."""

    budget: Budget
    pool: HandlerPool
    ack_rounds: AckRounds
    key_turns: KeyTurns


class KeyQueue(OrderlyQueue):
    """One owned key-ordered queue: the orderly lease, per-key order inside, keys in parallel."""

    def __init__(self, runner: Host, mq: MessageQueue, sub: Subscription) -> None:
        super().__init__(runner, mq, sub)
        self.host = cast(KeyHost, runner)  # the OrderlyRunner: its budget and pool are the consumer's
        self.window: KeyWindow[_Item] = KeyWindow(runner.settings.pull_threshold_for_queue)
        self.cursor = b"0-0"  # the highest queue entry id in hand or handled
        self.retry_cursor = b"0-0"  # the same for the retry stream
        self.retry_acks: list[bytes] = []  # handled entries of the retry stream (self.acks: of the queue)
        self.halt = asyncio.Event()  # lost, handed back or crashed: feed and start no more
        self.in_turns = False  # among the consumer's key-ordered queues with work (KeyTurns)
        self._room = asyncio.Event()  # the window has room again
        self._ack_wakeup = asyncio.Event()
        self._busy = 0  # heads out: running, or their failure being written
        self._idle = asyncio.Event()  # none out
        self._runners: set[asyncio.Task[Any]] = set()  # the workers running this queue's heads
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}  # held keys, until tried again

    def __repr__(self) -> str:
        return f"<KeyQueue {self.mq} locked={self.locked} lost={self.lost} {self.window!r}>"

    # -- the loops ----------------------------------------------------------------------------------

    async def _consume(self) -> None:
        loops = [asyncio.create_task(self._feed())]
        acker = asyncio.create_task(self._ack_loop())
        stops = [asyncio.create_task(self.release.wait()), asyncio.create_task(self.halt.wait())]
        try:
            done, _ = await asyncio.wait([*loops, acker, *stops], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.halt.set()
            for t in [*loops, *stops]:
                t.cancel()
            await asyncio.gather(*loops, *stops, return_exceptions=True)
            for timer in self._timers.values():
                timer.cancel()
            try:
                if self._busy:  # running listeners finish
                    self._idle.clear()
                    await self._idle.wait()
                self._ack_wakeup.set()
                await asyncio.gather(acker, return_exceptions=True)
            except asyncio.CancelledError:  # the stop deadline: cut them (what finished is acknowledged)
                runners = [*self._runners, acker]
                for t in runners:
                    t.cancel()
                await asyncio.gather(*runners, return_exceptions=True)
                raise
        for t in [*loops, acker]:
            exc = t.exception() if t in done and not t.cancelled() else None
            if exc is not None and not isinstance(exc, _Lost):
                raise exc

    async def _feed(self) -> None:
        r = self.runner
        # a read may fill every slot of the consumer at once (a batch per slot would be too many reads)
        batch = max(r.settings.pull_batch_size, r.settings.concurrency)
        while not self.halt.is_set():
            if not self.lease_valid:
                self.lost = True
                raise _Lost
            room = self.window.room
            if room < min(batch, self.window.cap) and self.window.size:
                # back pressure: the queue's window is full; read again once a batch fits
                self._room.clear()
                await self._room.wait()
                continue
            read = parse_key_read(
                await self._write(
                    key_read_call(
                        self.keys,
                        r.group,
                        r.member,
                        self.value,
                        min(room, batch),
                        self.cursor,
                        self.retry_cursor,
                    )
                )
            )
            if read.top is not None:  # claimed: go on above them, also past any trimmed meanwhile
                if read.retry:
                    self.retry_cursor = read.top
                else:
                    self.cursor = read.top
            if read.entries:
                await self._take_in(read)
            elif read.source == "new":
                await self._wait_new(read.last)

    async def _take_in(self, read: KeyRead) -> None:
        r = self.runner
        tags = self.sub.filter.tags
        key_function = self.sub.key_order
        assert key_function is not None
        for entry_id, fields in read.entries:
            problem = rejection(fields, r.settings.max_message_size)
            if problem is None:
                try:
                    msg = decode_entry(self.mq.topic, self.mq.queue_id, entry_id, fields)
                except (ValueError, TypeError) as exc:
                    problem = f"undecodable entry: {describe_error(exc)}"
            if problem is not None:  # dead-lettered on first delivery: no key waits for it
                await self._dead_letter_item(_Item(entry_id, fields, _EMPTY, read.retry, 0), problem)
                continue
            if tags is not None and msg.tag not in tags:
                r.stats.filtered += 1
                self._acked(entry_id, read.retry)
                continue
            try:
                key: Hashable = key_of(key_function, msg)
            except Exception as exc:  # noqa: BLE001 - a key function failing on this message: DLQ
                reason = f"ordering key: {describe_error(exc)}"
                await self._dead_letter_item(_Item(entry_id, fields, msg, read.retry, 0), reason)
                continue
            item = _Item(entry_id, fields, msg, read.retry, read.attempts.get(entry_id, 0))
            self.window.add(key, item)
        last = read.entries[-1][0]
        if read.source == "new":
            self.cursor = self.last_id = last  # last_id: where a lost group is re-created
        elif read.retry and read.top is None:
            self.retry_cursor = last  # new entries of the retry stream
        if self.window.ready:
            self.host.key_turns.offer(self)

    async def _ack_loop(self) -> None:
        """Acknowledge finished entries as they finish, in the consumer's acknowledgement rounds
        (one round trip for every key-ordered queue; one round in flight per queue)."""
        rounds = self.host.ack_rounds
        while True:
            if not self.acks and not self.retry_acks:
                if self.halt.is_set():
                    return
                self._ack_wakeup.clear()
                await self._ack_wakeup.wait()
                continue
            await self._settled(await rounds.flush(self))

    def take_ack_call(self) -> Call | None:
        """This queue's part of an acknowledgement round (AckRounds)."""
        if not self.acks and not self.retry_acks:
            return None
        acks, retry_acks = self.acks, self.retry_acks
        self.acks, self.retry_acks = [], []
        return key_settle_call(self.keys, self.runner.group, self.value, acks, retry_acks)

    async def _settled(self, reply: object) -> None:
        """The reply of this queue's acknowledgements: refused (FENCED) ends the ownership."""
        if is_fenced(reply):
            self.lost = True
            self.runner.stats.fenced += 1
            self.log.error("queue.fenced", error=str(reply))
            raise _Lost
        if classify(reply) is ReplyCode.NOGROUP:
            await self._recreate_group(str(reply))  # the pending entries went with the group
        elif isinstance(reply, Exception):
            raise reply

    # -- one key's head ---------------------------------------------------------------------------

    def next_head(self) -> tuple[Hashable, _Item] | None:
        """The head of this queue's next key in turn, now out (KeyTurns); None when none may go."""
        if self.halt.is_set():
            return None
        taken = self.window.take()
        if taken is not None:
            self._busy += 1
        return taken

    def has_ready(self) -> bool:
        return bool(self.window.ready) and not self.halt.is_set()

    async def run_head(self, key: Hashable, item: _Item) -> bool:
        """Run *key*'s head (the worker holds a budget slot); False: a failure for ``after``."""
        task = asyncio.current_task()
        assert task is not None
        self._runners.add(task)
        try:
            self._check()  # the wait for a slot may have outlived the lease, or the queue must go
            outcome = await self._call(_with_attempts(item.msg, item.fields, item.attempts))
            decision = decide_orderly(outcome, item.attempts, self.runner.settings.max_reconsume_times)
            if isinstance(decision, Proceed):
                self.runner.stats.consumed += 1
                self._acked(item.entry_id, item.retry)
                self._finished(key)
            else:
                item.decision = decision
                return False  # still busy: after() writes it
        except _Lost:
            self.halt.set()
        except Exception:  # logged; the queue is handed back and taken again at the next rebalance
            self.log.exception("queue.task_crashed", offset=item.entry_id.decode())
            self.halt.set()
        self._runners.discard(task)
        self._done_one()
        return True

    async def after(self, key: Hashable, item: _Item) -> None:
        """Carry out a failure of *key*'s head: dead letter, or hold the key and try again later."""
        r = self.runner
        s = r.settings
        decision = item.decision
        try:
            r.stats.failed += 1
            if isinstance(decision, DeadLetterIt):
                self._log_failure(item, item.attempts, decision.reason, "dead_letter")
                await self._dead_letter_item(item, decision.reason)
                self._finished(key)
                return
            assert isinstance(decision, Suspend)
            item.attempts = decision.attempts
            r.stats.suspended += 1
            self._log_failure(item, decision.attempts - 1, decision.reason, "suspend")
            self.window.hold(key)
            await self._write(
                key_settle_call(
                    self.keys,
                    r.group,
                    self.value,
                    [],
                    [],
                    held=held_field(item.entry_id, item.retry),
                    attempts=decision.attempts,
                )
            )
            loop = asyncio.get_running_loop()
            self._timers[key] = loop.call_later(s.suspend_current_queue_time_ms / 1000, self._resume, key)
        except _Lost:
            self.halt.set()
        except Exception:  # logged; the queue is handed back and taken again at the next rebalance
            self.log.exception("queue.task_crashed", offset=item.entry_id.decode())
            self.halt.set()
        finally:
            self._runners.discard(cast("asyncio.Task[Any]", asyncio.current_task()))
            self._done_one()

    def _done_one(self) -> None:
        self._busy -= 1
        if not self._busy:
            self._idle.set()

    async def _call(self, msg: ReceivedMessage) -> object:
        """The listener's outcome for *msg*: through the runner's thread pool, watchdog and boundary."""
        sub = self.sub
        try:
            args = [msg.decode(sub.model), msg] if sub.model is not None else [msg]
        except Exception as exc:  # noqa: BLE001 - bad input: the decision sends it to the DLQ
            return exc
        return await self.host.pool.run(sub.listener, sub.is_async, args, self.log)

    def _resume(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.window.resume(key)
        if not self.halt.is_set():
            self.host.key_turns.offer(self)

    def _finished(self, key: Hashable) -> None:
        self.window.done(key)
        self._room.set()
        if not self.in_turns and self.window.ready and not self.halt.is_set():
            self.host.key_turns.offer(self)

    def _acked(self, entry_id: bytes, retry: bool) -> None:
        (self.retry_acks if retry else self.acks).append(entry_id)
        self._ack_wakeup.set()

    def _log_failure(self, item: _Item, reconsume_times: int, reason: str, next_step: str) -> None:
        self.log.warning(
            "message.failed",
            msg_id=item.msg.msg_id,
            offset=item.entry_id.decode(),
            reconsume_times=reconsume_times,
            reason=reason,
            next=next_step,
        )

    async def _dead_letter_item(self, item: _Item, reason: str) -> None:
        r = self.runner
        fields, entry_id = item.fields, item.entry_id
        msg_id = fields.get(b"i", b"")
        origin = fields.get(b"o", entry_id) if item.retry else entry_id
        record = packed_record(fields, origin, item.attempts)
        reply = await self._write(
            fenced_dead_letter_call(
                self.keys, r.group, self.value, entry_id, msg_id, record, reason, [], retry=item.retry
            )
        )
        self._acked(entry_id, item.retry)  # already acknowledged: this clears its attempts record
        if reply not in (0, b"0"):
            r.stats.dead_lettered += 1
            self.log.warning(
                "message.dead_lettered", msg_id=shown(msg_id), offset=entry_id.decode(), reason=reason
            )

    def _ack_calls(self) -> list[Call]:
        if not self.acks and not self.retry_acks:
            return []
        calls = [key_settle_call(self.keys, self.runner.group, self.value, self.acks, self.retry_acks)]
        self.retry_acks = []
        return calls


_EMPTY = ReceivedMessage("", 0, b"0-0", {})
