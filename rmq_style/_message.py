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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from ._codec import Codec, decode_model, decode_value, encode_body
from ._entry_check import entry_problem
from ._entry_check import raw as shown_raw
from ._errors import MessageTooLargeError, UsageError
from ._msg_id import msg_ids_with_prefix, new_msg_id, new_msg_ids
from ._names import check_topic
from ._wire import pack_fields, unpack_fields, wire

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "EntryEncoder",
    "Message",
    "MessageQueue",
    "ReceivedMessage",
    "SendResult",
    "SendStatus",
    "decode_entry",
    "field_map",
    "new_msg_id",
    "new_msg_ids",
    "pack_fields",
    "unpack_fields",
    "wire",
]

DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
FIELD_ORDER = (b"i", b"q", b"r", b"b", b"t", b"k", b"p", b"c", b"d")
M = TypeVar("M")


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


class SendStatus(StrEnum):
    """How far a send went, as RocketMQ's SendStatus (``ProducerSettings.min_replicas``).

    ``SEND_OK``: written on the master and, with ``min_replicas``, acknowledged
    by that many replicas. ``FLUSH_SLAVE_TIMEOUT``: written on the master, but
    fewer replicas acknowledged it within ``replica_timeout_ms`` (see
    ``SendResult.replicas``): a failover may still lose it.
    """

    SEND_OK = "SEND_OK"
    FLUSH_SLAVE_TIMEOUT = "FLUSH_SLAVE_TIMEOUT"


@dataclass(frozen=True, slots=True)
class SendResult:
    """Where a sent message landed.

    A delayed message has no offset yet: it is held until *deliver_at_ms*
    (server clock) and then written to *queue*. *replicas* is how many
    replicas acknowledged the write, when the producer asked for replicated
    sends (``min_replicas``); None otherwise.
    """

    msg_id: str
    queue: MessageQueue
    offset: str | None
    queue_offset: int | None
    deliver_at_ms: int | None = None
    status: SendStatus = SendStatus.SEND_OK
    replicas: int | None = None

    def __init__(
        self,
        msg_id: str,
        queue: MessageQueue,
        offset: str | None,
        queue_offset: int | None,
        deliver_at_ms: int | None = None,
        status: SendStatus = SendStatus.SEND_OK,
        replicas: int | None = None,
    ) -> None:
        # One per message sent: the slots are set directly, where a frozen dataclass's
        # own __init__ would call object.__setattr__ for each field.
        _set_msg_id(self, msg_id)
        _set_queue(self, queue)
        _set_offset(self, offset)
        _set_queue_offset(self, queue_offset)
        _set_deliver_at_ms(self, deliver_at_ms)
        _set_status(self, status)
        _set_replicas(self, replicas)


_set_msg_id, _set_queue, _set_offset, _set_queue_offset, _set_deliver_at_ms, _set_status, _set_replicas = (
    vars(SendResult)[name].__set__
    for name in ("msg_id", "queue", "offset", "queue_offset", "deliver_at_ms", "status", "replicas")
)


class ReceivedMessage:
    """A message as read from a queue (its attributes are read-only properties).

    It keeps the stream entry as Redis returned it and decodes each attribute
    when asked: building one costs next to nothing, so a pull of many messages
    pays only for what the application looks at.

    >>> m = decode_entry("orders", 0, b"1700000000000-0", {b"q": b"3", b"t": b"paid", b"d": b"x"})
    >>> (m.offset, m.queue_offset, m.tag, m.keys, m.properties, m.body, m.store_timestamp)
    ('1700000000000-0', 3, 'paid', (), {}, b'x', 1700000000000)
    """

    __slots__ = ("_entry", "_entry_id", "_properties", "_queue_id", "_topic")

    def __init__(
        self, topic: str, queue_id: int, entry_id: bytes | str, fields: Mapping[bytes, bytes] | list[bytes]
    ):
        """*fields*: the entry's, as a map or as Redis sends them (``[name, value, ...]``)."""
        self._topic = topic
        self._queue_id = queue_id
        self._entry_id = entry_id
        self._entry = fields
        self._properties: dict[str, str] | None = None

    @property
    def _fields(self) -> Mapping[bytes, bytes]:
        entry = self._entry
        if isinstance(entry, list):  # as read: mapped on first use (a listener may look at nothing)
            entry = self._entry = field_map(entry)
        return entry

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

    @property
    def problem(self) -> str | None:
        """None, or which field of the entry does not decode and why (docs/storage.md, field validity)."""
        return entry_problem(self._fields)

    def shown(self, name: str) -> Any:
        """Attribute *name* for display: its value, or a marker with the raw field when it does not decode.

        >>> m = decode_entry("orders", 0, b"1-0", {b"i": b"\\xff", b"r": b"two"})
        >>> m.shown("msg_id"), m.shown("reconsume_times"), m.shown("tag")
        ("<undecodable b'\\\\xff'>", "<undecodable b'two'>", None)
        """
        try:
            return getattr(self, name)
        except (ValueError, TypeError, RecursionError):  # not UTF-8 (UnicodeDecodeError), a number, JSON
            return f"<undecodable {shown_raw(self._fields.get(_FIELD_OF[name]) or b'')}>"

    def _identity(self) -> tuple[Any, ...]:
        return (self._topic, self._queue_id, self.offset, dict(self._fields))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReceivedMessage):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash((self._topic, self._queue_id, self.offset))

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={self.shown(name)!r}" for name in _SHOWN)
        return f"ReceivedMessage({shown})"


