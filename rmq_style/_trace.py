"""Message trace (RocketMQ's msgTrace): what happened to one message, recorded beside its queue (pure).

Producers and consumers append small records to the queue's trace stream
``rmq:{T:i}:trace`` (same hash slot as the queue: works on a Redis Cluster):
``pub`` when a message is sent, ``sub`` for each delivery a consumer settles
(ack, retry or dead letter), ``tx`` when a transaction ends, ``replay`` when an
operator hands a dead letter back. A message is traced when its producer
sampled it (the property ``TRACE_ON`` = ``1`` travels with it, so consumers
record the same messages) or when a consumer traces everything. The reader
(``trace_flow``) scans the trace streams from the message's born time and
puts the records in journey order. Records may be hostile: every field has a
failure path; a record that does not decode is kept, marked, never raised.
The format is docs/storage.md's "Message trace".
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from ._call_values import Command, Flow, command, single
from ._message import Message
from ._names import Keys, QueueKeys
from ._topics import list_flow, route_flow

__all__ = [
    "DEFAULT_TRACE_MAXLEN",
    "TRACE_PROPERTY",
    "MessageTrace",
    "TraceStep",
    "is_traced",
    "mark_traced",
    "parse_step",
    "sampled",
    "trace_command",
    "trace_flow",
    "trace_host",
]

TRACE_PROPERTY = "TRACE_ON"
DEFAULT_TRACE_MAXLEN = 10_000
# how the property reads in a compact JSON object (docs/storage.md, properties): a cheap test
_FLAG = b'"TRACE_ON":"1"'
# a producer's clock may run ahead of the server's: records are looked for from born time minus this
CLOCK_SLACK_MS = 60_000
_EVENT_RANK = {"pub": 0, "tx": 1}  # the rest (sub, replay) in the order Redis stored them
_MAX_TEXT = 1000


def trace_host() -> str:
    """Who recorded: ``host@pid`` (consumers record their member id instead)."""
    return f"{socket.gethostname()}@{os.getpid()}"


def is_traced(fields: Mapping[bytes, bytes]) -> bool:
    """Whether an entry carries the trace flag (a substring test: no JSON parse on the hot path).

    >>> is_traced({b"p": b'{"TRACE_ON":"1"}'}), is_traced({b"p": b""}), is_traced({})
    (True, False, False)
    """
    p = fields.get(b"p")
    return bool(p) and type(p) is bytes and _FLAG in p


def sampled(rate: float) -> bool:
    """The send-time decision: trace this message? (rate 0: never, 1: always)."""
    return rate >= 1.0 or (rate > 0.0 and random.random() < rate)


def mark_traced(message: Message) -> Message:
    """A copy of *message* that carries the trace flag (the caller's object is left as it is)."""
    if message.properties.get(TRACE_PROPERTY) == "1":
        return message
    return replace(message, properties={**message.properties, TRACE_PROPERTY: "1"})


def trace_command(
    keys: QueueKeys,
    maxlen: int,
    *,
    msg_id: bytes | str,
    event: str,
    group: str = "",
    host: str = "",
    attempt: int = 0,
    start_ms: int = 0,
    duration_ms: int = 0,
    outcome: str = "",
    detail: Mapping[str, str] | None = None,
) -> Command:
    """One trace record: ``XADD rmq:{T:i}:trace MAXLEN ~ maxlen * i e g h a s d o x``."""
    x = json.dumps(dict(detail), separators=(",", ":")) if detail else ""
    return command(
        "XADD", keys.trace, "MAXLEN", "~", maxlen, "*",
        "i", msg_id, "e", event, "g", group, "h", host, "a", attempt,
        "s", start_ms, "d", duration_ms, "o", outcome, "x", x,
    )  # fmt: skip


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


def born_ms(msg_id: str) -> int | None:
    """The born time a msg id of ours carries (12 hex digits of ms); None for another kind of id."""
    head = msg_id[:12]
    if len(msg_id) < 12 or any(ch not in "0123456789abcdef" for ch in head):
        return None
    return int(head, 16)


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


def sample_batch(messages: Sequence[Message], rate: float) -> tuple[list[Message], list[int]]:
    """*messages* with the sampled ones marked, and their indices (the send-time decision)."""
    out = list(messages)
    traced: list[int] = []
    for n, m in enumerate(out):
        # anything but a Message is refused by the send itself
        if isinstance(m, Message) and (sampled(rate) or m.properties.get(TRACE_PROPERTY) == "1"):
            out[n] = mark_traced(m)
            traced.append(n)
    return out, traced


def pub_calls(
    keys: Keys,
    maxlen: int,
    messages: Sequence[Message],
    traced: Sequence[int],
    results: Sequence[Any],
    *,
    started: float,
    took_ms: int,
    group: str = "",
    tx: str | None = None,
) -> list[Command]:
    """The ``pub`` records of the traced messages of one send (*results*: their SendResults)."""
    calls = []
    host = trace_host()
    for n in traced:
        m, r = messages[n], results[n]
        detail = {"tag": m.tag or "", "keys": " ".join(m.keys), "status": str(r.status)}
        if r.offset is not None:
            detail["offset"] = r.offset
        if r.queue_offset is not None:
            detail["queue_offset"] = str(r.queue_offset)
        if r.deliver_at_ms is not None:
            detail["deliver_at_ms"] = str(r.deliver_at_ms)
        if tx is not None:
            detail["tx"] = tx
        born = born_ms(r.msg_id)
        calls.append(
            trace_command(
                keys.queue(r.queue.topic, r.queue.queue_id),
                maxlen,
                msg_id=r.msg_id,
                event="pub",
                group=group,
                host=host,
                start_ms=born if born is not None else int(started * 1000),
                duration_ms=took_ms,
                outcome="ok",
                detail=detail,
            )
        )
    return calls


def replay_trace_flow(
    keys: Keys, group: str, records: Sequence[Any], maxlen: int = DEFAULT_TRACE_MAXLEN
) -> Flow[int]:
    """``replay`` records for the traced ones of dead letters about to be replayed (DeadLetterRecords).

    Written before the replay: the consumer's next record of the message is then stored after it.
    """
    calls = []
    host = trace_host()
    for r in records:
        props = r.message.shown("properties")
        if not isinstance(props, dict) or props.get(TRACE_PROPERTY) != "1":
            continue
        m = r.message
        calls.append(
            trace_command(
                keys.queue(m.topic, m.queue_id),
                maxlen,
                msg_id=str(m.shown("msg_id")),
                event="replay",
                group=group,
                host=host,
                start_ms=int(time.time() * 1000),
                outcome="replayed",
                detail={"dlq_id": r.dlq_id, "reason": r.reason[:_MAX_TEXT]},
            )
        )
    if calls:
        yield calls
    return len(calls)


def tx_call(
    keys: Keys, maxlen: int, half: Any, *, event: str, outcome: str, group: str, detail: Mapping[str, str]
) -> Command | None:
    """A transactional message's record (``pub`` of its half, ``tx`` of its end); None when not traced.

    *half*: the HalfMessage (a ReceivedMessage: its properties say whether it is traced).
    """
    props = half.shown("properties")
    if not isinstance(props, dict) or props.get(TRACE_PROPERTY) != "1":
        return None
    born = born_ms(half.msg_id)
    return trace_command(
        keys.queue(half.topic, half.queue_id),
        maxlen,
        msg_id=half.msg_id,
        event=event,
        group=group,
        host=trace_host(),
        start_ms=born if event == "pub" and born is not None else int(time.time() * 1000),
        outcome=outcome,
        detail=detail,
    )
