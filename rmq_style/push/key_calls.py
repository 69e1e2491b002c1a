"""Key-ordered consumption: its fenced Redis calls as values and their replies (pure, no I/O).

>>> reply = [b"pending", [[b"5-0", [b"i", b"m"]], [b"6-0", None]], [b"5-0", b"2"], b"", b"6-0"]
>>> read = parse_key_read(reply)
>>> read.source, [e[0] for e in read.entries], read.attempts
('pending', [b'5-0'], {b'5-0': 2})
>>> parse_key_read([b"new", [], [], b"9-0", b""]).last
b'9-0'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._call_values import Call, run_script
from .._names import QueueKeys

__all__ = ["KeyRead", "held_field", "key_read_call", "key_settle_call", "parse_key_read"]


@dataclass(frozen=True, slots=True)
class KeyRead:
    source: str  # 'pending' (claimed: a takeover or a lost reply), 'retry' (the retry stream) or 'new'
    entries: list[tuple[bytes, dict[bytes, bytes]]]
    attempts: dict[bytes, int]  # failed attempts recorded for claimed entries
    last: bytes | None  # nothing new: the stream's last entry id, to wait after it
    top: bytes | None  # claimed pending entries: the last id looked at (some may be trimmed)

    @property
    def retry(self) -> bool:
        return self.source == "retry"


def parse_key_read(reply: Sequence[Any]) -> KeyRead:
    """key_read's reply; a hostile attempts value counts as no attempt."""
    source, raw, flat_attempts, last, top = reply
    entries = []
    for row in raw or ():
        if not row or row[1] is None:
            continue  # trimmed while pending: XCLAIM dropped it
        entry_id, flat = row
        entries.append((entry_id, dict(zip(flat[::2], flat[1::2], strict=True))))
    attempts: dict[bytes, int] = {}
    pairs = list(flat_attempts or ())
    for entry_id, count in zip(pairs[::2], pairs[1::2], strict=True):
        try:
            n = int(count)
        except (TypeError, ValueError):
            continue  # not a number: start counting again
        if 0 < n < 2**31:
            attempts[entry_id] = n
    text = source.decode() if isinstance(source, bytes) else str(source)
    return KeyRead(text, entries, attempts, last or None, top or None)


def held_field(entry_id: bytes, retry: bool) -> bytes:
    """The entry's field in the kheld hash (entries of the retry stream are prefixed with ``r``)."""
    return b"r" + entry_id if retry else entry_id


def key_read_call(
    qk: QueueKeys, group: str, member: str, value: str, count: int, cursor: bytes, retry_cursor: bytes
) -> Call:
    return run_script(
        "key_read",
        (qk.stream, qk.lock(group), qk.retry_stream(group), qk.key_held(group)),
        (group, member, value, count, cursor, retry_cursor),
    )


def key_settle_call(
    qk: QueueKeys,
    group: str,
    value: str,
    acks: Sequence[bytes],
    retry_acks: Sequence[bytes],
    *,
    held: bytes = b"",
    attempts: int = 0,
) -> Call:
    """Acknowledge *acks* (queue) and *retry_acks* (retry stream); record *held*'s failed attempts."""
    return run_script(
        "key_settle",
        (qk.stream, qk.lock(group), qk.retry_stream(group), qk.key_held(group)),
        (group, value, held, attempts, len(acks), *acks, *retry_acks),
    )
