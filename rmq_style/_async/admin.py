"""AsyncAdmin: topics (create, list, describe, expand, delete) and delayed-message release."""

from __future__ import annotations

from datetime import datetime

from .._catalog import consumer_groups_flow, members_flow, producer_groups_flow
from .._group_admin import (
    DeadLetterRecord,
    QueueReport,
    ResetTarget,
    dead_letters_flow,
    progress_report_flow,
    purge_dead_letters_flow,
    replay_flow,
    reset_offset_flow,
)
from .._message import MessageQueue, ReceivedMessage
from .._names import Keys, check_topic
from .._offsets import Offset
from .._producing import release_due_flow
from .._query_by_key import MessageQuery, find_flow
from .._topics import (
    DEFAULT_QUEUE_COUNT,
    Retention,
    TopicInfo,
    TopicRoute,
    create_flow,
    delete_flow,
    describe_flow,
    expand_flow,
    list_flow,
    route_flow,
)
from .._trace import replay_trace_flow
from .._trace_read import MessageTrace, trace_flow
from ._io import AsyncClient, ClientHolder
from .tx_admin import AsyncTransactionAdmin

__all__ = ["AsyncAdmin"]


class AsyncAdmin(ClientHolder, AsyncTransactionAdmin):
    """Topic administration.

    >>> import asyncio
    >>> from rmq_style import AsyncAdmin
    >>> async def main():
    ...     async with AsyncAdmin("memory://doc-async-admin") as admin:
    ...         await admin.create_topic("payments", queues=2)
    ...         return [t.topic for t in await admin.list_topics()]
    >>> asyncio.run(main())
    ['payments']
    """

    def __init__(self, url: str | AsyncClient, *, namespace: str = "rmq") -> None:
        self.keys = Keys(namespace)
        super().__init__(url)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} namespace={self.keys.prefix!r}>"

    async def create_topic(
        self, topic: str, queues: int = DEFAULT_QUEUE_COUNT, retention: Retention | None = None
    ) -> TopicRoute:
        """Create *topic* with *queues* message queues; TopicExistsError if it exists."""
        return await self._drive(create_flow(self.keys, topic, queues, retention or Retention()))

    async def list_topics(self) -> list[TopicRoute]:
        return await self._drive(list_flow(self.keys))

    async def topic(self, topic: str) -> TopicRoute:
        """The topic's queue count and retention; TopicNotFoundError if it does not exist."""
        return await self._drive(route_flow(self.keys, check_topic(topic)))

    async def describe_topic(self, topic: str) -> TopicInfo:
        """Per queue: first and last offset, length, queue-offset range, delayed count."""
        return await self._drive(describe_flow(self.keys, check_topic(topic)))

    async def expand_topic(self, topic: str, queues: int) -> TopicRoute:
        """Raise the queue count; sharding keys then map to other queues.

        The topic's existing groups read the new queues from their first entry (running
        consumers take them at their next rebalance); a group created later honours consume_from.
        """
        return await self._drive(expand_flow(self.keys, check_topic(topic), queues))

    async def delete_topic(self, topic: str) -> None:
        """Delete the topic, its queues, delayed messages and per-group retry and DLQ data."""
        await self._drive(delete_flow(self.keys, check_topic(topic)))

    async def release_due(self, topic: str) -> int:
        """Move the topic's due delayed messages into their queues; returns how many moved."""
        return await self._drive(release_due_flow(self.keys, check_topic(topic)))

    async def list_groups(self) -> list[str]:
        """Every consumer group that ever had a member, sorted (RocketMQ's groupList)."""
        return await self._drive(consumer_groups_flow(self.keys))

    async def group_members(self, group: str) -> dict[str, list[str]]:
        """Per topic *group* subscribes: its live members (RocketMQ's consumer connections)."""
        return await self._drive(members_flow(self.keys, group))

    async def list_producer_groups(self) -> list[str]:
        """Every producer group that sent a transactional message, sorted."""
        return await self._drive(producer_groups_flow(self.keys))

    async def progress(self, group: str, topic: str | None = None) -> list[QueueReport]:
        """Per queue of *topic* (or of every topic the group subscribes): offsets, lag, pending, owner."""
        return await self._drive(progress_report_flow(self.keys, group, topic))

    async def reset_offset(self, group: str, topic: str, to: ResetTarget) -> dict[MessageQueue, Offset]:
        """Move *group* in every queue of *topic* to ``"first"``, ``"last"`` or a timestamp (datetime or ms).

        Entries before the new position count as consumed (their pending deliveries are acknowledged);
        running push consumers pick the position up on their next read.
        """
        return await self._drive(reset_offset_flow(self.keys, group, topic, to))

    async def dead_letters(
        self, group: str, topic: str | None = None, limit: int = 100
    ) -> list[DeadLetterRecord]:
        """The group's dead letters with their reasons, oldest first (at most *limit* per queue)."""
        return await self._drive(dead_letters_flow(self.keys, group, topic, limit))

    async def find_messages(
        self,
        topic: str,
        *,
        key: str | None = None,
        msg_id: str | None = None,
        tag: str | None = None,
        limit: int = 64,
        scan: int = 100_000,
    ) -> list[ReceivedMessage]:
        """Messages of *topic* with this business key, msg id and/or tag, newest first (queryMsgByKey).

        A bounded scan, not an index: each queue is read back *scan* entries at most.
        """
        query = MessageQuery(key=key, msg_id=msg_id, tag=tag)
        return await self._drive(find_flow(self.keys, topic, query, limit=limit, scan=scan))

    async def purge_dead_letters(
        self, group: str, topic: str | None = None, *, before: datetime | int | None = None
    ) -> int:
        """Delete the group's dead letters, all or those dead before *before* (epoch ms or datetime).

        Returns how many were deleted. Dead letters are kept until purged or replayed.
        """
        before_ms = None
        if isinstance(before, datetime):
            before_ms = int(before.timestamp() * 1000)
        elif before is not None:
            before_ms = int(before)
        return await self._drive(purge_dead_letters_flow(self.keys, group, topic, before_ms))

    async def replay_dead_letters(self, group: str, records: list[DeadLetterRecord]) -> int:
        """Give *records* back to *group*: same msg id, reconsume times 0; returns how many were replayed."""
        await self._drive(replay_trace_flow(self.keys, group, records))  # traced ones: docs/trace.md
        return await self._drive(replay_flow(self.keys, group, records))

    async def trace(self, msg_id: str, topic: str | None = None) -> list[MessageTrace]:
        """What happened to message *msg_id* (RocketMQ's queryMsgTraceById), per topic where it was traced.

        Every topic is searched when *topic* is None. Only traced messages have steps (docs/trace.md).
        """
        return await self._drive(trace_flow(self.keys, msg_id, topic))

    async def trace_by_key(self, topic: str, key: str, *, limit: int = 16) -> list[MessageTrace]:
        """The traces of the messages of *topic* with business key *key* (found by ``find_messages``)."""
        found = await self.find_messages(topic, key=key, limit=limit)
        traces = []
        for m in found:
            msg_id = m.shown("msg_id")
            traces += await self._drive(trace_flow(self.keys, msg_id, topic))
        return traces
