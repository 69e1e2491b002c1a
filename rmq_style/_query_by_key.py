"""Find messages of a topic by business key, msg id or tag: RocketMQ's queryMsgByKey, as a bounded scan.

There is no secondary index (a write would cost one more call per message):
each queue is read from its newest entry backwards, ``chunk`` entries per
round trip and at most ``scan`` entries per queue, until ``limit`` matches are
found. Good for operations ("did order 42 arrive, where, and what was in it?"),
not for a lookup per request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ._call_values import Flow, command, single
from ._errors import UsageError
from ._message import ReceivedMessage, decode_entry
from ._names import Keys
from ._topics import route_flow

__all__ = ["MessageQuery", "find_flow"]


@dataclass(frozen=True, slots=True)
class MessageQuery:
    """What to look for: every given criterion must match.

    >>> MessageQuery(key="order-7").matches({b"k": b"user-1 order-7", b"i": b"x"})
    True
    >>> MessageQuery(key="order-7", tag="paid").matches({b"k": b"order-7", b"t": b"created"})
    False
    """

    key: str | None = None
    msg_id: str | None = None
    tag: str | None = None

    def __post_init__(self) -> None:
        if self.key is None and self.msg_id is None and self.tag is None:
            raise UsageError("look for a key, a msg id or a tag")

    def matches(self, fields: Mapping[bytes, bytes]) -> bool:
        # compared as bytes: an entry whose fields are not UTF-8 is no match, not an error
        if self.msg_id is not None and fields.get(b"i", b"") != self.msg_id.encode():
            return False
        if self.tag is not None and fields.get(b"t", b"") != self.tag.encode():
            return False
        return self.key is None or self.key.encode() in fields.get(b"k", b"").split(b" ")


def find_flow(
    keys: Keys, topic: str, query: MessageQuery, *, limit: int = 64, scan: int = 100_000, chunk: int = 1000
) -> Flow[list[ReceivedMessage]]:
    """Matches, newest first by store time, at most *limit*; each queue read back *scan* entries at most."""
    if limit < 1 or scan < 1 or chunk < 1:
        raise UsageError("limit, scan and chunk must be positive")
    route = yield from route_flow(keys, topic)
    found: list[ReceivedMessage] = []
    # per queue: where the next backward read starts, and how many entries were read
    cursors = {q: "+" for q in range(route.queue_count)}
    scanned = dict.fromkeys(cursors, 0)
    match: Callable[[Mapping[bytes, bytes]], bool] = query.matches
    while cursors and len(found) < limit:
        queues = list(cursors)
        replies = yield [
            command("XREVRANGE", keys.queue(topic, q).stream, cursors[q], "-", "COUNT", min(chunk, scan - n))
            for q, n in ((q, scanned[q]) for q in queues)
        ]
        for q, reply in zip(queues, replies, strict=True):
            entries = single(reply)
            found += [decode_entry(topic, q, eid, fields) for eid, fields in entries if match(fields)]
            scanned[q] += len(entries)
            if not entries or scanned[q] >= scan or len(entries) < chunk:
                del cursors[q]
            else:
                last = entries[-1][0]
                cursors[q] = "(" + (last.decode() if isinstance(last, bytes) else last)
    found.sort(key=_newest_first, reverse=True)
    return found[:limit]


def _newest_first(m: ReceivedMessage) -> tuple[int, int]:
    """Store time, then queue offset (-1 when the entry's q is not a number: no producer of ours wrote it)."""
    q = m.shown("queue_offset")
    return m.store_timestamp, q if isinstance(q, int) else -1