_SHOWN = ("msg_id", "topic", "queue_id", "offset", "queue_offset", "tag", "keys", "content_type")
_FIELD_OF = {
    "msg_id": b"i", "queue_offset": b"q", "reconsume_times": b"r", "born_timestamp": b"b", "born_at": b"b",
    "tag": b"t", "keys": b"k", "properties": b"p", "content_type": b"c",
}  # fmt: skip


_CONTENT_TYPES = {ct: ct.encode() for ct in ("b", "s", "j", "m")}
_EMPTY_WIRE = b"$0\r\n\r\n"


class EntryEncoder:
    """Encodes the messages of one batch for the send script (one clock reading for all).

    ``encode`` gives a message's values, the msg id then r b t k p c d
    (FIELD_ORDER after i and q), as a list and on the wire (``wire`` of each).
    """

    __slots__ = ("born", "born_ms", "codec", "id_prefix", "max_size", "plain_middle")

    def __init__(self, codec: Codec, max_size: int, born_ms: int) -> None:
        self.codec, self.max_size, self.born_ms = codec, max_size, born_ms
        self.born = b"%d" % born_ms
        self.id_prefix = f"{born_ms:012x}"
        # r b t k p of a message without tag, keys and properties, on the wire
        self.plain_middle = b"$1\r\n0\r\n%b%b%b%b" % (wire(self.born), _EMPTY_WIRE, _EMPTY_WIRE, _EMPTY_WIRE)

    def msg_ids(self, count: int) -> list[str]:
        """*count* new msg ids born at this encoder's time (see new_msg_id)."""
        return msg_ids_with_prefix(self.id_prefix, count)

    def encode(self, message: Message, msg_id: str) -> tuple[list[Any], bytes]:
        """Raise MessageTooLargeError (or SerializationError) before anything is written."""
        content_type, body = encode_body(message.body, self.codec)
        properties, keys, tag = message.properties, message.keys, message.tag
        kind = _CONTENT_TYPES.get(content_type) or content_type.encode()
        id_bytes = msg_id.encode()
        if not properties and not keys and not tag:  # the common case: one format, no extra values
            if len(body) > self.max_size:
                raise _too_large(message, len(body), self.max_size)
            packed = b"$%d\r\n%b\r\n%b$1\r\n%b\r\n$%d\r\n%b\r\n" % (
                len(id_bytes), id_bytes, self.plain_middle, kind, len(body), body
            )  # fmt: skip
            return [msg_id, b"0", self.born, b"", b"", b"", kind, body], packed
        props = json.dumps(dict(properties), separators=(",", ":")).encode() if properties else b""
        joined = " ".join(keys).encode() if keys else b""
        size = len(body) + len(props) + len(joined)
        if size > self.max_size:
            raise _too_large(message, size, self.max_size)
        tag_bytes = tag.encode() if tag else b""
        packed = b"$%d\r\n%b\r\n$1\r\n0\r\n%b%b%b%b$1\r\n%b\r\n$%d\r\n%b\r\n" % (
            len(id_bytes),
            id_bytes,
            wire(self.born),
            wire(tag_bytes) if tag_bytes else _EMPTY_WIRE,
            wire(joined) if joined else _EMPTY_WIRE,
            wire(props) if props else _EMPTY_WIRE,
            kind,
            len(body),
            body,
        )
        return [msg_id, b"0", self.born, tag_bytes, joined, props, kind, body], packed


def _too_large(message: Message, size: int, max_size: int) -> MessageTooLargeError:
    return MessageTooLargeError(
        f"message to {message.topic!r} is {size} bytes, over the limit of {max_size} bytes "
        "(raise max_message_size, or store the payload elsewhere and send a reference)"
    )


def field_map(flat: list[bytes]) -> dict[bytes, bytes]:
    """An entry's fields as Redis sends them (``[name, value, ...]``) as a map (a name twice: its last value).

    >>> field_map([b"i", b"x", b"d", b"1", b"d", b"2"])
    {b'i': b'x', b'd': b'2'}
    """
    pairs = iter(flat)
    return dict(zip(pairs, pairs, strict=False))


def decode_entry(
    topic: str, queue_id: int, entry_id: bytes | str, fields: Mapping[bytes, bytes] | list[bytes]
) -> ReceivedMessage:
    """The received view of one stream entry (hot path of every consumer: decoding is deferred)."""
    return ReceivedMessage(topic, queue_id, entry_id, fields)
