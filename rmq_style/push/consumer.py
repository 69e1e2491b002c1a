"""PushConsumer: the lifecycle shell of the push runtime (asyncio).

It owns one task group (``tasks.TaskTree``, drawn in docs/architecture.md):
``start()`` returns once the lifetime task set it up and it is ready;
``stop()`` and a failure both end in the one drain. The work is in the parts
it wires together around one shared ``Context``:

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
import functools
import inspect
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

from .._async._io import drive, execute, is_cluster, open_client
from .._errors import BrokerUnavailableError, UsageError
from .._filter import TagFilter
from .._membership import ListenerKind, check_subscribe_replies, heartbeat_call, subscribe_calls
from .._message import MessageQueue
from .._names import check_group, check_topic
from .._topics import route_flow
from .broadcast import Broadcast, broadcast_parts
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
        self._broadcast: Broadcast | None = None
        if self.settings.message_model == "broadcasting":  # another fetch source and offset commit
            self._broadcast, self._fetch, self._rebalance, self._retries = broadcast_parts(c, self._settling)
        self._main: asyncio.Task[None] | None = None  # the lifetime: the one task group's owner
        self._loops: dict[str, asyncio.Task[None]] = {}  # the service loops, by name

    def __repr__(self) -> str:
        owned = [str(mq) for mq in self.queues]
        return (
            f"<PushConsumer {self.state} group={self.group!r} member={self.member!r} queues={owned} "
            f"in_flight={self._ctx.total} {self.stats}>"
        )

    @property
    def state(self) -> str:
        """``new``, ``running``, ``draining``, ``stopped`` or ``failed``."""
        tree, main = self._ctx.tree, self._main
        if main is None:
            return "new"
        if not main.done():
            return "draining" if tree.stop_requested.is_set() else "running"
        return "failed" if tree.failure is not None else "stopped"

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
        if self._main is not None:
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
        """Join the group, take this member's queues and start consuming; returns once ready.

        Ready: the member is registered with every subscribed topic, its first rebalance is done
        (its queues are taken, their groups created; an orderly queue's task takes its lease right
        after) and every task of the consumer is running.
        Redis unreachable: BrokerUnavailableError, nothing is left running, and the consumer
        can be started again.
        """
        if self._main is not None:
            raise UsageError("this consumer was already started")
        if not self._ctx.subs:
            raise UsageError("subscribe to at least one topic before start()")
        self._ctx.new_tree()
        self._loops = {}
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._main = main = asyncio.create_task(self._lifetime(ready), name=f"rmq-push {self.member}")
        try:
            await asyncio.wait([ready, main], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # the start is abandoned: its children are cancelled, its clients closed; a client
            # that swallowed the cancel (fakeredis does) finishes the start: then it drains
            self._ctx.tree.stop_requested.set()
            main.cancel()
            await asyncio.wait([main])
            if main.cancelled() or main.exception() is not None:
                self._main = None  # undone: it can be started again
            raise
        if not ready.done():  # the lifetime ended before it was ready: the start failed, undone
            self._main = None
            exc = main.exception()
            assert exc is not None
            if isinstance(exc, TRANSIENT):
                raise BrokerUnavailableError(f"Redis unreachable at start: {exc}") from exc
            raise exc
        self._ctx.log.info("consumer.started", topics=sorted(self._ctx.subs), queues=self._owned_names())

    async def _lifetime(self, ready: asyncio.Future[None]) -> None:
        """The consumer's one task group: set up, signal *ready*, serve until asked to stop or
        a task failed, drain. Leaving the group waits for every child; then the clients close."""
        c = self._ctx
        error: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as group:
                c.tree.open(group)
                try:
                    await self._start()
                except BaseException as exc:  # noqa: BLE001 - raised again once the children are gone
                    error = exc
                    c.tree.cancel_all()
                else:
                    ready.set_result(None)
                    await c.tree.stop_requested.wait()
                    await self._drain()
        finally:
            await self._close_clients()
        if error is not None:
            if self._broadcast is not None:
                self._broadcast.release()
            c.orderly = c.pool = None
            c.queues.clear()
            c.streams.clear()
            raise error

    async def _start(self) -> None:
        c = self._ctx
        if self._broadcast is not None:
            self._broadcast.check()
        c.client = client = open_client(self.url)
        c.fetch_client = open_client(self.url)  # blocking reads get their own connection
        expiry = self.settings.membership.member_expiry_ms
        for sub in c.subs.values():
            route = await drive(client, route_flow(self.keys, sub.topic))
            sub.queue_count = route.queue_count
            sub.counts_trims = route.retention.mode == "maxlen"
            kind: ListenerKind = (
                "key"
                if sub.key_order is not None
                else "orderly"
                if sub.topic in c.orderly_topics
                else "concurrent"
            )
            if self._broadcast is not None:
                kind = "broadcasting"
            replies = await execute(
                client,
                subscribe_calls(self.keys, self.group, sub.topic, sub.filter, self.member, expiry, kind),
            )
            check_subscribe_replies(replies, self.group, sub.topic, sub.filter, kind)
        s, tree = self.settings, c.tree
        c.pool = pool = HandlerPool(
            s.concurrency,
            s.pull_threshold_for_all,
            s.consume_timeout_ms / 1000,
            self._settling.on_done,
            c.handler_times,
            wanted=c.wanted,
            dropped=c.drop,
            observer=c.observer,
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
                spawn=functools.partial(tree.spawn, restart=False),  # a queue task is its own state
                recorder=c.recorder,
            )
            self._loops["renew"] = tree.spawn("renew", c.orderly.background_loop)
        await self._rebalance.rebalance()
        await self._rebalance.report_trims()  # a loss while no consumer ran is logged at start
        self._rebalance.schedule_prune()
        pool.start(tree.spawn)
        fetch = self._fetch.fetch_per_queue if is_cluster(c.fetch_client) else self._fetch.fetch_loop
        self._loops["membership"] = tree.spawn("membership", self._rebalance.membership_loop)
        self._loops["fetch"] = tree.spawn("fetch", fetch)
        self._loops["settle"] = tree.spawn("settle", self._settling.settle_loop)
        self._loops["retries"] = tree.spawn("retries", self._retries.retry_loop)
        if c.marks is not None:  # idempotent subscriptions: leases of long-held claims renewed
            self._loops["idempotent"] = tree.spawn("idempotent", c.marks.keep_leases)

    async def _drain(self) -> None:
        """Stop fetching, let running calls finish (shutdown_timeout_ms), settle, leave the group."""
        c, loops = self._ctx, self._loops
        c.stopping.set()
        await asyncio.wait([loops["fetch"], loops["membership"], loops["retries"]])
        if c.marks is not None:
            await c.marks.admitted()  # claims of reads in flight: their calls queued before the close
        timeout = self.settings.shutdown_timeout_ms / 1000
        cut = 0
        if c.orderly is not None:
            cut += await c.orderly.stop(timeout)
            loops["renew"].cancel()
            await asyncio.wait([loops["renew"]])
        if c.pool is not None:
            cut += await c.pool.close(timeout)
        c.drained.set()  # no outcome will come any more: the settle loop ends once its buffer is empty
        c.settle_wakeup.set()
        # Redis away at shutdown: give up after a while; what is not settled stays pending
        settle = loops["settle"]
        done, _ = await asyncio.wait([settle], timeout=max(timeout, 5.0))
        if not done:
            settle.cancel()
            await asyncio.wait([settle])
        if self._broadcast is not None:
            await self._broadcast.settled()  # the final positions, once every outcome is settled
        keeper = loops.get("idempotent")
        if keeper is not None:
            keeper.cancel()
            await asyncio.wait([keeper])
        expiry = self.settings.membership.member_expiry_ms
        try:
            await execute(
                c.redis(),
                [heartbeat_call(self.keys, self.group, t, self.member, expiry, join=False) for t in c.subs],
            )
        except TRANSIENT as exc:
            c.log.warning("consumer.leave_failed", error=str(exc))
        c.tree.cancel_all()  # nothing is left by now; if something were, it must not hold the exit
        c.log.info(
            "consumer.stopped",
            unfinished=cut,
            unsettled=c.total,
            failed=c.tree.failure is not None,
            stats=str(self.stats),
        )

    async def _close_clients(self) -> None:
        c = self._ctx
        clients = [c.client, c.fetch_client, c.orderly.wait_client if c.orderly is not None else None]
        c.client = c.fetch_client = None
        for client in clients:
            if client is not None:
                await client.aclose()

    async def stop(self) -> None:
        """Stop fetching, let running handlers finish (shutdown_timeout_ms), settle, leave the group.

        Returns once all of that is done, whoever else called it too; cancelling the caller
        does not cut the drain short. Raises ConsumerFailedError if the consumer failed.
        """
        if self._main is None:
            return
        self._ctx.tree.stop_requested.set()
        await self.wait()

    async def wait(self) -> None:
        """Wait until the consumer stopped (``stop()`` called elsewhere, or a failure).

        Raises ConsumerFailedError if one of its tasks kept crashing (the cause is chained).
        """
        main = self._main
        if main is None:
            raise UsageError("this consumer is not started")
        await asyncio.wait([main])  # never cancels the lifetime (the drain) with the caller
        crash = None if main.cancelled() else main.exception()
        if crash is not None:
            raise crash  # a bug of the drain itself
        if self._ctx.tree.failure is not None:
            raise self._ctx.tree.failure

    async def run(self) -> None:
        """Start, consume until the task is cancelled (or the consumer stopped), then stop gracefully."""
        await self.start()
        try:
            await self.wait()
        finally:
            await self.stop()

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
    def instance_name(self) -> str | None:
        """Broadcasting: the name this member's positions are kept under (None: clustering)."""
        return self._broadcast.instance if self._broadcast is not None else None

    @property
    def in_flight(self) -> int:
        return self._ctx.total

    def _owned_names(self) -> list[str]:
        return [str(mq) for mq in self.queues]
