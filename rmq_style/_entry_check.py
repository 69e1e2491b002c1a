"""Whether a stream entry is a message a consumer can hand to a listener (pure, no I/O).

Producers of rmq_style always write well-formed entries; an entry written by
anything else (a raw XADD, another language's producer with a bug) may carry
any field names and values. A consumer checks each entry once, when it is
read, against the table "Field validity" of docs/storage.md: what does not
pass goes to the dead-letter queue on first delivery, with a reason naming
the field, and is never handed to a listener.

>>> entry_problem({b"i": b"0" * 32, b"r": b"0", b"c": b"j", b"d": b"{}"})
>>> entry_problem({b"i": b"\\xff", b"d": b"x"})
"field 'i' (msg id) is not UTF-8 text: b'\\\\xff'"
>>> entry_problem({b"i": b"x", b"r": b"two"})
"field 'r' (reconsume times) is not a decimal integer: b'two'"
>>> rejection({b"d": b"x"}, 10)
"undecodable entry: field 'i' (msg id) is missing or empty"
>>> size_problem({b"d": b"12345"}, 4)
'the message is 5 bytes (body, properties and keys), over the limit of 4 bytes (max_message_size)'
>>> shown(b"paid"), shown(b"\\xff\\xfe")
('paid', "<undecodable b'\\\\xff\\\\xfe'>")
"""

from __future__ import annotations

import json
from collections.abc import Mapping

__all__ = ["MAX_MSG_ID_BYTES", "entry_problem", "plain", "raw", "rejection", "shown", "size_problem"]

MAX_MSG_ID_BYTES = 128
_NUMBERS = ((b"q", "queue offset"), (b"r", "reconsume times"), (b"b", "born timestamp"))
_TEXTS = ((b"t", "tag"), (b"k", "keys"))
_CONTENT_TYPES = frozenset((b"b", b"s", b"j", b"m", b""))  # empty: raw bytes, as missing
_MAX_DIGITS = 15  # exact in a double (Lua's numbers, includes/entry.lua), and in any integer type
_SHOWN_BYTES = 40
# the fields of an entry written by a producer of rmq_style, in their order (_message.FIELD_ORDER)
_LAYOUT = [b"i", b"q", b"r", b"b", b"t", b"k", b"p", b"c", b"d"]
_LAYOUT_LEN = 2 * len(_LAYOUT)


def raw(value: bytes) -> str:
    """*value* for a reason or a display: its repr, cut to a readable length."""
    if len(value) <= _SHOWN_BYTES:
        return repr(value)
    return f"{value[:_SHOWN_BYTES]!r}... ({len(value)} bytes)"


def _is_text(value: bytes) -> bool:
    if value.isascii():  # the common case, without decoding
        return True
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


def entry_problem(fields: Mapping[bytes, bytes]) -> str | None:
    """None when every field can be read as docs/storage.md says; else which field is wrong and why.

    Unknown fields are ignored; a missing field other than ``i`` reads as its default.
    """
    return None if _common(fields, -1) else _problem(fields)


def _common(fields: Mapping[bytes, bytes], max_size: int) -> bool:
    """Whether *fields* are those of a plain good message (no properties; within *max_size* unless -1).

    The same test as ``plain``, on a map (an entry as redis-py makes it, or in another layout).
    """
    get = fields.get
    msg_id, q, r, b, tag, keys = get(b"i"), get(b"q"), get(b"r"), get(b"b"), get(b"t"), get(b"k")
    return bool(
        msg_id
        and len(msg_id) <= MAX_MSG_ID_BYTES
        and msg_id.isascii()
        and (not q or (q.isdigit() and len(q) <= _MAX_DIGITS))
        and (not r or r == b"0" or (r.isdigit() and len(r) <= _MAX_DIGITS))
        and (not b or (b.isdigit() and len(b) <= _MAX_DIGITS))
        and (not tag or tag.isascii())
        and (not keys or keys.isascii())
        and get(b"c", b"") in _CONTENT_TYPES
        and not get(b"p")
        and (max_size < 0 or len(get(b"d") or b"") + len(keys or b"") <= max_size)
    )


