"""AsyncSimpleConsumer: receive batches, acknowledge each message, change its invisible duration."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._receipt import SimpleMessage
from .._simple import MIN_INVISIBLE_S, SimpleCore, SimpleSettings
from .._telemetry import active
from ._io import AsyncClient, ClientHolder, is_cluster

__all__ = ["AsyncSimpleConsumer"]


class AsyncSimpleConsumer(ClientHolder):
    """RocketMQ 5's simple consumer: the application receives, then acks (or lets the lease end).

    ``receive`` leases up to 32 messages for an invisible duration (10 s to
    12 h); a message not acknowledged by then is delivered again, its
    ``delivery_attempt`` one higher, and after ``max_attempts`` (17) it goes
    to the group's dead-letter queue instead. See docs/simple.md.

    >>> import asyncio
    >>> from rmq_style import AsyncAdmin, AsyncProducer, AsyncSimpleConsumer, Message
    >>> async def main():
    ...     url = "memory://doc-async-simple"
    ...     async with AsyncAdmin(url) as admin:
    ...         await admin.create_topic("jobs", queues=2)
    ...     async with AsyncProducer(url) as producer:
    ...         await producer.send(Message("jobs", "resize"))
    ...     group = {"jobs": "*"}
    ...     async with AsyncSimpleConsumer(url, "workers", group, consume_from="first") as consumer:
    ...         (message,) = await consumer.receive(max_messages=8, invisible_duration=30)
    ...         await consumer.ack(message)
    ...     return message.value(), message.delivery_attempt
    >>> asyncio.run(main())
    ('resize', 1)
    """

    def __init__(
        self,
        url: str | AsyncClient,
        group: str,
        subscriptions: Mapping[str, str] | None = None,
        await_duration: float = 20.0,
        settings: SimpleSettings | None = None,
        *,
        _min_invisible_s: float = MIN_INVISIBLE_S,
        **options: Any,
    ) -> None:
        if settings is None:
            settings = SimpleSettings(await_duration_s=await_duration, **options)
        self.settings = settings
        self._core = SimpleCore(group, subscriptions or {}, settings, min_invisible_s=_min_invisible_s)
        self._telemetry = active()  # OpenTelemetry (rmq_style.otel), None when off
        super().__init__(url)
        self._core.one_queue_per_read = is_cluster(self._client)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} group={self._core.group!r} topics={sorted(self._core.subs)}>"

    @property
    def group(self) -> str:
        return self._core.group

    def subscribe(self, topic: str, expression: str = "*") -> None:
        """Receive *topic* too; a second call for a topic replaces its expression."""
        self._core.subscribe(topic, expression)

    def unsubscribe(self, topic: str) -> None:
        self._core.unsubscribe(topic)

    async def receive(self, max_messages: int, invisible_duration: float) -> list[SimpleMessage]:
        """Up to *max_messages* (1 to 32) messages, invisible to other receivers for *invisible_duration*
        seconds; waits up to ``await_duration`` seconds for the first (an empty list then)."""
        flow = self._core.receive_flow(max_messages, invisible_duration)
        if self._telemetry is None:
            return await self._drive(flow)
        with self._telemetry.receiving(self._core.group) as receiving:
            messages = await self._drive(flow)
            receiving.got(messages)  # one "receive {topic}" span per topic (none for an empty receive)
        return messages

    async def ack(self, message: SimpleMessage | str) -> None:
        """Acknowledge *message* (or a receipt handle text); StaleReceiptHandleError if its lease ended."""
        flow = self._core.ack_flow(message)
        if self._telemetry is None:
            await self._drive(flow)
            return
        with self._telemetry.settling(self._core.group, "ack", message):  # "ack {topic}", settle
            await self._drive(flow)

    async def change_invisible_duration(self, message: SimpleMessage | str, duration: float) -> str:
        """Keep *message* invisible *duration* seconds from now; returns the new receipt handle (also stored
        on *message*). The old handle is refused from now on."""
        return await self._drive(self._core.change_flow(message, duration))

    async def close(self) -> None:
        """Stop receiving (leased messages come back when their invisible duration ends)."""
        self._core.closed = True
        await super().close()
