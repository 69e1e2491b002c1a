"""Idempotent claims as plain commands on the lane: ``SET mark owner NX PX lease GET`` per key.

idem_claim.lua spends about 2 µs of the server's time per key, half of it Lua's overhead per
``redis.call``; a plain SET spends about 1. The claims of a read go packed in one write on the
lane and their replies are taken straight from hiredis (no redis-py read_response per reply).
A reply decides the common cases: nil, claimed; "consumed", a duplicate. Any other reply (a
"consuming" mark, whose lease only the script checks; junk of any value or type; an error, such
as a server without SET ... GET) sends that key through idem_claim.lua, which decides as before.
A client that does not pack calls (cluster, fakeredis) claims by the script alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from .._async._io import AsyncClient, _packs, execute
from .._async._lane import (
    HIREDIS_PARSER,
    NOT_ENOUGH_DATA,
    RedisConnectionError,
    RedisTimeoutError,
    _send,
    direct_round_trip,
    exchange,
)
from .idempotence import CONSUMED, Verdict, claim_call, verdicts

__all__ = ["claim"]

_CONSUMED_TEXT = CONSUMED.decode()


async def claim(
    client: AsyncClient, prefix: str, owner: bytes, lease: int, keys: Sequence[str | bytes]
) -> list[Verdict] | None:
    """The verdicts of claiming *keys*; None when all are claimed (the common case, one check)."""
    if not _packs(client):
        (reply,) = await execute(client, [claim_call(prefix, owner, lease, keys)])
        if isinstance(reply, bytes) and reply.count(b"r") == len(keys):
            return None
        return verdicts(reply, len(keys))
    replies = await direct_round_trip(client, pack_claims(prefix, owner, lease, keys), len(keys), _read)
    if replies.count(None) == len(keys):
        return None
    found: list[Verdict | None] = [
        Verdict.RUN if r is None else Verdict.DUPLICATE if r in (CONSUMED, _CONSUMED_TEXT) else None
        for r in replies
    ]
    rest = [i for i, v in enumerate(found) if v is None]
    if rest:  # in progress, junk or refused: the script decides (and replaces junk)
        (reply,) = await execute(client, [claim_call(prefix, owner, lease, [keys[i] for i in rest])])
        for i, verdict in zip(rest, verdicts(reply, len(rest)), strict=True):
            found[i] = verdict
    return found  # type: ignore[return-value]


def pack_claims(prefix: str, owner: bytes, lease: int, keys: Sequence[str | bytes]) -> bytes:
    """``SET prefix+key owner NX PX lease GET`` of each key, in the wire format.

    >>> pack_claims("m:", b"o", 5, [b"a"])
    b'*7\\r\\n$3\\r\\nSET\\r\\n$3\\r\\nm:a\\r\\n$1\\r\\no\\r\\n$2\\r\\nNX\\r\\n$2\\r\\nPX\\r\\n$1\\r\\n5\\r\\n$3\\r\\nGET\\r\\n'
    """
    ms = b"%d" % lease
    tail = b"$%d\r\n%b\r\n$2\r\nNX\r\n$2\r\nPX\r\n$%d\r\n%b\r\n$3\r\nGET\r\n"
    tail %= (len(owner), owner, len(ms), ms)
    head = prefix.encode()
    marks = [head + (k if type(k) is bytes else k.encode()) for k in keys]  # type: ignore[union-attr]
    return b"".join([b"*7\r\n$3\r\nSET\r\n$%d\r\n%b\r\n%b" % (len(m), m, tail) for m in marks])


async def _read(conn: Any, packed: bytes, count: int) -> list[Any]:
    """The lane's exchange with the replies taken from hiredis in one loop (redis-py's own parser
    otherwise): an error reply is its exception, as ``exchange`` gives it."""
    if type(getattr(conn, "_parser", None)) is not HIREDIS_PARSER:
        return await exchange(conn, packed, count)
    parser: Any = conn._parser
    await _send(conn, packed)
    gets = parser._reader.gets  # set on connect: taken after the send
    replies: list[Any] = []
    try:
        async with asyncio.timeout(conn.socket_timeout):
            while len(replies) < count:
                reply = gets()
                if reply is NOT_ENOUGH_DATA:
                    await parser.read_from_socket()
                elif isinstance(reply, RedisConnectionError):
                    raise reply
                else:
                    replies.append(reply)
    except TimeoutError as exc:
        raise RedisTimeoutError("Timeout reading from the lane") from exc
    return replies
