"""Offsets are stream entry ids ``ms-seq``; compare them as (ms, seq) pairs, never as strings.

>>> parse_offset("1700000000000-3")
Offset(ms=1700000000000, seq=3)
>>> parse_offset("9-0") < parse_offset("10-0")   # as strings "9-0" > "10-0"
True
>>> str(parse_offset("5-1").next())
'5-2'
>>> str(Offset.from_timestamp_ms(42))
'42-0'
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

from ._errors import InvalidOffsetError

__all__ = ["MAX_SEQ", "ConsumeFrom", "Offset", "parse_offset"]

MAX_SEQ = 2**64 - 1


class ConsumeFrom(StrEnum):
    """Where a group starts in a queue where it has no position yet (never applied otherwise)."""

    FIRST = "first"
    LAST = "last"
    TIMESTAMP = "timestamp"


class Offset(NamedTuple):
    """A stream entry id; orders like Redis orders entries."""

    ms: int
    seq: int

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"

    @classmethod
    def from_timestamp_ms(cls, ms: int) -> Offset:
        """The smallest id at or after *ms* (the first entry stored at that millisecond or later)."""
        return cls(max(ms, 0), 0)

    def next(self) -> Offset:
        """The smallest id strictly after this one."""
        if self.seq < MAX_SEQ:
            return Offset(self.ms, self.seq + 1)
        return Offset(self.ms + 1, 0)

    def previous(self) -> Offset:
        """The largest id strictly before this one (0-0 stays 0-0)."""
        if self.seq > 0:
            return Offset(self.ms, self.seq - 1)
        if self.ms > 0:
            return Offset(self.ms - 1, MAX_SEQ)
        return self


ZERO = Offset(0, 0)


def parse_offset(value: object) -> Offset:
    """Parse ``"ms-seq"`` (str or bytes) or an Offset; raise InvalidOffsetError otherwise."""
    if isinstance(value, Offset):
        return value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str):
        ms_text, sep, seq_text = value.partition("-")
        if sep and ms_text.isdigit() and seq_text.isdigit():
            ms, seq = int(ms_text), int(seq_text)
            if ms <= MAX_SEQ and seq <= MAX_SEQ:
                return Offset(ms, seq)
    raise InvalidOffsetError(
        f"malformed offset {value!r}: an offset is a stream entry id 'ms-seq', e.g. '1700000000000-0'"
    )
