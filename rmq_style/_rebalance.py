"""The rebalance decision, shared by the push and the lite pull consumers, pure.

Given the live members of a topic (a heartbeat's reply) and its queue count,
which queues are this member's; given what it owns now, which queues it
gains and which it loses; given the queue counts at the last rebalance,
which queues the topics gained while it ran (those start at their first
entry). The I/O around it (heartbeats, groups, positions) stays in each
consumer's front.

>>> mine = my_queues("t", 4, [b"a", b"b"], "b", "averagely")
>>> [q.queue_id for q in mine]
[2, 3]
>>> change = reassign([MessageQueue("t", 1), MessageQueue("t", 2)], mine)
>>> [q.queue_id for q in change.gained], [q.queue_id for q in change.lost]
([3], [1])
>>> sorted(q.queue_id for q in grown_queues({"t": 2}, {"t": 4, "u": 8}))
[2, 3]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ._allocation import STRATEGIES, AllocationStrategy
from ._call_values import single
from ._message import MessageQueue

__all__ = ["Reassignment", "all_queues", "grown_queues", "my_queues", "reassign"]


def my_queues(
    topic: str, queue_count: int, members_reply: object, member: str, strategy: AllocationStrategy
) -> list[MessageQueue]:
    """This member's share of *topic*'s queues among the members of a heartbeat's reply."""
    members = [m.decode() if isinstance(m, bytes) else str(m) for m in single(members_reply)]
    return STRATEGIES[strategy](all_queues(topic, queue_count), members, member)


def all_queues(topic: str, queue_count: int) -> list[MessageQueue]:
    """Every queue of *topic* (a broadcasting consumer's share)."""
    return [MessageQueue(topic, q) for q in range(queue_count)]


@dataclass(frozen=True, slots=True)
class Reassignment:
    gained: list[MessageQueue]  # sorted
    lost: list[MessageQueue]  # in the order they were owned


def reassign(owned: Iterable[MessageQueue], wanted: Iterable[MessageQueue]) -> Reassignment:
    """What changes when a member owning *owned* is to own *wanted*."""
    have, want = list(owned), set(wanted)
    held = set(have)
    return Reassignment(
        gained=sorted(q for q in want if q not in held), lost=[q for q in have if q not in want]
    )


def grown_queues(before: Mapping[str, int], counts: Mapping[str, int]) -> set[MessageQueue]:
    """The queues topics gained since the counts *before* (a topic not seen before gained none)."""
    return {MessageQueue(t, q) for t, n in counts.items() if t in before for q in range(before[t], n)}
