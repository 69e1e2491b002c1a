"""Consume progress of broadcasting members (pure flows): each member's position, lag and retries per queue.

A broadcasting member (push or pull) keeps its position in the hash
``rmq:{T:i}:bcast:G`` (field: its instance name): the last entry it consumed.
Its lag is the queue's max offset minus the queue offset after that entry
(read from the entries' ``q`` field, so exact and never negative); a push
member's retrying count is its own retry records plus its due retries.
Everything read here may be hostile: a field that is not an instance name or
a value that is not an entry id still gives a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._call_values import Flow, command, single
from ._errors import InvalidNameError, InvalidOffsetError
from ._message import MessageQueue
from ._names import Keys, check_instance
from ._offsets import parse_offset

__all__ = ["MemberProgress", "members_flow"]


@dataclass(frozen=True, slots=True)
class MemberProgress:
    """One broadcasting member of a group in one queue."""

    instance: str
    position: str | None  # last consumed entry id; None: the stored value is not an entry id
    consumed_queue_offset: int  # messages of the queue the member has consumed (exclusive queue offset)
    lag: int  # never negative
    retrying: int  # push members: failed messages waiting for the member's retry, or due


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _q(reply: Any) -> int | None:
    entries = single(reply)
    if not entries:
        return None
    value = entries[0][1].get(b"q")
    return int(value) if value is not None and value.isdigit() and len(value) <= 15 else None


def members_flow(keys: Keys, group: str, queue: MessageQueue, max_q: int) -> Flow[tuple[MemberProgress, ...]]:
    """The broadcasting members of *group* with a position in *queue* (sorted by name)."""
    qk = keys.queue(queue.topic, queue.queue_id)
    (stored,) = yield [command("HGETALL", qk.broadcast(group))]
    rows = sorted((_text(k), v) for k, v in (single(stored) or {}).items())
    if not rows:
        return ()
    calls = []
    positions = []
    for name, value in rows:
        try:
            position = str(parse_offset(value))
        except InvalidOffsetError:
            position = None
        try:
            member = check_instance(name)
            retry_keys = (qk.member_retry(group, member), qk.member_retry_stream(group, member))
        except InvalidNameError:
            retry_keys = None
        positions.append((position, retry_keys))
        at = position or "0-0"
        calls += [
            command("XRANGE", qk.stream, at, at, "COUNT", 1),
            command("XRANGE", qk.stream, f"({at}", "+", "COUNT", 1),
        ]
        if retry_keys is not None:
            calls += [command("ZCARD", retry_keys[0]), command("XLEN", retry_keys[1])]
    replies = yield calls
    out = []
    i = 0
    for (name, _), (position, retry_keys) in zip(rows, positions, strict=True):
        q_at, q_after = _q(replies[i]), _q(replies[i + 1])
        i += 2
        retrying = 0
        if retry_keys is not None:
            retrying = int(single(replies[i])) + int(single(replies[i + 1]))
            i += 2
        if position is None:
            consumed = 0
        elif q_at is not None:
            consumed = q_at + 1
        else:  # the entry is gone (trimmed) or 0-0: the next one says where the member is
            consumed = q_after if q_after is not None else max_q
        consumed = min(consumed, max_q)
        out.append(MemberProgress(name, position, consumed, max(0, max_q - consumed), retrying))
    return tuple(out)
