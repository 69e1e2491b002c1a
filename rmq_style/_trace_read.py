"""Reading a message's trace (docs/trace.md): records into a journey, for ``rmq-style trace`` (pure).

Records may be hostile (written by anyone): every field has a failure path; a
record that does not decode is kept and marked, never raised.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ._call_values import Flow, command, single
from ._names import Keys
from ._topics import list_flow, route_flow
from ._trace import CLOCK_SLACK_MS, DEFAULT_TRACE_MAXLEN, born_ms

__all__ = ["MessageTrace", "TraceStep", "parse_step", "trace_flow"]

_EVENT_RANK = {"pub": 0, "tx": 1}  # the rest (sub, replay) in the order Redis stored them
_MAX_TEXT = 1000


@dataclass(frozen=True, slots=True)
class TraceStep:
    """One record of a message's journey, as read back (unknown or broken values are kept as text)."""

    record_id: str  # entry id in the trace stream: its ms part is the server time of the record
    queue_id: int
    event: str  # pub | sub | tx | replay (anything else is shown as it is)
    group: str = ""  # consumer group (sub, replay) or producer group (pub, tx)
    host: str = ""  # producer host@pid or consumer member id
    attempt: int = 0  # reconsume times of the delivery
    start_ms: int = 0  # client clock: listener start (sub) or born time (pub)
    duration_ms: int = 0  # listener run (sub) or send round trip (pub)
    outcome: str = ""  # sub: ok | retry | dead | filtered; pub: ok; tx: commit | rollback; replay: replayed
    detail: dict[str, str] = field(default_factory=dict)
    problem: str | None = None  # why a field did not decode (the record is shown anyway)

    @property
    def recorded_ms(self) -> int:
        ms = self.record_id.partition("-")[0]
        return int(ms) if ms.isdigit() else 0

    @property
    def due_ms(self) -> int | None:
        """A retry's due time: the record's server time plus its delay (written in the same round trip)."""
        delay = self.detail.get("delay_ms", "")
        return self.recorded_ms + int(delay) if delay.isdigit() else None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "record_id": self.record_id, "queue": self.queue_id, "event": self.event,
            "group": self.group, "host": self.host, "attempt": self.attempt,
            "start_ms": self.start_ms, "duration_ms": self.duration_ms, "outcome": self.outcome,
            "detail": dict(self.detail),
        }  # fmt: skip
        if self.due_ms is not None:
            out["due_ms"] = self.due_ms
        if self.problem is not None:
            out["problem"] = self.problem
        return out

    def line(self) -> str:
        """One line of ``rmq-style trace``."""
        when = _clock(self.start_ms or self.recorded_ms)
        if self.event == "pub":
            d = self.detail
            where = f"queue {self.queue_id} offset {d.get('offset', '?')}"
            where += f" (queue offset {d.get('queue_offset', '?')})"
            if d.get("deliver_at_ms", "").isdigit():
                where = f"queue {self.queue_id}, held until {_clock(int(d['deliver_at_ms']))}"
            tx = f", transaction {d['tx']}" if "tx" in d else ""
            text = f"{when} sent by {self.host} to {where}{tx}, took {self.duration_ms} ms"
        elif self.event == "sub":
            text = (
                f"{when} [{self.group}] delivery {self.attempt + 1} to {self.host}: "
                f"{self.outcome}, ran {self.duration_ms} ms"
            )
            if self.due_ms is not None:
                text += f"; retry due {_clock(self.due_ms)}"
            if "reason" in self.detail:
                text += f"; reason: {self.detail['reason']}"
        elif self.event == "tx":
            check = " (check-back)" if self.detail.get("from_check") == "1" else ""
            text = f"{when} transaction {self.outcome}{check} by {self.host}"
        elif self.event == "replay":
            text = f"{when} [{self.group}] replayed from the dead-letter queue by {self.host}"
        else:
            text = f"{when} {self.event} {self.outcome} {self.host}".rstrip()
        if self.problem is not None:
            text += f"  <undecodable record: {self.problem}>"
        return text


@dataclass(frozen=True, slots=True)
class MessageTrace:
    """Every recorded step of one message, in journey order: sent, transaction end, then as stored."""

    msg_id: str
    topic: str
    steps: tuple[TraceStep, ...]

    @property
    def groups(self) -> list[str]:
        """The consumer groups with steps ("" for records that name none)."""
        return sorted({s.group for s in self.steps if s.event in ("sub", "replay")})

    def lines(self) -> list[str]:
        """The journey as text: the send, then per consumer group its deliveries, retries, dead letters."""
        if not self.steps:
            return [f"no trace of {self.msg_id} in topic {self.topic}"]
        out = [f"message {self.msg_id} of topic {self.topic}"]
        out += ["  " + s.line() for s in self.steps if s.event not in ("sub", "replay")]
        for g in self.groups:
            out.append(f"  group {g}:" if g else "  no group named:")
            out += ["    " + s.line() for s in self.steps if s.event in ("sub", "replay") and s.group == g]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"msg_id": self.msg_id, "topic": self.topic, "steps": [s.as_dict() for s in self.steps]}


