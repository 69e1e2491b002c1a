"""Settling: listener outcomes into decisions (ack, retry, dead letter), carried out in rounds.

The runner reports each call's outcome to ``on_done``; the decision is
buffered and the settle loop runs the buffer as one round of calls planned
by ``settle_plan``. A failure to decide or to plan is contained to its message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from .._async._io import execute
from .._call_values import Call
from .._entry_check import shown
from .context import TRANSIENT, Context
from .outcomes import Ack, DeadLetterIt, RetryLater, decide, describe_error
from .settle_plan import SettleRound, plan_round
from .state import Delivery
from .waits import wait_event

__all__ = ["Settler"]

ACK = Ack()


class Settler:
    def __init__(self, c: Context) -> None:
        self.c = c
        self._settle_buffer: list[Delivery] = []
        # (group, deliveries) -> the round's calls; a broadcasting member plans its own
        self.plan_round: Callable[[str, Sequence[Delivery]], SettleRound] = plan_round
        self.hold: Callable[[Delivery, object], bool] | None = None  # True: it took the failure
        # a delivery whose settling failed: pending in Redis, re-read by our own-PEL scan (a
        # broadcasting member has no PEL: it keeps it in flight and settles it again later)
        self.unsettled: Callable[[Delivery], None] = c.release

    def on_done(self, token: Delivery | list[Delivery], outcome: object) -> None:
        if self.c.recorder is not None:
            self.c.recorder.done(token)
        if outcome is None and type(token) is Delivery and token.decision is None:  # the common case
            c = self.c
            c.stats.consumed += 1
            if c.settings.trace_messages:
                self.event(token).debug("message.consumed")
            token.decision = ACK
            buffer = self._settle_buffer
            buffer.append(token)
            if len(buffer) == 1:  # else set since it was empty: the settle loop clears it only then
                c.settle_wakeup.set()
            return
        for d in token if isinstance(token, list) else [token]:
            if d.decision is not None:
                continue
            try:
                if outcome is None:
                    self.succeed(d)
                else:
                    self.fail(d, outcome)
            except Exception as exc:
                self.c.log.exception("message.outcome_failed", offset=d.entry_id.decode())
                if d.decision is None:
                    self.settle(d, DeadLetterIt(f"settling failed: {describe_error(exc)}"))

    def succeed(self, d: Delivery) -> None:
        self.c.stats.consumed += 1
        if self.c.settings.trace_messages:
            self.event(d).debug("message.consumed")
        self.settle(d, ACK)

    def fail(self, d: Delivery, outcome: object) -> None:
        if self.hold is not None and self.hold(d, outcome):
            return  # an orderly broadcasting member tries it again in place (push/broadcast_orderly.py)
        reconsume = d.message.reconsume_times if d.message is not None else 0
        decision = decide(outcome, reconsume, self.c.policy)
        if isinstance(decision, Ack):
            self.succeed(d)
            return
        self.c.stats.failed += 1
        reason = decision.reason
        self.event(d).warning(
            "message.failed",
            reconsume_times=reconsume,
            reason=reason,
            next="retry" if isinstance(decision, RetryLater) else "dead_letter",
        )
        self.settle(d, decision)

    def event(self, d: Delivery) -> Any:
        m = d.message
        return self.c.log.bind(
            msg_id=shown(d.fields.get(b"i") or b"") if m is None else m.msg_id,
            topic=d.stream.queue.mq.topic,
            queue=d.stream.queue.mq.queue_id,
            offset=shown(d.origin_offset),
        )

    def settle(self, d: Delivery, decision: Any) -> None:
        d.decision = decision
        self._settle_buffer.append(d)
        self.c.settle_wakeup.set()

    async def settle_loop(self) -> None:
        client = self.c.client
        assert client is not None
        backoff = self.c.backoff()
        marks: list[Call] = []  # idempotent marks: written in the round of their acks, before them
        while True:
            if self.c.marks is not None:
                marks += self.c.marks.take(self.c.drained.is_set())
            if not self._settle_buffer and not marks:
                if self.c.drained.is_set():
                    return
                self.c.settle_wakeup.clear()
                await wait_event(self.c.settle_wakeup, 0.5)
                continue
            batch, self._settle_buffer = self._settle_buffer, []
            round_ = self.plan(batch)
            observer = self.c.observer
            started_ns = time.time_ns() if observer is not None else 0
            calls = round_.calls
            if self.c.recorder is not None:  # trace records ride in the same round trip
                traced = self.c.recorder.records(batch)
                if traced:
                    calls = calls + traced
            try:
                replies = await execute(client, [*marks, *calls] if marks else calls)
            except TRANSIENT as exc:
                self.c.log.warning("consumer.redis_unavailable", task="settle", error=str(exc))
                self._settle_buffer = batch + self._settle_buffer
                await backoff.wait(self.c.drained if self.c.drained.is_set() else self.c.stopping)
                continue
            backoff.reset()
            if marks:
                assert self.c.marks is not None
                self.c.marks.read(marks, replies)
                replies, marks = replies[len(marks) :], []
            extra = replies[len(round_.calls) :]
            if extra and self.c.recorder is not None and self.c.recorder.count_failures(extra):
                self.c.log.warning("trace.write_failed", failed=self.c.recorder.failed)
            acked, done, failed = round_.read_grouped(replies)
            if observer is not None:
                observer.settled(started_ns, acked, done, failed)
            for deliveries in acked:
                self.c.release_acked(deliveries)
            for settled in done:
                self.account(settled.delivery, settled.outcome)
            for d, error in failed:
                # left pending in Redis: our own-PEL re-read delivers it again
                self.event(d).error("message.settle_failed", error=str(error))
                self.unsettled(d)

    def plan(self, batch: list[Delivery]) -> SettleRound:
        """The round of *batch*; a delivery that cannot be planned is dead-lettered, the others settle."""
        try:
            return self.plan_round(self.c.group, batch)
        except Exception:  # noqa: BLE001 - a bug or an unforeseen value: contain it to its message
            planned = []
            for d in batch:
                try:
                    self.plan_round(self.c.group, [d])
                except Exception as exc:  # noqa: BLE001 - logged, then dead-lettered
                    self.event(d).exception("message.settle_failed")
                    d.decision = DeadLetterIt(f"settling failed: {describe_error(exc)}")
                    try:
                        self.plan_round(self.c.group, [d])
                    except Exception:  # noqa: BLE001 - left pending: delivered again by the own-PEL scan
                        self.event(d).error("message.left_pending")
                        self.unsettled(d)
                        continue
                planned.append(d)
            return self.plan_round(self.c.group, planned)

    def account(self, d: Delivery, outcome: str) -> None:
        if outcome == "retried":
            self.c.stats.retried += 1
            self.c.retry_wakeup.set()
            self.event(d).info(
                "message.retry_scheduled", reconsume_times=getattr(d.decision, "reconsume_times", 0)
            )
        elif outcome == "dead_lettered":
            self.c.stats.dead_lettered += 1
            self.event(d).warning("message.dead_lettered", reason=getattr(d.decision, "reason", ""))
        elif outcome == "group_lost":
            self.event(d).warning("message.group_lost")
        self.c.release(d)
