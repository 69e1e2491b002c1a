"""AsyncPullConsumer: read queues from explicit offsets; the group's position is kept in Redis."""

from __future__ import annotations

from datetime import datetime

from .._message import MessageQueue
from .._names import Keys, check_group
from .._offset_store import MessageModel, OffsetStore, QueueProgress, default_instance_name, progress_flow
from .._offsets import Offset, parse_offset
from .._pulling import (
    DEFAULT_BOUNDS_TTL_MS,
    PullResult,
    QueueCache,
    RouteCache,
    bounds_flow,
    check_bounds_ttl_ms,
    pull_flow,
)
from .._search_offset import offset_for_timestamp_flow, position_for_timestamp_flow
from .._telemetry import active
from ._io import AsyncClient, ClientHolder

__all__ = ["AsyncPullConsumer"]


class AsyncPullConsumer(ClientHolder):
    """RocketMQ's pull consumer: the application chooses queues and offsets.

    ``pull`` returns the entries strictly after *offset* ("0-0": from the
    beginning); resume from ``result.next_offset``. Pulling on from
    ``next_offset`` is one XREAD per pull: the queue's bounds and delayed
    messages are checked again after *bounds_ttl_ms* (0: before every read).

    >>> import asyncio
    >>> from rmq_style import AsyncAdmin, AsyncProducer, AsyncPullConsumer, Message, MessageQueue
    >>> async def main():
    ...     url = "memory://doc-async-pull"
    ...     async with AsyncAdmin(url) as admin:
    ...         await admin.create_topic("clicks", queues=1)
    ...     async with AsyncProducer(url) as producer:
    ...         await producer.send(Message("clicks", "a", tag="web"))
    ...     async with AsyncPullConsumer(url, "stats") as consumer:
    ...         queue = (await consumer.fetch_queues("clicks"))[0]
    ...         result = await consumer.pull(queue, "0-0", max_nums=8)
    ...         await consumer.commit(queue, result.next_offset)
    ...         lag = (await consumer.progress(queue)).lag
    ...         return result.status, [m.value() for m in result.messages], lag
    >>> asyncio.run(main())
    (<PullStatus.FOUND: 'FOUND'>, ['a'], 0)
    """

    def __init__(
        self,
        url: str | AsyncClient,
        group: str,
        *,
        namespace: str = "rmq",
        message_model: MessageModel = "clustering",
        instance_name: str | None = None,
        route_ttl_s: float = 30.0,
        bounds_ttl_ms: int = DEFAULT_BOUNDS_TTL_MS,
    ) -> None:
        self.group = check_group(group)
        self.keys = Keys(namespace)
        self._routes = RouteCache(self.keys, route_ttl_s)
        self._queues = QueueCache(check_bounds_ttl_ms(bounds_ttl_ms) / 1000)
        self._store = OffsetStore(self.keys, group, message_model, instance_name or default_instance_name())
        self._telemetry = active()  # OpenTelemetry (rmq_style.otel), None when off
        super().__init__(url)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} group={self.group!r} model={self._store.model}>"

    async def fetch_queues(self, topic: str) -> list[MessageQueue]:
        """The topic's message queues; TopicNotFoundError if it does not exist."""
        route = await self._drive(self._routes.route_flow(topic, refresh=True))
        return [MessageQueue(topic, q) for q in range(route.queue_count)]

    async def pull(
        self,
        queue: MessageQueue,
        offset: str | Offset,
        max_nums: int = 32,
        expression: str = "*",
        block: float | None = None,
    ) -> PullResult:
        """Up to *max_nums* messages after *offset* whose tag matches *expression*.

        With *block* (seconds), wait up to that long for a message to arrive
        (long polling: returns as soon as one does).
        """
        flow = pull_flow(self.keys, self._routes, queue, offset, max_nums, expression, block, self._queues)
        if self._telemetry is None:
            return await self._drive(flow)
        with self._telemetry.receiving(self.group, queue.topic, queue.queue_id) as receiving:
            result = await self._drive(flow)
            receiving.got(result.messages)
        return result

    async def min_offset(self, queue: MessageQueue) -> str:
        """The smallest legal offset: "0-0" until entries were trimmed away."""
        return str((await self._drive(bounds_flow(self.keys, self._routes, queue))).min_position)

    async def max_offset(self, queue: MessageQueue) -> str:
        """The id of the last entry written ("0-0" for none): pulling from it waits for new ones."""
        return str((await self._drive(bounds_flow(self.keys, self._routes, queue))).max_position)

    async def offset_for_timestamp(self, queue: MessageQueue, ts: datetime | int | float) -> str | None:
        """The id of the first entry stored at or after *ts* (datetime or epoch ms); None if none yet."""
        return await self._drive(offset_for_timestamp_flow(self.keys, self._routes, queue, ts))

    async def offset_before_timestamp(self, queue: MessageQueue, ts: datetime | int | float) -> str:
        """The offset to pull from to get exactly the entries stored at or after *ts*."""
        flow = position_for_timestamp_flow(self.keys, self._routes, queue, ts)
        return str(await self._drive(flow))

    async def committed(self, queue: MessageQueue) -> str | None:
        """The group's stored position in *queue* (last consumed entry), None if it has none."""
        await self._drive(self._routes.queue_flow(queue))
        position = await self._drive(self._store.committed_flow(queue))
        return None if position is None else str(position)

    async def commit(self, queue: MessageQueue, offset: str | Offset) -> None:
        """Store *offset* as the group's position in *queue* (shared with the group's push consumers)."""
        position = parse_offset(offset)
        await self._drive(self._routes.queue_flow(queue))
        await self._drive(self._store.commit_flow(queue, position))

    async def progress(self, queue: MessageQueue) -> QueueProgress:
        """Max queue offset, group position, lag (exact, never negative) and pending count."""
        await self._drive(self._routes.queue_flow(queue))
        return await self._drive(progress_flow(self.keys, self.group, queue))
