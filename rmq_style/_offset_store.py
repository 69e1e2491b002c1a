"""Where a group's position in a queue is kept, and the consume progress (lag) of (group, queue).

Clustering: the position is the queue stream's consumer group (``XGROUP``): the
same place push consumers of the group read from, so pull and push consumers
of one group never disagree. A position names the last consumed entry (pull
reads after it); committing also sets ``entries-read`` from the entries' ``q``
field, so Redis' lag is exact, and acknowledges the group's pending entries up
to it. Broadcasting: each consumer instance keeps its own position in the hash
``rmq:{T:i}:bcast:<group>`` (field = instance name); no retries.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Literal

from ._call_values import Call, Flow, command, run_script, single
from ._errors import InvalidOffsetError
from ._message import MessageQueue
from ._names import Keys
from ._offsets import Offset, parse_offset
from ._replies import ReplyCode, classify, is_error_reply

__all__ = ["MessageModel", "OffsetStore", "QueueProgress", "default_instance_name", "progress_flow"]

MessageModel = Literal["clustering", "broadcasting"]


def default_instance_name() -> str:
    """host@pid: broadcasting positions belong to an instance (give a stable name to keep them)."""
    return f"{socket.gethostname()}@{os.getpid()}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _no_such_key(reply: Any) -> bool:
    return is_error_reply(reply) and "no such key" in str(reply).lower()


def _group_info(reply: Any, group: str) -> dict[str, Any] | None:
    if _no_such_key(reply):
        return None
    for raw in single(reply):
        # flat [name, value, ...] as sent by Redis (execute_command applies no XINFO parser)
        info = dict(raw) if isinstance(raw, dict) else dict(zip(raw[::2], raw[1::2], strict=True))
        info = {_text(k): v for k, v in info.items()}
        if _text(info["name"]) == group:
            return info
    return None


@dataclass(frozen=True, slots=True)
class OffsetStore:
    """Committed positions of one consumer (group, message model, instance)."""

    keys: Keys
    group: str
    model: MessageModel = "clustering"
    instance: str = ""

    def committed_flow(self, queue: MessageQueue) -> Flow[Offset | None]:
        qk = self.keys.queue(queue.topic, queue.queue_id)
        if self.model == "broadcasting":
            (value,) = yield [command("HGET", qk.broadcast(self.group), self.instance)]
            value = single(value)
            return parse_offset(value) if value else None
        (reply,) = yield [command("XINFO", "GROUPS", qk.stream)]
        info = _group_info(reply, self.group)
        return None if info is None else parse_offset(info["last-delivered-id"])

    def commit_calls(self, queue: MessageQueue, position: Offset, *, init: bool = False) -> list[Call]:
        """Store *position*; with init=True only where nothing is stored yet. Read with parse_commit."""
        qk = self.keys.queue(queue.topic, queue.queue_id)
        if self.model == "broadcasting":
            key = qk.broadcast(self.group)
            if init:
                return [
                    command("HSETNX", key, self.instance, str(position)),
                    command("HGET", key, self.instance),
                ]
            return [command("HSET", key, self.instance, str(position))]
        mode = "init" if init else "set"
        return [run_script("commit_offset", (qk.stream, qk.seq), (self.group, str(position), mode))]

    def parse_commit(self, queue: MessageQueue, position: Offset, replies: list[Any]) -> Offset:
        """The position in effect after commit_calls (the stored one, for init)."""
        last = replies[-1]
        if classify(last) is ReplyCode.OFFSETRANGE:
            end = str(last).partition(" ")[2]
            raise InvalidOffsetError(
                f"offset {position} of queue {queue} lies after its last entry {end}: "
                "commit an offset returned by a pull"
            ) from None
        for reply in replies:
            single(reply)
        if self.model == "broadcasting":
            return parse_offset(last) if len(replies) > 1 else position
        return parse_offset(last[0])

    def commit_flow(self, queue: MessageQueue, position: Offset, *, init: bool = False) -> Flow[Offset]:
        replies = yield self.commit_calls(queue, position, init=init)
        return self.parse_commit(queue, position, replies)


@dataclass(frozen=True, slots=True)
class QueueProgress:
    """Consume progress of a group in one queue (RocketMQ's consumerProgress row)."""

    queue: MessageQueue
    max_queue_offset: int  # messages ever written to the queue
    group_offset: str | None  # last consumed entry id; None: the group has no position here
    consumed_queue_offset: int  # messages the group has read (exclusive queue offset)
    lag: int  # never negative
    pending: int  # delivered to push consumers, not yet acknowledged


def _entry_q(entry: Any) -> int | None:
    fields = entry[1]
    value = fields.get(b"q") if isinstance(fields, dict) else None
    return None if value is None else int(value)


def progress_flow(keys: Keys, group: str, queue: MessageQueue) -> Flow[QueueProgress]:
    """Max queue offset, the group's position, lag and pending count of (group, queue)."""
    qk = keys.queue(queue.topic, queue.queue_id)
    seq, groups = yield [command("GET", qk.seq), command("XINFO", "GROUPS", qk.stream)]
    max_q = int(single(seq) or 0)
    info = _group_info(groups, group)
    if info is None:
        return QueueProgress(queue, max_q, None, 0, max_q, 0)
    delivered = _text(info["last-delivered-id"])
    read = info.get("entries-read")
    if read is None:  # Redis could not count (e.g. after a deletion): count from the q field
        before, after = yield [
            command("XREVRANGE", qk.stream, delivered, "-", "COUNT", 1),
            command("XRANGE", qk.stream, f"({delivered}", "+", "COUNT", 1),
        ]
        before, after = single(before), single(after)
        q_before = _entry_q(before[0]) if before else None
        q_after = _entry_q(after[0]) if after else None
        read = q_before + 1 if q_before is not None else q_after if q_after is not None else max_q
    consumed = min(int(read), max_q)
    return QueueProgress(queue, max_q, delivered, consumed, max(0, max_q - consumed), int(info["pending"]))
