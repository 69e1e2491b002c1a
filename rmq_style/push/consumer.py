"""PushConsumer: the lifecycle shell of the push runtime (asyncio).

It owns the tasks of one consumer, all stopped by ``stop()``; the work is in
the parts it wires together around one shared ``Context``:

- ``rebalance.Rebalancer``: heartbeat per subscribed topic, queue allocation,
  group creation for newly owned queues, adoption of entries left by dead
  members, trim reports, pruning of dead members' stream consumers;
- ``fetch.Fetcher``: long-polling XREADGROUP, handing entries to the runner;
- ``runner.HandlerPool``: the listener calls (concurrent and orderly share its budget);
- ``settling.Settler``: outcomes into acks, retries and dead letters, in rounds;
- ``retries.Retries``: due retries and delayed messages released;
- ``orderly.OrderlyRunner``: a task per owned orderly queue, and their lease renewal.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

from .._async._io import drive, execute, is_cluster, open_client
from .._errors import BrokerUnavailableError, UsageError
from .._filter import TagFilter
from .._membership import check_subscribe_replies, heartbeat_call, subscribe_calls
from .._message import MessageQueue
from .._names import check_group, check_topic
from .._topics import route_flow
from .context import TRANSIENT, Context
from .dedup import DedupListener
from .fetch import Fetcher
from .idempotence import Idempotent
from .key_window import KeyFunction, key_order_of
from .orderly import OrderlyRunner
from .rebalance import Rebalancer
from .retries import Retries
from .runner import HandlerPool
from .settings import PushSettings
from .settling import Settler
from .state import PushStats, Subscription

__all__ = ["PushConsumer", "PushStats"]


class PushConsumer:
    """Consumes the subscribed topics with concurrent listeners, in a consumer group.

    >>> import asyncio, uuid
    >>> from rmq_style import AsyncAdmin, AsyncProducer, Message, PushConsumer
    >>> url = f"memory://doc-push-{uuid.uuid4().hex}"
    >>> async def main():
    ...     async with AsyncAdmin(url) as admin:
    ...         await admin.create_topic("orders", queues=2)
    ...     seen = asyncio.Event()
    ...     async def on_order(msg):
    ...         print("got", msg.value(), msg.tag)
    ...         seen.set()
    ...     consumer = PushConsumer(url, "billing", consume_from="first")
    ...     consumer.subscribe("orders", "created", on_order)
    ...     async with consumer:
    ...         async with AsyncProducer(url) as producer:
    ...             await producer.send(Message("orders", {"id": 1}, tag="created"))
    ...         await asyncio.wait_for(seen.wait(), 5)
    ...     return consumer.stats.consumed
    >>> from structlog.testing import capture_logs
    >>> with capture_logs() as events:
    ...     asyncio.run(main())
    got {'id': 1} created
    1
    >>> [e["event"] for e in events if e["event"].startswith("consumer.")]
    ['consumer.started', 'consumer.stopped']
    """

    def __init__(self, url: str, group: str, settings: PushSettings | None = None, **options: Any) -> None:
        c = self._ctx = Context(url, check_group(group), settings or PushSettings(**options))
        self.settings, self.group, self.url, self.member = c.settings, c.group, c.url, c.member
        self.keys, self.stats, self.handler_times = c.keys, c.stats, c.handler_times
        self._settling = Settler(c)
        self._fetch = Fetcher(c, self._settling)
        self._rebalance = Rebalancer(c)
        self._retries = Retries(c)
        self._renew_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self._started = False

    def __repr__(self) -> str:
        owned = [str(mq) for mq in self.queues]
        return (
            f"<PushConsumer group={self.group!r} member={self.member!r} queues={owned} "
            f"in_flight={self._ctx.total} {self.stats}>"
        )

    # -- public surface -------------------------------------------------------------------------

    def subscribe(
        self,
        topic: str,
        expression: str | None,
        listener: Callable[..., Any],
        *,
        model: Any = None,
        orderly: bool = False,
        idempotent: bool | str | Idempotent | None = None,
        order: Literal["queue", "key"] | None = None,
        order_key: KeyFunction | None = None,
    ) -> None:
        """Consume *topic* messages whose tag matches *expression* (``*`` or ``TagA || TagB``).

        The listener takes the ReceivedMessage (a list of them when
        consume_message_batch_max_size > 1); with *model*, it takes the body
        validated into *model* first, then the message. It may be async or sync.
        With *orderly*, the messages of each queue are handled one at a time in
        offset order by the holder of the queue's lease (docs/push.md); one
        consumer may mix orderly and concurrent topics.
        ``order="queue"`` is *orderly*; with ``order="key"`` the messages of one ordering
        key (*order_key* of the message, by default its first business key) are handled
        one at a time in queue order, different keys in parallel (docs/push.md, "Key order").
        With *idempotent* (True, a key choice or an Idempotent), a message whose
        dedup key this group already consumed is acked without a call
        (docs/idempotence.md).
        """
        c = self._ctx
        if self._started:
            raise UsageError("subscribe before start()")
        check_topic(topic)
        if topic in c.subs:
            raise UsageError(f"topic {topic!r} is already subscribed by this consumer")
        if not callable(listener):
            raise UsageError(f"a listener must be callable, got {listener!r}")
        is_async = inspect.iscoroutinefunction(listener) or inspect.iscoroutinefunction(
            getattr(listener, "__call__", None)  # noqa: B004 - an async callable object
        )
        key_order = key_order_of(order, order_key, self.settings.consume_message_batch_max_size)
        orderly = orderly or order is not None
        spec = Idempotent.of(idempotent)
        if spec is not None:
            listener, is_async = DedupListener(c, spec, listener, is_async), True
        c.subs[topic] = Subscription(
            topic, TagFilter.parse(expression), listener, is_async, model, key_order=key_order
        )
        if orderly:
            c.orderly_topics.add(topic)

    async def start(self) -> None:
        """Join the group, take this member's queues and start consuming; returns once running.

        Redis unreachable: BrokerUnavailableError, and the consumer can be started again.
        """
        if self._started:
            raise UsageError("this consumer was already started")
        if not self._ctx.subs:
            raise UsageError("subscribe to at least one topic before start()")
        self._started = True
        try:
            await self._start()
        except BaseException as exc:
            await self._abandon_start()
            if isinstance(exc, TRANSIENT):
                raise BrokerUnavailableError(f"Redis unreachable at start: {exc}") from exc
            raise
        self._ctx.log.info("consumer.started", topics=sorted(self._ctx.subs), queues=self._owned_names())

    async def _start(self) -> None:
        c = self._ctx
        c.client = client = open_client(self.url)
        c.fetch_client = open_client(self.url)  # blocking reads get their own connection
        expiry = self.settings.membership.member_expiry_ms
        for sub in c.subs.values():
            route = await drive(client, route_flow(self.keys, sub.topic))
            sub.queue_count = route.queue_count
            sub.counts_trims = route.retention.mode == "maxlen"
            kind: Literal["orderly", "key", "concurrent"] = (
                "key"
                if sub.key_order is not None
                else "orderly"
                if sub.topic in c.orderly_topics
                else "concurrent"
            )
            replies = await execute(
                client,
                subscribe_calls(self.keys, self.group, sub.topic, sub.filter, self.member, expiry, kind),
            )
            check_subscribe_replies(replies, self.group, sub.topic, sub.filter, kind)
        s = self.settings
        c.pool = pool = HandlerPool(
            s.concurrency,
            s.pull_threshold_for_all,
            s.consume_timeout_ms / 1000,
            self._settling.on_done,
            c.handler_times,
            wanted=c.wanted,
            dropped=c.drop,
        )
        if c.orderly_topics:
            c.orderly = OrderlyRunner(
                group=self.group,
                member=self.member,
                keys=self.keys,
                settings=s,
                stats=self.stats,
                times=c.handler_times,
                pool=pool,  # one budget: orderly calls take slots of the same pool
                client=client,
                wait_client=open_client(self.url),
                start_position=c.start_position,
            )
            self._renew_task = asyncio.create_task(c.guard("renew", c.orderly.background_loop))
        await self._rebalance.rebalance()
        await self._rebalance.report_trims()  # a loss while no consumer ran is logged at start
        self._rebalance.schedule_prune()
        pool.start()
        fetch = self._fetch.fetch_per_queue if is_cluster(c.fetch_client) else self._fetch.fetch_loop
        self._tasks = [
            asyncio.create_task(c.guard("membership", self._rebalance.membership_loop)),
            asyncio.create_task(c.guard("fetch", fetch)),
            asyncio.create_task(c.guard("settle", self._settling.settle_loop)),
            asyncio.create_task(c.guard("retries", self._retries.retry_loop)),
        ]

    async def _abandon_start(self) -> None:
        """Undo a start that failed before anything was consumed (the member's heartbeat just expires)."""
        c = self._ctx
        if self._renew_task is not None:
            self._renew_task.cancel()
            await asyncio.gather(self._renew_task, return_exceptions=True)
        clients = [c.client, c.fetch_client]
        if c.orderly is not None:
            clients.append(c.orderly.wait_client)
        for client in clients:
            if client is not None:
                await client.aclose()
        c.client = c.fetch_client = c.orderly = c.pool = self._renew_task = None
        c.queues.clear()
        c.streams.clear()
        self._started = False

    async def stop(self) -> None:
        """Stop fetching, let running handlers finish (shutdown_timeout_ms), settle, leave the group."""
        if not self._started or self._stopped.is_set():
            return
        c = self._ctx
        self._stopped.set()
        c.stopping.set()
        fetch, membership, settle, retries = self._tasks
        await asyncio.gather(fetch, membership, retries, return_exceptions=True)
        timeout = self.settings.shutdown_timeout_ms / 1000
        cut = 0
        if c.orderly is not None:
            cut += await c.orderly.stop(timeout)
            if self._renew_task is not None:
                self._renew_task.cancel()
                await asyncio.gather(self._renew_task, return_exceptions=True)
            await c.orderly.wait_client.aclose()
        if c.pool is not None:
            cut += await c.pool.close(timeout)
        c.drained.set()
        c.settle_wakeup.set()
        # Redis away at shutdown: give up after a while; what is not settled stays pending
        done, _ = await asyncio.wait([settle], timeout=max(timeout, 5.0))
        if not done:
            settle.cancel()
            await asyncio.gather(settle, return_exceptions=True)
        expiry = self.settings.membership.member_expiry_ms
        try:
            await execute(
                c.redis(),
                [heartbeat_call(self.keys, self.group, t, self.member, expiry, join=False) for t in c.subs],
            )
        except TRANSIENT as exc:
            c.log.warning("consumer.leave_failed", error=str(exc))
        c.log.info("consumer.stopped", unfinished=cut, unsettled=c.total, stats=str(self.stats))
        for client in (c.client, c.fetch_client):
            if client is not None:
                await client.aclose()

    async def run(self) -> None:
        """Start, consume until the task is cancelled, then stop gracefully."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.shield(self.stop())

    async def __aenter__(self) -> PushConsumer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def queues(self) -> list[MessageQueue]:
        """The queues this member consumes now (orderly ones: while it holds their lease)."""
        return self._ctx.owned_queues()

    @property
    def in_flight(self) -> int:
        return self._ctx.total

    def _owned_names(self) -> list[str]:
        return [str(mq) for mq in self.queues]
