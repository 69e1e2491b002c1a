"""AsyncProducer: send messages to topics."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog

from .._message import Message, SendResult
from .._producing import ProducerCore, ProducerSettings, ShardingKey
from .._telemetry import active
from .._trace import TraceBound, pub_calls, sample_batch
from ._io import TRANSIENT_ERRORS, AsyncClient, ClientHolder, drive_with_retries, execute

__all__ = ["AsyncProducer"]

log = structlog.get_logger("rmq_style.producer")


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
        self._bound = TraceBound(self.settings.trace_maxlen, self.settings.trace_max_age_ms)

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
        if self._telemetry is not None or self.settings.trace_sample:  # the traced path
            results = await self.send_batch(
                [message], sharding_key=sharding_key, queue_id=queue_id, delay=delay,
                deliver_at=deliver_at, delay_level=delay_level,
            )  # fmt: skip
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
        traced: list[int] = []
        if self.settings.trace_sample:  # docs/trace.md: decided here, carried in the message
            messages, traced = sample_batch(messages, self.settings.trace_sample)
        started = time.time()
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
        results = await drive_with_retries(
            self._client,
            lambda: self._core.send_flow(plan),
            self.settings.retries,
            self.settings.retry_backoff_ms,
        )
        if traced:
            await self._record(messages, traced, results, started)
        return results

    async def _record(self, messages: Sequence[Message], traced: list[int], results: list[SendResult],
                      started: float) -> None:  # fmt: skip
        """The traced messages' ``pub`` records: one more round trip, only when some were sampled."""
        took_ms = int((time.time() - started) * 1000)
        calls = pub_calls(self._core.keys, self._bound, messages, traced, results,
                          started=started, took_ms=took_ms)  # fmt: skip
        try:
            replies = await execute(self._client, calls)
        except TRANSIENT_ERRORS as exc:  # best effort: the messages are sent
            log.warning("trace.write_failed", error=str(exc), traced=len(calls))
            return
        failed = [r for r in replies if isinstance(r, Exception)]
        if failed:
            log.warning("trace.write_failed", error=str(failed[0]), traced=len(calls))
