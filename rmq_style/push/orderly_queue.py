"""One owned orderly queue (OrderlyQueue): its lease, and the task that consumes it in order.

The lifecycle (acquire, consume, release) and the fencing are described in
``rmq_style.push.orderly``, whose runner starts and stops these tasks.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

import structlog

from .._async._io import TRANSIENT_ERRORS, AsyncClient, execute
from .._call_values import Call
from .._entry_check import rejection, shown
from .._errors import FencedError
from .._message import MessageQueue, ReceivedMessage, decode_entry
from .._names import Keys
from .._replies import ReplyCode, classify
from .orderly_leases import (
    OrderlyRead,
    acquire_call,
    fenced_dead_letter_call,
    is_fenced,
    lease_deadline,
    lock_value,
    parse_read,
    read_call,
    release_call,
    settle_call,
)
from .outcomes import DeadLetterIt, Proceed, Suspend, decide_orderly, describe_error
from .redis_calls import check_created, create_groups_calls, packed_record
from .settings import PushSettings
from .state import Subscription
from .trace_recorder import TraceRecorder
from .waits import Backoff, wait_event

__all__ = ["OrderlyQueue"]

log = structlog.get_logger("rmq_style.orderly")
_TRANSIENT = (*TRANSIENT_ERRORS, OSError)
_tokens = itertools.count(1)

Entry = tuple[bytes, dict[bytes, bytes]]


class Host(Protocol):
    """What a queue task uses of its runner (``rmq_style.push.orderly.OrderlyRunner``)."""

    group: str
    member: str
    keys: Keys
    settings: PushSettings
    stats: Any
    client: AsyncClient
    wait_client: AsyncClient
    log: Any
    queues: dict[MessageQueue, OrderlyQueue]
    start_position: Callable[[], tuple[str, str]]
    recorder: TraceRecorder | None

    async def call(self, q: OrderlyQueue, messages: list[ReceivedMessage]) -> object: ...


class _Lost(Exception):
    """The lease is gone (fenced, renewal refused or overdue): stop handling this queue."""


class OrderlyQueue:
    """One owned orderly queue: its lease and its consuming task."""

    def __init__(self, runner: Host, mq: MessageQueue, sub: Subscription) -> None:
        self.runner = runner
        self.mq = mq
        self.sub = sub
        self.keys = runner.keys.queue(mq.topic, mq.queue_id)
        self.value = lock_value(runner.member, next(_tokens))
        self.locked = False  # we hold (or held, until a renewal says otherwise) the lease
        self.lost = False
        self.valid_until = 0.0
        self.release = asyncio.Event()  # no longer allocated, or stopping: hand the queue back
        self.acks: list[bytes] = []  # handled, acknowledged with the next write
        self.traces: list[Call] = []  # trace records (docs/trace.md), sent with the next write
        self.retry = False  # the entries in hand (and self.acks) are of the group's retry stream
        self.held: tuple[bytes, int] | None = None  # (offset, failed attempts) persisted in Redis
        self.last_id: bytes | None = None
        self.task: asyncio.Task[None] | None = None
        self.log = runner.log.bind(topic=mq.topic, queue=mq.queue_id)

    def __repr__(self) -> str:
        return f"<OrderlyQueue {self.mq} locked={self.locked} lost={self.lost} held={self.held}>"

    @property
    def lease_valid(self) -> bool:
        return self.locked and not self.lost and time.monotonic() < self.valid_until

    async def run(self) -> None:
        try:
            if await self._acquire():
                await self._consume()
        except _Lost:
            pass
        except Exception:  # logged, not left to "Task exception was never retrieved"
            self.log.exception("queue.task_crashed")  # the next rebalance starts the queue again
        finally:
            await self._finish()

    # -- lease ------------------------------------------------------------------------------------

    async def _acquire(self) -> bool:
        r = self.runner
        s = r.settings
        where, at = r.start_position()
        group_calls = create_groups_calls(self.keys, r.group, where, at)[:1]
        retry_s = min(s.membership.heartbeat_interval_ms, max(s.orderly_lease_ms // 3, 1)) / 1000
        waited = False
        while not self.release.is_set():
            sent = time.monotonic()
            try:
                reply, created = await execute(
                    r.client, [acquire_call(self.keys, r.group, self.value, s.orderly_lease_ms), *group_calls]
                )
            except _TRANSIENT as exc:
                self.log.warning("consumer.redis_unavailable", task="lock", error=str(exc))
                await wait_event(self.release, retry_s)
                continue
            check_created([created])
            if reply is not None and not isinstance(reply, Exception):
                self.locked = True
                self.valid_until = lease_deadline(sent, s.orderly_lease_ms)
                self.log.info("queue.locked", waited=waited)
                return True
            waited = True
            await wait_event(self.release, retry_s)
        return False

    def _check(self) -> None:
        """Before each handler call: stop if the lease is gone or overdue, or the queue must go."""
        if not self.lease_valid:
            self.lost = True
            raise _Lost
        if self.release.is_set():
            raise _Lost

    async def _write(self, call: Call) -> Any:
        """One fenced script, retried while Redis is away; FENCED ends the ownership."""
        r = self.runner
        backoff = Backoff(r.settings.reconnect_backoff_ms, r.settings.reconnect_backoff_max_ms)
        traces, self.traces = self.traces, []  # best effort: their replies are not read
        while True:
            try:
                reply = (await execute(r.client, [call, *traces]))[0]
            except _TRANSIENT as exc:
                self.log.warning("consumer.redis_unavailable", task="orderly", error=str(exc))
                if not self.lease_valid:
                    self.lost = True
                    raise _Lost from exc
                await backoff.sleep()
                continue
            if is_fenced(reply):
                self.lost = True
                r.stats.fenced += 1
                self.log.error("queue.fenced", error=str(FencedError(str(reply))), unacked=len(self.acks))
                self.acks.clear()
                raise _Lost
            if classify(reply) is ReplyCode.NOGROUP:
                await self._recreate_group(str(reply))
                continue
            if isinstance(reply, Exception):
                raise reply
            return reply

    async def _recreate_group(self, error: str) -> None:
        r = self.runner
        where, at = ("after", self.last_id.decode()) if self.last_id else r.start_position()
        self.log.warning("group.recreated", where=where, at=at, error=error)
        check_created(await execute(r.client, create_groups_calls(self.keys, r.group, where, at)[:1]))

    async def _finish(self) -> None:
        """Acknowledge what was handled and give the lock back (unless it is not ours any more).

        An owner that lost its lease still sends its acknowledgements: Redis
        refuses them if another owner took over (FencedError, counted).
        """
        r = self.runner
        if self.locked:
            calls = self._ack_calls()
            if not self.lost:
                calls.append(release_call(self.keys, r.group, self.value))
            calls += self.traces
            if calls:
                try:
                    replies = await execute(r.client, calls)
                    if any(is_fenced(x) for x in replies):
                        r.stats.fenced += 1
                        self.log.error("queue.fenced", unacked=len(self.acks))
                except _TRANSIENT as exc:
                    self.log.warning("queue.release_failed", error=str(exc))  # the lease runs out
            self.acks.clear()
        self.locked = False
        if r.queues.get(self.mq) is self:
            del r.queues[self.mq]
        self.log.info("queue.released", lost=self.lost)

    def _ack_calls(self) -> list[Call]:
        """The acknowledgements still to send when the queue is handed back."""
        if not self.acks:
            return []
        return [settle_call(self.keys, self.runner.group, self.value, self.acks, retry=self.retry)]

    # -- consuming --------------------------------------------------------------------------------

    async def _read(self) -> OrderlyRead:
        r = self.runner
        acks, self.acks = self.acks, []
        reply = await self._write(
            read_call(
                self.keys, r.group, r.member, self.value, r.settings.pull_batch_size, acks, retry=self.retry
            )
        )
        read = parse_read(reply)
        self.retry = read.retry
        if read.held_offset is not None:
            self.held = (read.held_offset, read.held_attempts)
        elif self.held is not None and not self.held[1]:
            self.held = None
        if read.entries and not read.pending and not read.retry:
            self.last_id = read.entries[-1][0]
        return read

    async def _wait_new(self, after: bytes | None) -> None:
        """Block (bounded) until the stream has an entry after *after*: XREAD changes nothing."""
        r = self.runner
        try:
            await cast(Any, r.wait_client).xread(
                {self.keys.stream: after or b"0-0"}, count=1, block=r.settings.poll_timeout_ms
            )
        except _TRANSIENT as exc:
            self.log.warning("consumer.redis_unavailable", task="orderly_wait", error=str(exc))
            await asyncio.sleep(r.settings.reconnect_backoff_ms / 1000)

    async def _consume(self) -> None:
        r = self.runner
        batch_size = r.settings.consume_message_batch_max_size
        tags = self.sub.filter.tags
        while not self.release.is_set():
            if self.lost or not self.lease_valid:
                self.lost = True
                return
            read = await self._read()
            if not read.entries:
                if not read.pending:
                    await self._wait_new(read.last)
                continue
            # a message, or why it is skipped: "" (tag did not match) or the decoding error
            ready: list[tuple[bytes, dict[bytes, bytes], ReceivedMessage | str]] = []
            for entry_id, fields in read.entries:
                problem = rejection(fields, r.settings.max_message_size)
                if problem is not None:  # dead-lettered on first delivery: the queue goes on
                    ready.append((entry_id, fields, problem))
                    continue
                try:
                    msg = decode_entry(self.mq.topic, self.mq.queue_id, entry_id, fields)
                except (ValueError, TypeError) as exc:
                    ready.append((entry_id, fields, f"undecodable entry: {describe_error(exc)}"))
                    continue
                ready.append((entry_id, fields, "" if tags is not None and msg.tag not in tags else msg))
            start = 0
            while start < len(ready):
                # consecutive messages form one batch; skipped entries are settled in place
                entry_id, fields, item = ready[start]
                if isinstance(item, str):
                    await self._skip(entry_id, fields, item)
                    start += 1
                    continue
                end = start + 1
                while end < len(ready) and end - start < batch_size and not isinstance(ready[end][2], str):
                    end += 1
                await self._handle(ready[start:end])
                start = end
                if self.release.is_set():
                    return

    async def _skip(self, entry_id: bytes, fields: dict[bytes, bytes], reason: str) -> None:
        if not reason:  # a tag that did not match
            self.runner.stats.filtered += 1
            self.acks.append(entry_id)
            return
        await self._dead_letter(entry_id, fields, reason, 0)

    async def _handle(self, batch: list[tuple[bytes, dict[bytes, bytes], ReceivedMessage | str]]) -> None:
        """Handle consecutive entries until they succeed or are dead-lettered, holding the queue meanwhile."""
        r = self.runner
        s = r.settings
        first = batch[0][0]
        failed = self.held[1] if self.held is not None and self.held[0] == first else 0
        while True:
            self._check()
            messages = [_with_attempts(m, f, failed) for _, f, m in batch if not isinstance(m, str)]
            started = time.time() if r.recorder is not None else 0.0
            outcome = await r.call(self, messages)
            decision = decide_orderly(outcome, failed, s.max_reconsume_times)
            if r.recorder is not None:
                suspend_ms = s.suspend_current_queue_time_ms
                self.traces += r.recorder.orderly(self.keys, batch, failed, started, decision, suspend_ms)
            if isinstance(decision, Proceed):
                r.stats.consumed += len(batch)
                self.acks.extend(entry_id for entry_id, _, _ in batch)
                if failed:  # the queue flows again: clear the held record now
                    self.held = None
                    await self._write(
                        settle_call(self.keys, r.group, self.value, self._take_acks(), retry=self.retry)
                    )
                return
            r.stats.failed += 1
            first_msg = messages[0]
            if isinstance(decision, DeadLetterIt):
                self.log.warning(
                    "message.failed",
                    msg_id=first_msg.msg_id,
                    offset=first_msg.offset,
                    reconsume_times=failed,
                    reason=decision.reason,
                    next="dead_letter",
                )
                for entry_id, fields, _ in batch:
                    await self._dead_letter(entry_id, fields, decision.reason, failed)
                self.held = None
                return
            assert isinstance(decision, Suspend)
            failed = decision.attempts
            r.stats.suspended += 1
            self.log.warning(
                "message.failed",
                msg_id=first_msg.msg_id,
                offset=first_msg.offset,
                reconsume_times=failed - 1,
                reason=decision.reason,
                next="suspend",
            )
            self.held = (first, failed)
            await self._write(
                settle_call(
                    self.keys,
                    r.group,
                    self.value,
                    self._take_acks(),
                    blocked=first,
                    attempts=failed,
                    owner=r.member,
                    reason=decision.reason,
                    retry=self.retry,
                )
            )
            if await wait_event(self.release, s.suspend_current_queue_time_ms / 1000):
                raise _Lost  # handed back while suspended: the next owner goes on counting

    def _take_acks(self) -> list[bytes]:
        acks, self.acks = self.acks, []
        return acks

    async def _dead_letter(
        self, entry_id: bytes, fields: dict[bytes, bytes], reason: str, failed: int
    ) -> None:
        r = self.runner
        msg_id = fields.get(b"i", b"")
        # a replayed message keeps the offset it came from in the queue (field o)
        origin = fields.get(b"o", entry_id) if self.retry else entry_id
        record = packed_record(fields, origin, failed)
        reply = await self._write(
            fenced_dead_letter_call(
                self.keys,
                r.group,
                self.value,
                entry_id,
                msg_id,
                record,
                reason,
                self._take_acks(),
                retry=self.retry,
            )
        )
        if reply not in (0, b"0"):
            r.stats.dead_lettered += 1
            self.log.warning(
                "message.dead_lettered", msg_id=shown(msg_id), offset=entry_id.decode(), reason=reason
            )


def _with_attempts(msg: ReceivedMessage, fields: dict[bytes, bytes], failed: int) -> ReceivedMessage:
    """The message as the listener sees it: reconsume_times = failed attempts so far."""
    if not failed:
        return msg
    shown = dict(fields)
    shown[b"r"] = str(failed).encode()
    return ReceivedMessage(msg.topic, msg.queue_id, msg.offset, shown)
