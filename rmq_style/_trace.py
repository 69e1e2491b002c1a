"""Message trace (RocketMQ's msgTrace): what happened to one message, recorded beside its queue (pure).

Producers and consumers append small records to the queue's trace stream
``rmq:{T:i}:trace`` (same hash slot as the queue: works on a Redis Cluster):
``pub`` when a message is sent, ``sub`` for each delivery a consumer settles
(ack, retry or dead letter), ``tx`` when a transaction ends, ``replay`` when an
operator hands a dead letter back. A message is traced when its producer
sampled it (the property ``TRACE_ON`` = ``1`` travels with it, so consumers
record the same messages) or when a consumer traces everything. The reader
(``trace_flow``) scans the trace streams from the message's born time and
puts the records in journey order (``_trace_read``). The format is
docs/storage.md's "Message trace".
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

from ._call_values import Flow, ScriptCall, run_script
from ._message import Message
from ._names import Keys, QueueKeys

__all__ = [
    "DEFAULT_TRACE_MAXLEN",
    "TRACE_FLAG",
    "TRACE_PROPERTY",
    "SubRecords",
    "TraceBound",
    "born_ms",
    "is_traced",
    "mark_traced",
    "pub_calls",
    "replay_trace_flow",
    "sample_batch",
    "sampled",
    "trace_command",
    "trace_host",
    "tx_call",
]

TRACE_PROPERTY = "TRACE_ON"
DEFAULT_TRACE_MAXLEN = 10_000
# how the property reads in a compact JSON object (docs/storage.md, properties): a cheap test
TRACE_FLAG = b'"TRACE_ON":"1"'
# a producer's clock may run ahead of the server's: records are looked for from born time minus this
CLOCK_SLACK_MS = 60_000
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
    return bool(p) and type(p) is bytes and TRACE_FLAG in p


def sampled(rate: float) -> bool:
    """The send-time decision: trace this message? (rate 0: never, 1: always)."""
    return rate >= 1.0 or (rate > 0.0 and random.random() < rate)


def mark_traced(message: Message) -> Message:
    """A copy of *message* that carries the trace flag (the caller's object is left as it is)."""
    if message.properties.get(TRACE_PROPERTY) == "1":
        return message
    return replace(message, properties={**message.properties, TRACE_PROPERTY: "1"})


class TraceBound(NamedTuple):
    """How a trace stream is bounded: at most *maxlen* records (``MAXLEN ~``), and none older than
    *max_age_ms* (``MINID ~`` server time - age, once per call; 0: no age bound)."""

    maxlen: int = DEFAULT_TRACE_MAXLEN
    max_age_ms: int = 0


_DEFAULT_BOUND = TraceBound()


def trace_command(
    keys: QueueKeys,
    bound: TraceBound,
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
) -> ScriptCall:
    """One trace record: ``trace.lua`` (``XADD rmq:{T:i}:trace MAXLEN ~ maxlen * i e g h a s d o x``)."""
    x = json.dumps(dict(detail), separators=(",", ":")) if detail else ""
    values = (msg_id, event, group, host, attempt, start_ms, duration_ms, outcome, x)
    return run_script("trace", (keys.trace,), (bound.maxlen, bound.max_age_ms, *values))


class SubRecords:
    """The ``sub`` records of a consumer that settles entries itself (the simple consumer): which
    entries it records (*mode* ``follow``, ``all`` or ``off``) and the record of one."""

    def __init__(self, group: str, mode: str, bound: TraceBound) -> None:
        self.group, self.bound, self.host = group, bound, trace_host()
        self.code = {"off": "0", "follow": "1", "all": "2"}[mode]  # as simple_receive.lua reads it

    def wants(self, fields: Mapping[bytes, bytes]) -> bool:
        return self.code == "2" or (self.code == "1" and is_traced(fields))

    def record(
        self, keys: QueueKeys, fields: Mapping[bytes, bytes], attempt: int, outcome: str, *,
        start_ms: int | None = None, duration_ms: int = 0, detail: Mapping[str, str] | None = None,
    ) -> ScriptCall:  # fmt: skip
        return trace_command(
            keys, self.bound, msg_id=fields.get(b"i") or b"", event="sub", group=self.group,
            host=self.host, attempt=max(attempt, 0),
            start_ms=int(time.time() * 1000) if start_ms is None else start_ms,
            duration_ms=duration_ms, outcome=outcome, detail=detail,
        )  # fmt: skip


def merged(calls: Sequence[ScriptCall]) -> list[ScriptCall]:
    """The records of *calls* as one ``trace.lua`` call per trace stream (one reply each, not one per record).

    >>> from rmq_style._names import Keys
    >>> q = Keys().queue("t", 0)
    >>> calls = [trace_command(q, TraceBound(9), msg_id=m, event="e") for m in "ab"]
    >>> [c.args for c in merged(calls)]
    [(9, 0, 'a', 'e', '', '', 0, 0, 0, '', '', 'b', 'e', '', '', 0, 0, 0, '', '')]
    """
    by_key: dict[str, list[ScriptCall]] = {}
    for c in calls:
        by_key.setdefault(c.keys[0], []).append(c)
    out = []
    for same in by_key.values():
        first = same[0]
        if len(same) == 1:
            out.append(first)
        else:
            args = [*first.args] + [a for c in same[1:] for a in c.args[2:]]
            out.append(ScriptCall(first.script, first.keys, tuple(args)))
    return out


def born_ms(msg_id: str) -> int | None:
    """The born time a msg id of ours carries (12 hex digits of ms); None for another kind of id."""
    head = msg_id[:12]
    if len(msg_id) < 12 or any(ch not in "0123456789abcdef" for ch in head):
        return None
    return int(head, 16)


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
    bound: TraceBound,
    messages: Sequence[Message],
    traced: Sequence[int],
    results: Sequence[Any],
    *,
    started: float,
    took_ms: int,
    group: str = "",
    tx: str | None = None,
) -> list[ScriptCall]:
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
                bound,
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
    return merged(calls)


def replay_trace_flow(
    keys: Keys, group: str, records: Sequence[Any], bound: TraceBound = _DEFAULT_BOUND
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
                bound,
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
        yield merged(calls)
    return len(calls)


def tx_call(
    keys: Keys,
    bound: TraceBound,
    half: Any,
    *,
    event: str,
    outcome: str,
    group: str,
    detail: Mapping[str, str],
) -> ScriptCall | None:
    """A transactional message's record (``pub`` of its half, ``tx`` of its end); None when not traced.

    *half*: the HalfMessage (a ReceivedMessage: its properties say whether it is traced).
    """
    props = half.shown("properties")
    if not isinstance(props, dict) or props.get(TRACE_PROPERTY) != "1":
        return None
    born = born_ms(half.msg_id)
    return trace_command(
        keys.queue(half.topic, half.queue_id),
        bound,
        msg_id=half.msg_id,
        event=event,
        group=group,
        host=trace_host(),
        start_ms=born if event == "pub" and born is not None else int(time.time() * 1000),
        outcome=outcome,
        detail=detail,
    )
