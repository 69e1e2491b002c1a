"""AsyncProducer: send messages to topics."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from .._message import Message, SendResult
from .._producing import ProducerCore, ProducerSettings, ShardingKey
from .._telemetry import active
from ._io import AsyncClient, ClientHolder, drive_with_retries

__all__ = ["AsyncProducer"]


class AsyncProducer(ClientHolder):
    """Sends messages; one instance is safe to share.

    >>> import asyncio
    >>> from rmq_style import AsyncAdmin, AsyncProducer, Message
    >>> async def main():
    ...     async with AsyncAdmin("memory://doc-async-producer") as admin:
    ...         await admin.create_topic("orders", queues=4)
    ...     async with AsyncProducer("memory://doc-async-producer") as producer:
    ...         result = await producer.send(Message("orders", {"id": 1}), sharding_key="user-1")
    ...     return result.queue.queue_id, result.queue_offset
    >>> asyncio.run(main())
    (0, 0)
    """

    def __init__(
        self, url: str | AsyncClient, settings: ProducerSettings | None = None, **options: Any
    ) -> None:
        self.settings = settings or ProducerSettings(**options)
        super().__init__(url)
        in_process = type(self._client).__module__.startswith("fakeredis")  # memory://: no replicas
        self._core = ProducerCore(self.settings, server_replicates=not in_process)
        self._telemetry = active()  # OpenTelemetry (rmq_style.otel), None when off

    def __repr__(self) -> str:
        return f"<{type(self).__name__} namespace={self.settings.namespace!r} codec={self.settings.codec}>"

    async def send(
        self,
        message: Message,
        *,
        sharding_key: ShardingKey | None = None,
        queue_id: int | None = None,
        delay: timedelta | None = None,
        deliver_at: datetime | None = None,
        delay_level: int | None = None,
    ) -> SendResult:
        """Send one message; its queue is round-robin, by *sharding_key*, or *queue_id*."""
        if self._telemetry is not None:
            kind = "normal" if (delay, deliver_at, delay_level) == (None, None, None) else "delay"
            with self._telemetry.sending([message], kind) as sending:
                results = await self._send(
                    sending.messages, sharding_key, queue_id, delay, deliver_at, delay_level
                )
                sending.sent(results)
            return results[0]
        plan = self._core.plan(
            [message],
            sharding_key=sharding_key,
            queue_id=queue_id,
            delay=delay,
            deliver_at=deliver_at,
            delay_level=delay_level,
        )
        results = await drive_with_retries(
            self._client,
            lambda: self._core.send_flow(plan),
            self.settings.retries,
            self.settings.retry_backoff_ms,
        )
        return results[0]

    async def send_batch(
        self,
        messages: Sequence[Message],
        *,
        sharding_key: ShardingKey | None = None,
        queue_id: int | None = None,
        delay: timedelta | None = None,
        deliver_at: datetime | None = None,
        delay_level: int | None = None,
    ) -> list[SendResult]:
        """Send many messages in one round trip; one result per message, in order.

        *sharding_key* may be a function of the message, to route each by its own key.
        """
        if self._telemetry is not None and messages:
            kind = "normal" if (delay, deliver_at, delay_level) == (None, None, None) else "delay"
            with self._telemetry.sending(messages, kind) as sending:
                results = await self._send(
                    sending.messages, sharding_key, queue_id, delay, deliver_at, delay_level
                )
                sending.sent(results)
            return results
        return await self._send(messages, sharding_key, queue_id, delay, deliver_at, delay_level)

    async def _send(
        self,
        messages: Sequence[Message],
        sharding_key: ShardingKey | None,
        queue_id: int | None,
        delay: timedelta | None,
        deliver_at: datetime | None,
        delay_level: int | None,
    ) -> list[SendResult]:
        plan = self._core.plan(
            messages,
            sharding_key=sharding_key,
            queue_id=queue_id,
            delay=delay,
            deliver_at=deliver_at,
            delay_level=delay_level,
        )
        if not plan.entries:
            return []
        return await drive_with_retries(
            self._client,
            lambda: self._core.send_flow(plan),
            self.settings.retries,
            self.settings.retry_backoff_ms,
        )
