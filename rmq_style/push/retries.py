"""Retries and delayed release: due retries into the retry streams, due delayed messages into their queue."""

from __future__ import annotations

from typing import Any

from .._async._io import execute
from .._call_values import Call as RedisCall
from .._message import MessageQueue
from .._producing import release_due_call
from .._topics import TopicRoute
from .context import TRANSIENT, Context
from .redis_calls import release_retries_call
from .state import QueueState
from .waits import wait_any

__all__ = ["Retries"]

RELEASE_LIMIT = 500


class Retries:
    def __init__(self, c: Context) -> None:
        self.c = c

    async def retry_loop(self) -> None:
        """Release the due retries of the owned queues and the due delayed messages of every queue owned.

        Waits until the next one is due (by the server clock) or retry_poll_ms at most. A delayed
        message is released into the topic's queue by a script, so of several groups owning that
        queue the first one moves it and the others find nothing (never twice).
        """
        client = self.c.client
        assert client is not None
        s = self.c.settings
        backoff = self.c.backoff()
        while not self.c.stopping.is_set():
            owned = [q for q in self.c.queues.values() if q.owned]
            delayed = [q.mq for q in owned] + (self.c.orderly.owned if self.c.orderly is not None else [])
            wait_ms = s.retry_poll_ms
            self.c.retry_wakeup.clear()
            if delayed:
                calls = [self.release_retries_call(q) for q in owned]
                calls += [self.release_due_call(mq) for mq in delayed]
                try:
                    replies = await execute(client, calls)
                    backoff.reset()
                except TRANSIENT as exc:
                    self.c.log.warning("consumer.redis_unavailable", task="retries", error=str(exc))
                    await backoff.wait(self.c.stopping)
                    continue
                for q, reply in zip(owned, replies, strict=False):
                    if isinstance(reply, Exception):
                        self.c.log.error(
                            "retries.release_failed", topic=q.mq.topic, queue=q.mq.queue_id, error=str(reply)
                        )
                        continue
                    moved, next_ms = int(reply[0]), int(reply[1])
                    if moved:
                        q.streams[1].wanted = True
                        self.c.capacity.set()
                    if moved >= RELEASE_LIMIT:
                        wait_ms = 0
                    elif next_ms >= 0:
                        wait_ms = min(wait_ms, next_ms)
                for mq, reply in zip(delayed, replies[len(owned) :], strict=True):
                    wait_ms = min(wait_ms, self.delayed_wait_ms(mq, reply, s.retry_poll_ms))
            if wait_ms > 0:
                await wait_any(self.c.stopping, self.c.retry_wakeup, wait_ms / 1000)

    def release_retries_call(self, q: QueueState) -> RedisCall:
        """Due retries of *q* into the stream read as ``q.streams[1]``."""
        return release_retries_call(q.keys, self.c.group, RELEASE_LIMIT)

    def release_due_call(self, mq: MessageQueue) -> RedisCall:
        sub = self.c.subs[mq.topic]
        route = TopicRoute(mq.topic, sub.queue_count, sub.retention)
        return release_due_call(self.c.keys, route, mq.queue_id, RELEASE_LIMIT)

    def delayed_wait_ms(self, mq: MessageQueue, reply: Any, poll_ms: int) -> int:
        """How long until the queue's next delayed message is due (its release_due reply)."""
        if isinstance(reply, Exception):
            self.c.log.error("delayed.release_failed", topic=mq.topic, queue=mq.queue_id, error=str(reply))
            return poll_ms
        moved, next_ms, now_ms = int(reply[0]), int(reply[1]), int(reply[2])
        if moved:
            self.c.log.debug("delayed.released", topic=mq.topic, queue=mq.queue_id, count=moved)
        if moved >= RELEASE_LIMIT:
            return 0
        if next_ms < 0 or (next_ms <= now_ms and not moved):
            return poll_ms  # nothing held, or (a queue gone) nothing releasable: poll
        return max(next_ms - now_ms, 0)
