"""AsyncLitePullConsumer: poll batches from queues allocated among the group, or assigned by hand."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from .._lite_pulling import LitePullCore, LitePullSettings, check_settings
from .._message import MessageQueue, ReceivedMessage
from .._offsets import Offset
from .._search_offset import offset_for_timestamp_flow
from .._telemetry import active
from ._io import AsyncClient, ClientHolder, is_cluster

__all__ = ["AsyncLitePullConsumer"]


class AsyncLitePullConsumer(ClientHolder):
    """RocketMQ's lite pull consumer (Kafka-like): subscribe or assign, then poll.

    Heartbeats, rebalancing and auto-commit happen inside ``poll`` when due, so
    poll regularly (at least every ``member_expiry_ms``) or the group gives this
    member's queues away. A new group reads from ``consume_from`` ("last" by
    default: new messages only); afterwards from its committed position.

    >>> import asyncio
    >>> from rmq_style import AsyncAdmin, AsyncProducer, AsyncLitePullConsumer, Message
    >>> async def main():
    ...     url = "memory://doc-async-lite"
    ...     async with AsyncAdmin(url) as admin:
    ...         await admin.create_topic("events", queues=2)
    ...     async with AsyncLitePullConsumer(url, "audit", consume_from="first") as consumer:
    ...         await consumer.subscribe("events", "login || logout")
    ...         async with AsyncProducer(url) as producer:
    ...             for tag in ("login", "click", "logout"):
    ...                 await producer.send(Message("events", tag, tag=tag), queue_id=0)
    ...         messages = await consumer.poll(timeout=1.0)
    ...         await consumer.commit_sync()
    ...     return [m.value() for m in messages]
    >>> asyncio.run(main())
    ['login', 'logout']
    """

    def __init__(
        self, url: str | AsyncClient, group: str, settings: LitePullSettings | None = None, **options: Any
    ) -> None:
        self.settings = check_settings(settings or LitePullSettings(**options))
        self._core = LitePullCore(group, self.settings)
        self._telemetry = active()  # OpenTelemetry (rmq_style.otel), None when off
        super().__init__(url)
        self._core.one_queue_per_read = is_cluster(self._client)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} group={self._core.group!r} member={self._core.member!r}>"

    @property
    def group(self) -> str:
        return self._core.group

    @property
    def member(self) -> str:
        return self._core.member

    async def subscribe(self, topic: str, expression: str = "*") -> None:
        """Consume *topic*'s queues allocated to this member (all of them when broadcasting)."""
        await self._drive(self._core.subscribe_flow(topic, expression))

    async def assign(self, queues: Iterable[MessageQueue]) -> None:
        """Consume exactly *queues* (no group rebalance)."""
        await self._drive(self._core.assign_flow(queues))

    def assignment(self) -> list[MessageQueue]:
        """The queues this consumer reads now."""
        return self._core.assignment()

    async def fetch_message_queues(self, topic: str) -> list[MessageQueue]:
        route = await self._drive(self._core.routes.route_flow(topic, refresh=True))
        return [MessageQueue(topic, q) for q in range(route.queue_count)]

    async def poll(self, timeout: float | None = None) -> list[ReceivedMessage]:
        """Up to ``pull_batch_size`` messages; waits up to *timeout* seconds (long polling) for some."""
        if self._telemetry is None:
            return await self._drive(self._core.poll_flow(timeout))
        with self._telemetry.receiving(self._core.group) as receiving:
            messages = await self._drive(self._core.poll_flow(timeout))
            receiving.got(messages)
        return messages

    async def seek(self, queue: MessageQueue, offset: str | Offset) -> None:
        """Continue *queue* with the entries after *offset*."""
        await self._drive(self._core.seek_flow(queue, offset))

    async def seek_to_begin(self, queue: MessageQueue) -> None:
        await self._drive(self._core.seek_bound_flow(queue, end=False))

    async def seek_to_end(self, queue: MessageQueue) -> None:
        await self._drive(self._core.seek_bound_flow(queue, end=True))

    async def seek_to_timestamp(self, queue: MessageQueue, ts: datetime | int | float) -> None:
        """Continue *queue* with exactly the entries stored at or after *ts* (datetime or epoch ms)."""
        await self._drive(self._core.seek_timestamp_flow(queue, ts))

    async def offset_for_timestamp(self, queue: MessageQueue, ts: datetime | int | float) -> str | None:
        """The id of the first entry stored at or after *ts*; None if none yet."""
        flow = offset_for_timestamp_flow(self._core.keys, self._core.routes, queue, ts)
        return await self._drive(flow)

    def pause(self, queues: Iterable[MessageQueue]) -> None:
        """Stop returning messages of *queues* until resume()."""
        self._core.pause(queues)

    def resume(self, queues: Iterable[MessageQueue]) -> None:
        self._core.resume(queues)

    async def committed(self, queue: MessageQueue) -> str | None:
        """The group's stored position in *queue*, None if it has none."""
        return await self._drive(self._core.committed_flow(queue))

    async def commit_sync(self) -> None:
        """Store the position of every owned queue now (also done every auto_commit_interval_ms)."""
        await self._drive(self._core.commit_flow())

    async def close(self) -> None:
        """Commit, leave the group, close the connection."""
        try:
            await self._drive(self._core.close_flow())
        finally:
            await super().close()
