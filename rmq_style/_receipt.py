"""Receipt handles and the messages a simple consumer receives (pure, no I/O).

A receipt handle names one lease: the queue, the stream the entry was read
from (``s`` the queue stream, ``r`` the group's retry stream), the entry id and
a token the receive (or the last change of invisible duration) drew at random.
The token is stored with the lease (docs/storage.md, "Simple consumers"), so a
handle whose lease was renewed, taken again or ended is refused, never
silently accepted. A handle is text an application may carry elsewhere (a web
request, a job record): it is checked in full before any key is built from it.

>>> h = ReceiptHandle("orders", 3, "s", "1700000000000-0", "0123456789abcdef00")
>>> str(h)
'1:orders:3:s:1700000000000-0:0123456789abcdef00'
>>> ReceiptHandle.parse(str(h)) == h, h.lease
(True, 's:1700000000000-0')
>>> ReceiptHandle.parse("1:orders:3:x:1-0:00")
Traceback (most recent call last):
...
rmq_style._errors.InvalidReceiptHandleError: not a receipt handle of rmq_style: '1:orders:3:x:1-0:00'
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from ._errors import InvalidReceiptHandleError
from ._message import ReceivedMessage

__all__ = ["MAX_HANDLE_CHARS", "ReceiptHandle", "SimpleMessage", "Source", "new_token", "token_prefix"]

MAX_HANDLE_CHARS = 256
# version 1: topic (the names of _names), queue id, source, entry id (ms-seq), token (18 hex digits)
_HANDLE = re.compile(
    r"1:([A-Za-z0-9_.-]{1,128}):(0|[1-9][0-9]{0,5}):([sr]):([0-9]{1,20}-[0-9]{1,20}):([0-9a-f]{18})"
)
_MAX_ID_PART = 2**64 - 1
Source = Literal["s", "r"]


def token_prefix() -> str:
    """16 random hex digits: a receive call's tokens are this and a 2-digit index."""
    return secrets.token_hex(8)


def new_token() -> str:
    """A whole token (a change of invisible duration draws one)."""
    return token_prefix() + "00"


@dataclass(frozen=True, slots=True)
class ReceiptHandle:
    topic: str
    queue_id: int
    source: Source
    entry_id: str
    token: str

    def __str__(self) -> str:
        return f"1:{self.topic}:{self.queue_id}:{self.source}:{self.entry_id}:{self.token}"

    @property
    def lease(self) -> str:
        """The lease's name in the queue's lease records."""
        return f"{self.source}:{self.entry_id}"

    @classmethod
    def parse(cls, text: object) -> ReceiptHandle:
        """The handle *text* names; InvalidReceiptHandleError for anything else (checked in full)."""
        if not isinstance(text, str) or len(text) > MAX_HANDLE_CHARS or not text.isascii():
            raise InvalidReceiptHandleError(f"not a receipt handle of rmq_style: {_cut(text)}")
        match = _HANDLE.fullmatch(text)
        if match is None:
            raise InvalidReceiptHandleError(f"not a receipt handle of rmq_style: {_cut(text)}")
        topic, queue, source, entry_id, token = match.groups()
        ms, _, seq = entry_id.partition("-")
        if int(ms) > _MAX_ID_PART or int(seq) > _MAX_ID_PART:
            raise InvalidReceiptHandleError(f"receipt handle with an entry id out of range: {_cut(text)}")
        return cls(topic, int(queue), "s" if source == "s" else "r", entry_id, token)


def _cut(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:80] + "..."


class SimpleMessage(ReceivedMessage):
    """A message received by a simple consumer: a ReceivedMessage with its lease.

    ``receipt_handle`` is what ``ack`` and ``change_invisible_duration`` name
    (a change stores the new one here); ``delivery_attempt`` counts the
    deliveries of this message to the group, this one included (1 the first
    time), and ``reconsume_times`` is one less.
    """

    __slots__ = ("_attempt", "_handle", "_until_ms", "received_ms")

    def __init__(
        self,
        topic: str,
        queue_id: int,
        entry_id: bytes | str,
        fields: Mapping[bytes, bytes],
        handle: ReceiptHandle,
        attempt: int,
        until_ms: int,
    ) -> None:
        super().__init__(topic, queue_id, entry_id, fields)
        self._handle = handle
        self._attempt = attempt
        self._until_ms = until_ms
        self.received_ms = int(time.time() * 1000)  # the start of its `sub` trace record (docs/trace.md)

    @property
    def receipt_handle(self) -> str:
        return str(self._handle)

    @property
    def handle(self) -> ReceiptHandle:
        return self._handle

    @property
    def entry_fields(self) -> Mapping[bytes, bytes]:
        """The stored entry's fields, as read (the consumer reads its trace flag and id there)."""
        return self._fields

    @property
    def delivery_attempt(self) -> int:
        return self._attempt

    @property
    def reconsume_times(self) -> int:
        return self._attempt - 1

    @property
    def invisible_until(self) -> datetime:
        """When the lease ends (server clock): not acknowledged by then, the message is delivered again."""
        return datetime.fromtimestamp(self._until_ms / 1000, UTC)

    def __repr__(self) -> str:
        shown = super().__repr__().partition("(")[2][:-1]
        return f"SimpleMessage({shown}, delivery_attempt={self._attempt})"

    def renewed(self, handle: ReceiptHandle, until_ms: int) -> None:
        """Store the handle and end of a changed lease (the old handle is refused from now on)."""
        self._handle = handle
        self._until_ms = until_ms
