"""Messages as the user sees them, and as they lie in a stream entry.

An entry's fields, always in this order (docs/storage.md)::

    i  msg id (32 hex chars, made at send time, kept across retries and replays)
    q  queue offset (consecutive per queue, written by the send script)
    r  reconsume times
    b  born timestamp (producer clock, ms)
    t  tag ("" for none)
    k  keys, space separated
    p  properties as a JSON object ("" for none)
    c  content type of the body (b raw, s text, j JSON, m msgpack)
    d  body

The store timestamp is the entry id's millisecond part (Redis server clock).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from ._codec import Codec, decode_model, decode_value, encode_body
from ._errors import MessageTooLargeError, UsageError
from ._names import check_topic

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Message",
    "MessageQueue",
    "ReceivedMessage",
    "SendResult",
    "decode_entry",
    "encode_message",
    "new_msg_id",
    "new_msg_ids",
    "pack_fields",
    "unpack_fields",
]

DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
FIELD_ORDER = (b"i", b"q", b"r", b"b", b"t", b"k", b"p", b"c", b"d")
M = TypeVar("M")


def new_msg_id(now_ms: int | None = None) -> str:
    """32 hex chars: 48 bits of ms time then 80 random bits (sortable by birth, unique)."""
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    return f"{now_ms:012x}{os.urandom(10).hex()}"


def new_msg_ids(count: int, now_ms: int) -> list[str]:
    """*count* msg ids born at *now_ms*, with one call for the randomness of them all."""
    entropy = os.urandom(10 * count).hex()
    prefix = f"{now_ms:012x}"
    return [prefix + entropy[20 * n : 20 * n + 20] for n in range(count)]


@dataclass(frozen=True, slots=True, order=True)
class MessageQueue:
    """A message queue: one shard of a topic, one Redis stream."""

    topic: str
    queue_id: int

    def __str__(self) -> str:
        return f"{self.topic}:{self.queue_id}"


@dataclass(slots=True)
class Message:
    """A message to send.

    *body* is bytes, str, a pydantic model or JSON-able data. One *tag* per
    message (as in RocketMQ); *keys* are business keys for lookup (no spaces);
    *properties* are user string pairs.

    >>> Message("orders", {"id": 7}, tag="created", keys=["order-7"]).tag
    'created'
    """

    topic: str
    body: Any
    tag: str | None = None
    keys: Sequence[str] = ()
    properties: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_topic(self.topic)
        if isinstance(self.keys, str):
            self.keys = [self.keys]
        if self.tag is not None and (not isinstance(self.tag, str) or " " in self.tag or "|" in self.tag):
            raise UsageError(f"invalid tag {self.tag!r}: one tag per message, without spaces or '|'")
        for key in self.keys:
            if not isinstance(key, str) or not key or " " in key:
                raise UsageError(f"invalid key {key!r}: keys are non-empty strings without spaces")
        for name, value in self.properties.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise UsageError(f"invalid property {name!r}={value!r}: properties map str to str")


@dataclass(frozen=True, slots=True)
class SendResult:
    """Where a sent message landed.

    A delayed message has no offset yet: it is held until *deliver_at_ms*
    (server clock) and then written to *queue*.
    """

    msg_id: str
    queue: MessageQueue
    offset: str | None
    queue_offset: int | None
    deliver_at_ms: int | None = None


class ReceivedMessage:
    """A message as read from a queue (its attributes are read-only properties).

    It keeps the stream entry as Redis returned it and decodes each attribute
    when asked: building one costs next to nothing, so a pull of many messages
    pays only for what the application looks at.

    >>> m = decode_entry("orders", 0, b"1700000000000-0", {b"q": b"3", b"t": b"paid", b"d": b"x"})
    >>> (m.offset, m.queue_offset, m.tag, m.keys, m.properties, m.body, m.store_timestamp)
    ('1700000000000-0', 3, 'paid', (), {}, b'x', 1700000000000)
    """

    __slots__ = ("_entry_id", "_fields", "_properties", "_queue_id", "_topic")

    def __init__(self, topic: str, queue_id: int, entry_id: bytes | str, fields: Mapping[bytes, bytes]):
        self._topic = topic
        self._queue_id = queue_id
        self._entry_id = entry_id
        self._fields = fields
        self._properties: dict[str, str] | None = None

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def queue_id(self) -> int:
        return self._queue_id

    @property
    def offset(self) -> str:
        """The stream entry id (pull from it to continue after this message)."""
        eid = self._entry_id
        return eid.decode() if isinstance(eid, bytes) else eid

    @property
    def msg_id(self) -> str:
        return (self._fields.get(b"i") or b"").decode()

    @property
    def queue_offset(self) -> int:
        return int(self._fields.get(b"q") or -1)

    @property
    def born_timestamp(self) -> int:
        return int(self._fields.get(b"b") or 0)

    @property
    def store_timestamp(self) -> int:
        """The entry id's ms part: the Redis server's clock when the entry was written."""
        return int(self.offset.partition("-")[0])

    @property
    def reconsume_times(self) -> int:
        return int(self._fields.get(b"r") or 0)

    @property
    def tag(self) -> str | None:
        tag = self._fields.get(b"t")
        return tag.decode() if tag else None

    @property
    def keys(self) -> tuple[str, ...]:
        keys = self._fields.get(b"k")
        return tuple(keys.decode().split(" ")) if keys else ()

    @property
    def properties(self) -> dict[str, str]:
        if self._properties is None:
            props = self._fields.get(b"p")
            self._properties = json.loads(props) if props else {}
        return self._properties

    @property
    def body(self) -> bytes:
        return self._fields.get(b"d") or b""

    @property
    def content_type(self) -> str:
        content_type = self._fields.get(b"c")
        return content_type.decode() if content_type else "b"

    @property
    def queue(self) -> MessageQueue:
        return MessageQueue(self._topic, self._queue_id)

    @property
    def born_at(self) -> datetime:
        return datetime.fromtimestamp(self.born_timestamp / 1000, UTC)

    @property
    def stored_at(self) -> datetime:
        return datetime.fromtimestamp(self.store_timestamp / 1000, UTC)

    def value(self) -> Any:
        """The body as plain data: JSON/msgpack decoded, text as str, raw bytes as bytes."""
        return decode_value(self.content_type, self.body)

    def decode(self, model: type[M]) -> M:
        """The body validated into *model*; SerializationError (cause: ValidationError) if it does not fit."""
        return decode_model(self.content_type, self.body, model)

    def _identity(self) -> tuple[Any, ...]:
        return (self._topic, self._queue_id, self.offset, dict(self._fields))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReceivedMessage):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash((self._topic, self._queue_id, self.offset))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in _SHOWN)
        return f"ReceivedMessage({shown})"


_SHOWN = ("msg_id", "topic", "queue_id", "offset", "queue_offset", "tag", "keys", "content_type")


@dataclass(frozen=True, slots=True)
class EncodedMessage:
    """A message turned into entry fields, ready for a send script."""

    msg_id: str
    fields: list[bytes]  # r, b, t, k, p, c, d values, in FIELD_ORDER after i and q
    size: int


def encode_message(
    message: Message,
    *,
    codec: Codec,
    max_size: int,
    msg_id: str | None = None,
    born_ms: int | None = None,
) -> EncodedMessage:
    """Encode *message*; raise MessageTooLargeError before anything is written if it is too big.

    *born_ms* (default: now) is the born timestamp; a batch passes one clock reading for all.
    """
    content_type, body = encode_body(message.body, codec)
    props = (
        json.dumps(dict(message.properties), separators=(",", ":")).encode() if message.properties else b""
    )
    keys = " ".join(message.keys).encode()
    size = len(body) + len(props) + len(keys)
    if size > max_size:
        raise MessageTooLargeError(
            f"message to {message.topic!r} is {size} bytes, over the limit of {max_size} bytes "
            "(raise max_message_size, or store the payload elsewhere and send a reference)"
        )
    if born_ms is None:
        born_ms = int(time.time() * 1000)
    tag = message.tag.encode() if message.tag else b""
    return EncodedMessage(
        msg_id or new_msg_id(born_ms),
        [b"0", b"%d" % born_ms, tag, keys, props, content_type.encode(), body],
        size,
    )


def decode_entry(
    topic: str, queue_id: int, entry_id: bytes | str, fields: Mapping[bytes, bytes]
) -> ReceivedMessage:
    """The received view of one stream entry (hot path of every consumer: decoding is deferred)."""
    return ReceivedMessage(topic, queue_id, entry_id, fields)


def pack_fields(values: Iterable[bytes]) -> bytes:
    """Length-prefixed concatenation (``<len>:<bytes>`` each) that Lua unpacks without a library.

    >>> pack_fields([b"ab", b""])
    b'2:ab0:'
    >>> unpack_fields(pack_fields([b"x:y", b"1"]))
    [b'x:y', b'1']
    """
    return b"".join(b"%d:%s" % (len(v), v) for v in values)


def unpack_fields(blob: bytes) -> list[bytes]:
    out: list[bytes] = []
    pos = 0
    while pos < len(blob):
        colon = blob.index(b":", pos)
        length = int(blob[pos:colon])
        out.append(blob[colon + 1 : colon + 1 + length])
        pos = colon + 1 + length
    return out
