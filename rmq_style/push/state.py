"""Bookkeeping of a push consumer (no I/O): subscriptions, owned queues, in-flight entries, flow control."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._filter import TagFilter
from .._message import MessageQueue, ReceivedMessage, field_map
from .._names import QueueKeys
from .._topics import Retention
from .._trace import TRACE_FLAG
from .outcomes import Decision

__all__ = ["Delivery", "PushStats", "QueueState", "StreamState", "Subscription"]


@dataclass(slots=True, eq=False)
class Subscription:
    topic: str
    filter: TagFilter
    listener: Callable[..., Any]
    is_async: bool
    model: Any
    queue_count: int = 0
    members: frozenset[str] = frozenset()
    counts_trims: bool = False  # maxlen retention: trims may remove entries the group has not read
    retention: Retention = field(default_factory=Retention)  # the topic's, for the delayed-message release
    key_order: Callable[[ReceivedMessage], Any] | None = None  # order="key": the ordering key of a message


@dataclass(slots=True, eq=False)
class StreamState:
    """One stream the group reads: a queue's stream or the group's retry stream of that queue."""

    key: str
    queue: QueueState
    retry: bool
    last_id: bytes | None = None  # last new entry read: where a lost group is re-created
    scan_from: bytes | None = None  # cursor of a re-read of our own pending entries; None: not needed
    in_flight: set[bytes] = field(default_factory=set)
    # a retry stream is read only when retries were released into it, or now and then (next_check)
    wanted: bool = True
    next_check: float = 0.0

    def __repr__(self) -> str:
        return f"<StreamState {self.key} in_flight={len(self.in_flight)} scan={self.scan_from!r}>"


@dataclass(slots=True, eq=False)
class QueueState:
    mq: MessageQueue
    keys: QueueKeys
    sub: Subscription
    owned: bool = True
    # ownership generation: moves on when the queue is released or the membership lapsed; a call
    # read in an earlier one is dropped before it starts (its entry is re-read if still ours)
    epoch: int = 0
    count: int = 0  # in-flight messages (read, not yet acknowledged in Redis)
    size: int = 0  # their body bytes
    streams: tuple[StreamState, ...] = ()

    def __repr__(self) -> str:
        return f"<QueueState {self.mq} owned={self.owned} in_flight={self.count} bytes={self.size}>"


@dataclass(slots=True, eq=False)
class Delivery:
    """An entry read by this member and not yet settled in Redis."""

    stream: StreamState
    entry_id: bytes
    raw: dict[bytes, bytes] | list[bytes]  # its fields as read: a map, or ``[name, value, ...]``
    size: int
    message: ReceivedMessage | None = None
    decision: Decision | None = None
    epoch: int = 0  # of its queue when read
    # False: no trace record can be due (read without properties, so without the trace flag, by a
    # recorder that follows the flag): the recorder is not asked about it per call (docs/trace.md)
    traceable: bool = True
    started: float = 0.0  # traced only (docs/trace.md): wall clock when its listener started
    ran: float = -1.0  # traced only: how long its listener ran (s)

    @property
    def fields(self) -> dict[bytes, bytes]:
        """Its fields as a map (made on first use: an acknowledgement needs none)."""
        raw = self.raw
        if isinstance(raw, list):
            raw = self.raw = field_map(raw)
        return raw

    def traced(self) -> bool:
        """Whether it carries the trace flag (docs/trace.md), read without making the map: an entry
        in the producers' layout has its properties at index 13 of the flat fields."""
        raw = self.raw
        if isinstance(raw, list) and len(raw) > 13 and raw[12] == b"p":
            p: bytes | None = raw[13]
        else:
            p = self.fields.get(b"p")
        return bool(p) and type(p) is bytes and TRACE_FLAG in p

    @property
    def origin_offset(self) -> bytes:
        """The entry's offset in its topic queue (a retried copy carries it in field ``o``)."""
        return self.fields.get(b"o", self.entry_id) if self.stream.retry else self.entry_id


@dataclass(slots=True)
class PushStats:
    consumed: int = 0  # listener succeeded
    failed: int = 0  # listener raised, returned RECONSUME_LATER or DEAD_LETTER, or timed out
    retried: int = 0  # retry scheduled
    dead_lettered: int = 0  # written to the dead-letter queue
    filtered: int = 0  # acked without a listener call (tag did not match)
    suspended: int = 0  # orderly: a failure held the queue, the message is tried again
    fenced: int = 0  # orderly: a write refused because the lease was lost
    duplicates: int = 0  # idempotent: acked without a listener call (its dedup key was consumed)
    trimmed: int = 0  # maxlen retention removed entries before the group handled them (as logged here)