def _clock(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except (OverflowError, OSError, ValueError):
        return f"<time {ms}>"


def _text(value: Any, name: str, problems: list[str]) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        try:
            text = value.decode()
        except UnicodeDecodeError:
            problems.append(f"field '{name}' is not UTF-8")
            return repr(value[:60])
    else:
        text = str(value)
    return text[:_MAX_TEXT]


def _int(value: Any, name: str, problems: list[str]) -> int:
    text = _text(value, name, problems)
    if text == "":
        return 0
    if not text.isdigit() or len(text) > 15:
        problems.append(f"field '{name}' is not a decimal integer")
        return 0
    return int(text)


def parse_step(queue_id: int, record_id: Any, fields: Mapping[bytes, Any]) -> TraceStep:
    """A trace record as read (never raises: what does not decode is named in ``problem``).

    >>> parse_step(0, b"5-0", {b"i": b"m", b"e": b"sub", b"a": b"x", b"o": b"ok"}).problem
    "field 'a' is not a decimal integer"
    """
    problems: list[str] = []
    detail: dict[str, str] = {}
    raw = fields.get(b"x")
    if raw:
        try:
            parsed = json.loads(raw)
            if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
                raise ValueError("not an object of strings")
            detail = {str(k)[:100]: v[:_MAX_TEXT] for k, v in parsed.items()}
        except (ValueError, UnicodeDecodeError, RecursionError):
            problems.append("field 'x' (detail) is not a JSON object of strings")
    return TraceStep(
        record_id=_text(record_id, "id", problems),
        queue_id=queue_id,
        event=_text(fields.get(b"e"), "e", problems) or "?",
        group=_text(fields.get(b"g"), "g", problems),
        host=_text(fields.get(b"h"), "h", problems),
        attempt=_int(fields.get(b"a"), "a", problems),
        start_ms=_int(fields.get(b"s"), "s", problems),
        duration_ms=_int(fields.get(b"d"), "d", problems),
        outcome=_text(fields.get(b"o"), "o", problems),
        detail=detail,
        problem="; ".join(problems) or None,
    )


def _order(step: TraceStep) -> tuple[int, int, int]:
    ms, _, seq = step.record_id.partition("-")
    return _EVENT_RANK.get(step.event, 2), int(ms) if ms.isdigit() else 0, int(seq) if seq.isdigit() else 0


def trace_flow(
    keys: Keys,
    msg_id: str,
    topic: str | None = None,
    *,
    scan: int = DEFAULT_TRACE_MAXLEN * 2,
    chunk: int = 1000,
) -> Flow[list[MessageTrace]]:
    """The traces of *msg_id*, one per topic where records were found (every topic when *topic* is None).

    Each queue's trace stream is read forward from the message's born time
    (less a clock slack), *chunk* records per round trip and at most *scan* per queue.
    """
    if topic is None:
        routes = yield from list_flow(keys)
        topics: Sequence[str] = [r.topic for r in routes]
    else:
        topics = [topic]
    born = born_ms(msg_id)
    start = f"{max(born - CLOCK_SLACK_MS, 0)}-0" if born is not None else "-"
    wanted = msg_id.encode()
    traces: list[MessageTrace] = []
    for name in topics:
        route = yield from route_flow(keys, name)
        steps: list[TraceStep] = []
        cursors = {q: start for q in range(route.queue_count)}
        scanned = dict.fromkeys(cursors, 0)
        while cursors:
            queues = list(cursors)
            replies = yield [
                command("XRANGE", keys.queue(name, q).trace, cursors[q], "+", "COUNT", min(chunk, scan - n))
                for q, n in ((q, scanned[q]) for q in queues)
            ]
            for q, reply in zip(queues, replies, strict=True):
                if isinstance(reply, Exception):  # e.g. a key of another type: said, not raised
                    steps.append(TraceStep("0-0", q, "?", problem=f"trace stream unreadable: {reply}"))
                    del cursors[q]
                    continue
                entries = single(reply)
                steps += [parse_step(q, eid, f) for eid, f in entries if f and f.get(b"i") == wanted]
                scanned[q] += len(entries)
                if not entries or scanned[q] >= scan or len(entries) < chunk:
                    del cursors[q]
                else:
                    last = entries[-1][0]
                    cursors[q] = "(" + (last.decode() if isinstance(last, bytes) else str(last))
        if steps or topic is not None:
            traces.append(MessageTrace(msg_id, name, tuple(sorted(steps, key=_order))))
    return traces
