"""Bytes as Redis and the Lua scripts read them: RESP bulk strings, and length-prefixed packs."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["pack_fields", "unpack_fields", "wire"]


def wire(value: bytes) -> bytes:
    """*value* as a RESP bulk string: what a command argument looks like on the wire.

    >>> wire(b"j")
    b'$1\\r\\nj\\r\\n'
    """
    return b"$%d\r\n%b\r\n" % (len(value), value)


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
        if length < 0 or colon + 1 + length > len(blob):  # hostile: never loop back, never cut short
            raise ValueError(f"malformed packed fields at {pos}")
        out.append(blob[colon + 1 : colon + 1 + length])
        pos = colon + 1 + length
    return out
