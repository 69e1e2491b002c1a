"""TraceRecorder: the push consumer's message trace (docs/trace.md), in one place.

The runtime calls it at three points: a listener call starts (``start``, from
``Context.wanted``), it ends (``done``, from ``Settler.on_done``) and a settle
round is planned (``records``: the trace records go into the same round trip as
the acks, retries and dead letters). An orderly queue asks ``orderly`` after
each listener call and sends the records with its next Redis call. A consumer with ``message_trace="off"``
has no recorder: each point is one ``is not None`` check. With ``"follow"``, an entry read in the
producers' plain layout has no properties, so no trace flag: the fetch marks its delivery
``traceable=False`` and none of the three points asks about it (the consumer's hot path).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .._call_values import Call, ScriptCall
from .._entry_check import shown
from .._names import QueueKeys
from .._trace import TraceBound, is_traced, merged, trace_command
from .outcomes import Ack, DeadLetterIt, RetryLater, Suspend
from .state import Delivery

__all__ = ["TraceRecorder"]


class TraceRecorder:
    def __init__(self, group: str, member: str, *, trace_all: bool, bound: TraceBound) -> None:
        self.group = group
        self.member = member
        self.trace_all = trace_all  # every message, not only those its producer sampled
        self.bound = bound
        self.failed = 0  # trace writes Redis refused (best effort: the settle itself is unaffected)

    def wants(self, d: Delivery) -> bool:
        return self.trace_all or d.traced()

    # start and done run for every listener call: the untraced case reads one field and returns
    def start(self, token: Delivery | list[Delivery]) -> None:
        if not isinstance(token, list):
            if self.trace_all or token.traced():
                token.started = time.time()
            return
        for d in token:
            if d.traceable and (self.trace_all or d.traced()):
                d.started = time.time()

    def done(self, token: Delivery | list[Delivery]) -> None:
        if not isinstance(token, list):
            if token.started:
                token.ran = time.time() - token.started
            return
        for d in token:
            if d.started:
                d.ran = time.time() - d.started

    def records(self, batch: Sequence[Delivery]) -> list[Call]:
        """The trace records of a settle round's traced deliveries (none for the others)."""
        calls: list[ScriptCall] = []
        trace_all = self.trace_all
        for d in batch:
            if not d.traceable or (not d.started and not trace_all and not d.traced()):
                continue
            decision = d.decision
            detail: dict[str, str] = {}
            if isinstance(decision, Ack):
                outcome = "ok" if d.started else "skipped"  # filtered by tag, or a duplicate
            elif isinstance(decision, RetryLater):
                outcome = "retry"
                detail["delay_ms"] = str(decision.delay_ms)
            elif isinstance(decision, DeadLetterIt):
                outcome = "dead"
                detail["reason"] = decision.reason[:1000]
            else:
                continue
            if d.stream.retry:
                detail["retry_entry"] = shown(d.entry_id)
            attempt = d.message.shown("reconsume_times") if d.message is not None else 0
            calls.append(
                trace_command(
                    d.stream.queue.keys,
                    self.bound,
                    msg_id=d.fields.get(b"i", b""),
                    event="sub",
                    group=self.group,
                    host=self.member,
                    attempt=attempt if isinstance(attempt, int) else 0,
                    start_ms=int(d.started * 1000),
                    duration_ms=int(max(d.ran, 0.0) * 1000),
                    outcome=outcome,
                    detail=detail,
                )
            )
        return list(merged(calls))

    def orderly(
        self, keys: QueueKeys, batch: Sequence[tuple[bytes, dict[bytes, bytes], Any]], attempt: int,
        started: float, decision: object, suspend_ms: int,
    ) -> list[ScriptCall]:  # fmt: skip
        """The records of one orderly listener call (a held queue's suspensions are its retries)."""
        detail: dict[str, str] = {}
        if isinstance(decision, DeadLetterIt):
            outcome, detail["reason"] = "dead", decision.reason[:1000]
        elif isinstance(decision, Suspend):
            outcome, detail["delay_ms"] = "suspend", str(suspend_ms)
        else:
            outcome = "ok"
        ran = int((time.time() - started) * 1000)
        calls = [
            trace_command(
                keys,
                self.bound,
                msg_id=fields.get(b"i", b""),
                event="sub",
                group=self.group,
                host=self.member,
                attempt=attempt,
                start_ms=int(started * 1000),
                duration_ms=ran,
                outcome=outcome,
                detail=detail,
            )
            for _, fields, _ in batch
            if self.trace_all or is_traced(fields)
        ]
        return merged(calls) if calls else calls

    def count_failures(self, replies: Sequence[Any]) -> int:
        failed = sum(1 for r in replies if isinstance(r, Exception))
        self.failed += failed
        return failed