def plain(flat: list[bytes], max_size: int) -> bool:
    """Whether *flat*, an entry's fields as Redis sends them (``[name, value, ...]``), are those of a
    plain good message in the producers' layout: every field of FIELD_ORDER, in that order.

    Every consumer runs this on every entry it reads: the common case, checked in
    one expression without building a map. False is no verdict: ``rejection`` of
    the map decides (tests/test_hostile.py: both say the same of any entry).

    >>> plain([b"i", b"0" * 32, b"q", b"7", b"r", b"0", b"b", b"1", b"t", b"", b"k", b"", b"p", b"",
    ...        b"c", b"j", b"d", b"{}"], 100)
    True
    >>> plain([b"i", b"0" * 32, b"d", b"{}"], 100)  # another layout: not plain (yet well-formed)
    False
    """
    if len(flat) != _LAYOUT_LEN or flat[0::2] != _LAYOUT:
        return False
    _, msg_id, _, q, _, r, _, b, _, tag, _, keys, _, props, _, content_type, _, body = flat
    return bool(
        msg_id
        and len(msg_id) <= MAX_MSG_ID_BYTES
        and msg_id.isascii()
        and (not q or (q.isdigit() and len(q) <= _MAX_DIGITS))
        and (r == b"0" or not r or (r.isdigit() and len(r) <= _MAX_DIGITS))
        and (not b or (b.isdigit() and len(b) <= _MAX_DIGITS))
        and (not tag or tag.isascii())
        and (not keys or keys.isascii())
        and content_type in _CONTENT_TYPES
        and not props
        and len(body) + len(keys) <= max_size
    )


def _problem(fields: Mapping[bytes, bytes]) -> str | None:
    get = fields.get
    msg_id = get(b"i")
    if not msg_id:
        return "field 'i' (msg id) is missing or empty"
    if not _is_text(msg_id):
        return f"field 'i' (msg id) is not UTF-8 text: {raw(msg_id)}"
    if len(msg_id) > MAX_MSG_ID_BYTES:
        return f"field 'i' (msg id) is {len(msg_id)} bytes long, over {MAX_MSG_ID_BYTES}"
    for name, what in _NUMBERS:
        value = get(name)
        if value and not (value.isdigit() and len(value) <= _MAX_DIGITS):
            return f"field {name.decode()!r} ({what}) is not a decimal integer: {raw(value)}"
    for name, what in _TEXTS:
        value = get(name)
        if value and not _is_text(value):
            return f"field {name.decode()!r} ({what}) is not UTF-8 text: {raw(value)}"
    content_type = get(b"c")
    if content_type not in _CONTENT_TYPES and content_type is not None:
        return f"field 'c' (content type) is not one of b, s, j, m: {raw(content_type)}"
    properties = get(b"p")
    if properties:
        problem = _properties_problem(properties)
        if problem is not None:
            return f"field 'p' (properties) {problem}: {raw(properties)}"
    return None


def _properties_problem(value: bytes) -> str | None:
    try:
        decoded = json.loads(value)
    except (ValueError, RecursionError):  # UnicodeDecodeError included; nesting too deep
        return "is not JSON"
    if not isinstance(decoded, dict) or not all(isinstance(v, str) for v in decoded.values()):
        return "is not a JSON object of strings"
    return None


def size_problem(fields: Mapping[bytes, bytes], max_size: int) -> str | None:
    """The producer's size rule, read back: body, properties and keys together at most *max_size* bytes."""
    get = fields.get
    size = len(get(b"d") or b"") + len(get(b"p") or b"") + len(get(b"k") or b"")
    if size <= max_size:
        return None
    return (
        f"the message is {size} bytes (body, properties and keys), "
        f"over the limit of {max_size} bytes (max_message_size)"
    )


def rejection(fields: Mapping[bytes, bytes], max_size: int) -> str | None:
    """Why a consumer dead-letters this entry on first delivery (None: hand it to the listener)."""
    if _common(fields, max_size):
        return None
    problem = _problem(fields)
    if problem is not None:
        return f"undecodable entry: {problem}"
    problem = size_problem(fields, max_size)
    return None if problem is None else f"message too large: {problem}"


def shown(value: bytes) -> str:
    """A field for display: its text, or a marker with the raw bytes when it is not UTF-8."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return f"<undecodable {raw(value)}>"
