"""Orderly consumption, the pure part: lease arithmetic, the fenced calls and their replies (no I/O).

What happens to a message after its listener ran: ``rmq_style.push.outcomes``.

>>> lock_value("host@1-ab", 7)
'host@1-ab/7'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._call_values import Call, command, run_script
from .._names import QueueKeys
from .._replies import ReplyCode, classify

__all__ = [
    "OrderlyRead",
    "is_fenced",
    "lease_deadline",
    "lock_value",
    "parse_read",
]


def lock_value(member: str, token: int) -> str:
    """The lock's value: the owner and a fencing token unique to this acquisition."""
    return f"{member}/{token}"


def lease_deadline(sent_at: float, lease_ms: int) -> float:
    """Until when (monotonic seconds) an owner may start handlers after a lease write sent at *sent_at*.

    Redis counts the lease from when it ran the command, later than *sent_at*;
    a tenth of the lease is kept as margin for clock drift.
    """
    return sent_at + lease_ms * 0.9 / 1000


def is_fenced(reply: object) -> bool:
    return classify(reply) is ReplyCode.FENCED


@dataclass(frozen=True, slots=True)
class OrderlyRead:
    pending: bool  # claimed from the group's pending entries (a takeover or a lost ack)
    retry: bool  # entries of the group's retry stream (replayed dead letters)
    entries: list[tuple[bytes, dict[bytes, bytes]]]
    held_offset: bytes | None
    held_attempts: int
    last: bytes | None  # nothing new: the stream's last entry id, to wait after it


def parse_read(reply: Sequence[Any]) -> OrderlyRead:
    source, raw, held_offset, held_attempts, last = reply
    entries = []
    for entry_id, flat in raw or ():
        if flat is None:
            continue  # trimmed while pending: XCLAIM dropped it
        entries.append((entry_id, dict(zip(flat[::2], flat[1::2], strict=True))))
    return OrderlyRead(
        source == b"pending",
        source == b"retry",
        entries,
        held_offset or None,
        int(held_attempts or 0),
        last or None,
    )


def read_call(
    qk: QueueKeys,
    group: str,
    member: str,
    value: str,
    count: int,
    acks: Sequence[bytes],
    *,
    retry: bool = False,
) -> Call:
    """The next entries; *acks* are entries of the retry stream when *retry*, of the queue otherwise."""
    return run_script(
        "orderly_read",
        (qk.stream, qk.lock(group), qk.held(group), qk.retry_stream(group)),
        (group, member, value, count, _flag(retry), *acks),
    )


def _flag(retry: bool) -> str:
    return "1" if retry else "0"


def settle_call(
    qk: QueueKeys,
    group: str,
    value: str,
    acks: Sequence[bytes],
    *,
    blocked: bytes = b"",
    attempts: int = 0,
    owner: str = "",
    reason: str = "",
    retry: bool = False,
) -> Call:
    """Acknowledge *acks* (entries of the retry stream when *retry*) and record a blocked message."""
    return run_script(
        "orderly_settle",
        (qk.retry_stream(group) if retry else qk.stream, qk.lock(group), qk.held(group)),
        (group, value, blocked, attempts, owner, reason, _flag(retry), *acks),
    )


def fenced_dead_letter_call(
    qk: QueueKeys,
    group: str,
    value: str,
    entry_id: bytes,
    msg_id: bytes,
    record: bytes,
    reason: str,
    acks: Sequence[bytes],
    *,
    retry: bool = False,
) -> Call:
    """Dead-letter *entry_id* (an entry of the retry stream when *retry*, as *acks* are)."""
    return run_script(
        "orderly_dead_letter",
        (qk.retry_stream(group) if retry else qk.stream, qk.dlq(group), qk.lock(group), qk.held(group)),
        (group, entry_id, msg_id, record, qk.topic, qk.queue_id, reason, value, _flag(retry), *acks),
    )


def acquire_call(qk: QueueKeys, group: str, value: str, lease_ms: int) -> Call:
    return command("SET", qk.lock(group), value, "NX", "PX", lease_ms)


def renew_call(qk: QueueKeys, group: str, value: str, lease_ms: int) -> Call:
    return run_script("lock_renew", (qk.lock(group),), (value, lease_ms))


def release_call(qk: QueueKeys, group: str, value: str) -> Call:
    return run_script("lock_release", (qk.lock(group),), (value,))
