"""Queue allocation among the live members of a group (RocketMQ's strategies), pure.

Every member computes its share from the same sorted inputs, so the shares
are disjoint and cover every queue once all members see the same member list.

>>> qs = [MessageQueue("t", i) for i in range(8)]
>>> [q.queue_id for q in allocate_averagely(qs, ["a", "b", "c"], "a")]
[0, 1, 2]
>>> [q.queue_id for q in allocate_averagely(qs, ["a", "b", "c"], "c")]
[6, 7]
>>> [q.queue_id for q in allocate_by_circle(qs, ["a", "b", "c"], "b")]
[1, 4, 7]
>>> allocate_averagely(qs, ["a"], "z")
[]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from ._message import MessageQueue

__all__ = ["STRATEGIES", "AllocationStrategy", "allocate_averagely", "allocate_by_circle"]

AllocationStrategy = Literal["averagely", "circle"]


def allocate_averagely(queues: Sequence[MessageQueue], members: Sequence[str], me: str) -> list[MessageQueue]:
    """Contiguous blocks; the first ``len(queues) % len(members)`` members get one more."""
    ordered_members = sorted(set(members))
    if me not in ordered_members:
        return []
    ordered = sorted(queues)
    index, n = ordered_members.index(me), len(ordered_members)
    base, extra = divmod(len(ordered), n)
    start = index * base + min(index, extra)
    size = base + (1 if index < extra else 0)
    return ordered[start : start + size]


def allocate_by_circle(queues: Sequence[MessageQueue], members: Sequence[str], me: str) -> list[MessageQueue]:
    """Round-robin: queue k goes to member ``k % len(members)``."""
    ordered_members = sorted(set(members))
    if me not in ordered_members:
        return []
    index, n = ordered_members.index(me), len(ordered_members)
    return [q for k, q in enumerate(sorted(queues)) if k % n == index]


STRATEGIES: dict[str, Callable[[Sequence[MessageQueue], Sequence[str], str], list[MessageQueue]]] = {
    "averagely": allocate_averagely,
    "circle": allocate_by_circle,
}
