"""Orderly broadcasting: each member handles the messages of each queue one at a time, in offset order.

Order is per member (no lock: no other member reads for it). A queue of an
orderly subscription is read only while none of its messages is in flight,
and a read keeps one entry of it (``one_per_queue``: XREAD has no side
effect, so what is left out is read again next time). A failure holds the
queue: the same message is handed to the runner again after
``suspend_current_queue_time_ms``, with ``reconsume_times`` = its failed
attempts, until it succeeds or, after ``max_reconsume_times`` retries (-1:
forever), is dead-lettered for this member (``OrderlyHold``): no retry
record, as RocketMQ's orderly listeners.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .._message import ReceivedMessage
from .context import Context
from .fetch import Fetcher
from .outcomes import DeadLetterIt, Proceed, Suspend, decide_orderly
from .settling import Settler
from .state import Delivery, QueueState

__all__ = ["OrderlyHold", "one_per_queue"]


def orderly(c: Context, q: QueueState) -> bool:
    return q.mq.topic in c.orderly_topics


def one_per_queue(c: Context, reply: Any) -> Any:
    """*reply* with at most one entry per orderly queue (the first one read); other queues as read."""
    if not c.orderly_topics or not reply:
        return reply
    taken: set[int] = set()
    out = []
    for key, entries in reply:
        stream = c.streams.get(key if isinstance(key, bytes) else key.encode())
        if stream is None or not entries or not orderly(c, stream.queue):
            out.append((key, entries))
        elif id(stream.queue) not in taken:
            taken.add(id(stream.queue))
            out.append((key, entries[:1]))
    return out


class OrderlyHold:
    """The settler's ``hold``: failures of orderly queues are tried again in place."""

    def __init__(self, c: Context, settling: Settler, fetcher: Fetcher) -> None:
        self.c, self.settling, self.fetcher = c, settling, fetcher
        # per orderly queue (one message of it in flight at a time): the held delivery, its failed
        # attempts so far; a success is acked without a word to us: the next delivery replaces it
        self.held: dict[QueueState, tuple[Delivery, int]] = {}

    def __call__(self, d: Delivery, outcome: object) -> bool:
        c = self.c
        if not orderly(c, d.stream.queue):
            return False
        held = self.held.pop(d.stream.queue, None)
        failed = held[1] if held is not None and held[0] is d else 0
        decision = decide_orderly(outcome, failed, c.settings.max_reconsume_times)
        if isinstance(decision, Proceed):
            return False  # a success: the settler acks it
        c.stats.failed += 1
        event = self.settling.event(d)
        if isinstance(decision, DeadLetterIt):
            event.warning(
                "message.failed", reconsume_times=failed, reason=decision.reason, next="dead_letter"
            )
            self.settling.settle(d, decision)
            return True
        assert isinstance(decision, Suspend)
        c.stats.suspended += 1
        event.warning("message.failed", reconsume_times=failed, reason=decision.reason, next="suspend")
        self.held[d.stream.queue] = (d, decision.attempts)
        delay = c.settings.suspend_current_queue_time_ms / 1000
        asyncio.get_running_loop().call_later(delay, self.again, d, decision.attempts)
        return True

    def again(self, d: Delivery, attempts: int) -> None:
        """Hand the held message to the runner again (it stays in flight: its queue is not read meanwhile)."""
        if self.c.stopping.is_set() or d.message is None:
            self.held.pop(d.stream.queue, None)
            return  # left in flight: the position stays before it, the next start handles it
        fields = dict(d.fields)
        fields[b"r"] = str(attempts).encode()
        d.raw = fields
        d.message = ReceivedMessage(d.message.topic, d.message.queue_id, d.entry_id, fields)
        self.fetcher.submit(d.stream.queue.sub, [d])
