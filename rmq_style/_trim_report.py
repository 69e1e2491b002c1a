"""Entries a maxlen trim removed before a group was delivered them: read and mark as logged (no I/O).

The writing scripts count them per group in ``rmq:{T:i}:trimmed`` (docs/storage.md,
"Retention"); a consumer of the group logs what is new since the field
``G:reported`` and moves that field up, so a loss is logged once, also when it
happened while no consumer ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._call_values import Call, command, single
from ._message import MessageQueue
from ._names import Keys

__all__ = ["TrimLoss", "mark_reported_calls", "trim_loss_calls", "trim_losses"]


@dataclass(frozen=True, slots=True)
class TrimLoss:
    queue: MessageQueue
    new: int  # trimmed since the last report
    total: int  # trimmed in all


def _reported_field(group: str) -> str:
    return f"{group}:reported"  # ':' never occurs in a group name, so no group owns this field


def trim_loss_calls(keys: Keys, group: str, queues: Sequence[MessageQueue]) -> list[Call]:
    return [
        command("HMGET", keys.queue(q.topic, q.queue_id).trimmed, group, _reported_field(group))
        for q in queues
    ]


def trim_losses(queues: Sequence[MessageQueue], replies: Sequence[Any]) -> list[TrimLoss]:
    """The queues with entries trimmed since the last report (replies of trim_loss_calls).

    >>> q = MessageQueue("orders", 0)
    >>> trim_losses([q, q], [[b"40", b"10"], [None, None]])
    [TrimLoss(queue=MessageQueue(topic='orders', queue_id=0), new=30, total=40)]
    """
    out = []
    for queue, reply in zip(queues, replies, strict=True):
        total, reported = (int(v or 0) for v in single(reply))
        if total > reported:
            out.append(TrimLoss(queue, total - reported, total))
    return out


def mark_reported_calls(keys: Keys, group: str, losses: Sequence[TrimLoss]) -> list[Call]:
    return [
        command("HSET", keys.queue(x.queue.topic, x.queue.queue_id).trimmed, _reported_field(group), x.total)
        for x in losses
    ]
