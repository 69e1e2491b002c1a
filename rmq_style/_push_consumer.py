"""PushConsumer: concurrent listeners fed by long-polling XREADGROUP (asyncio runtime).

Tasks of one consumer (all stop with ``stop()``):

- membership: heartbeat per subscribed topic, queue allocation, group creation
  for newly owned queues, adoption of entries left by dead members, and now
  and then the deletion of their stream consumers once they own nothing;
- fetch: one XREADGROUP over the streams of every owned queue with room left
  (flow control; on a Redis Cluster one per owned queue), handing entries to the handler pool;
- settle: acks coalesced per stream, retries and dead letters (one script each);
- retries: moves the group's due retries into its retry streams;
- orderly (rmq_style._orderly_queue): a task per owned orderly queue, and the
  renewal of their lease locks.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any, Literal, cast

import structlog
from redis.exceptions import ResponseError

from ._aio import wait_event
from ._async._io import TRANSIENT_ERRORS, AsyncClient, execute, is_cluster, open_client
from ._calls import Call as RedisCall
from ._calls import command, single
from ._entry_check import rejection, shown
from ._errors import BrokerUnavailableError, SerializationError, UsageError
from ._filter import TagFilter
from ._handler_times import HandlerTimes
from ._membership import check_subscribe_replies, heartbeat_call, my_queues, new_member_id, subscribe_calls
from ._message import MessageQueue, ReceivedMessage
from ._names import Keys, check_group, check_topic
from ._offsets import parse_offset
from ._orderly_queue import OrderlyRunner
from ._producing import release_due_call
from ._push_calls import create_groups_calls, fetch_command, prune_consumers_call, release_retries_call
from ._push_core import Ack, DeadLetterIt, RetryLater, RetryPolicy, decide, describe_error
from ._push_pool import Call, HandlerPool, Work
from ._push_settings import PushSettings
from ._push_settle import SettleRound, plan_round
from ._push_state import Delivery, QueueState, StreamState, Subscription
from ._replies import ReplyCode, classify
from ._topics import TopicRoute, route_flow
from ._trim_report import mark_reported_calls, trim_loss_calls, trim_losses

__all__ = ["PushConsumer", "PushStats"]

_ACK = Ack()

log = structlog.get_logger("rmq_style.push")
_TRANSIENT = (*TRANSIENT_ERRORS, OSError)
_RELEASE_LIMIT = 500
_PRUNE_EVERY = 10  # heartbeat intervals between two passes deleting dead members' stream consumers


@dataclass(slots=True)
class PushStats:
    consumed: int = 0  # listener succeeded
    failed: int = 0  # listener raised, returned RECONSUME_LATER or DEAD_LETTER, or timed out
    retried: int = 0  # retry scheduled
    dead_lettered: int = 0  # written to the dead-letter queue
    filtered: int = 0  # acked without a listener call (tag did not match)
    suspended: int = 0  # orderly: a failure held the queue, the message is tried again
    fenced: int = 0  # orderly: a write refused because the lease was lost
    trimmed: int = 0  # maxlen retention removed entries before the group handled them (as logged here)


_PREFETCH_MIN = 4  # entries in a reply worth reading ahead of handling them


def _scanning(q: QueueState) -> bool:
    return any(st.scan_from is not None for st in q.streams)


class _Backoff:
    def __init__(self, first_ms: int, max_ms: int) -> None:
        self.first, self.max, self.next = first_ms, max_ms, first_ms

    def reset(self) -> None:
        self.next = self.first

    async def wait(self, stop: asyncio.Event) -> None:
        delay, self.next = self.next, min(self.next * 2, self.max)
        await wait_event(stop, delay / 1000)


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
        self.settings = settings or PushSettings(**options)
        self.group = check_group(group)
        self.url = url
        self.member = new_member_id()
        self.keys = Keys(self.settings.namespace)
        self.stats = PushStats()
        self.handler_times = HandlerTimes()  # listener call durations, for the metrics histogram
        self._policy = RetryPolicy(self.settings.retry_schedule, self.settings.concurrent_max_reconsume_times)
        self._subs: dict[str, Subscription] = {}
        self._orderly_topics: set[str] = set()
        self._orderly: OrderlyRunner | None = None
        self._renew_task: asyncio.Task[None] | None = None
        self._queues: dict[MessageQueue, QueueState] = {}
        self._streams: dict[bytes, StreamState] = {}
        self._total = 0
        self._turn = 0  # the queue _readable starts from, moved on each call
        self._settle_buffer: list[Delivery] = []
        self._client: AsyncClient | None = None
        self._fetch_client: AsyncClient | None = None
        self._pool: HandlerPool | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._stopped = asyncio.Event()
        self._capacity = asyncio.Event()
        self._queues_changed = asyncio.Event()  # queues were acquired (cluster: each gets a fetch loop)
        self._settle_wakeup = asyncio.Event()
        self._retry_wakeup = asyncio.Event()
        self._drained = asyncio.Event()  # the pool is closed: no outcome will come any more
        self._next_prune = 0.0
        self._started = False
        self._log = log.bind(group=self.group, member=self.member)

    def __repr__(self) -> str:
        owned = [str(mq) for mq in self.queues]
        return (
            f"<PushConsumer group={self.group!r} member={self.member!r} queues={owned} "
            f"in_flight={self._total} {self.stats}>"
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
    ) -> None:
        """Consume *topic* messages whose tag matches *expression* (``*`` or ``TagA || TagB``).

        The listener takes the ReceivedMessage (a list of them when
        consume_message_batch_max_size > 1); with *model*, it takes the body
        validated into *model* first, then the message. It may be async or sync.
        With *orderly*, the messages of each queue are handled one at a time in
        offset order by the holder of the queue's lease (docs/push.md); one
        consumer may mix orderly and concurrent topics.
        """
        if self._started:
            raise UsageError("subscribe before start()")
        check_topic(topic)
        if topic in self._subs:
            raise UsageError(f"topic {topic!r} is already subscribed by this consumer")
        if not callable(listener):
            raise UsageError(f"a listener must be callable, got {listener!r}")
        is_async = inspect.iscoroutinefunction(listener) or inspect.iscoroutinefunction(
            getattr(listener, "__call__", None)  # noqa: B004 - an async callable object
        )
        self._subs[topic] = Subscription(topic, TagFilter.parse(expression), listener, is_async, model)
        if orderly:
            self._orderly_topics.add(topic)

    async def start(self) -> None:
        """Join the group, take this member's queues and start consuming; returns once running.

        Redis unreachable: BrokerUnavailableError, and the consumer can be started again.
        """
        if self._started:
            raise UsageError("this consumer was already started")
        if not self._subs:
            raise UsageError("subscribe to at least one topic before start()")
        self._started = True
        try:
            await self._start()
        except BaseException as exc:
            await self._abandon_start()
            if isinstance(exc, _TRANSIENT):
                raise BrokerUnavailableError(f"Redis unreachable at start: {exc}") from exc
            raise
        self._log.info("consumer.started", topics=sorted(self._subs), queues=self._owned_names())

    async def _start(self) -> None:
        self._client = open_client(self.url)
        self._fetch_client = open_client(self.url)  # blocking reads get their own connection
        expiry = self.settings.membership.member_expiry_ms
        for sub in self._subs.values():
            route = await _drive(self._client, route_flow(self.keys, sub.topic))
            sub.queue_count = route.queue_count
            sub.counts_trims = route.retention.mode == "maxlen"
            kind: Literal["orderly", "concurrent"] = (
                "orderly" if sub.topic in self._orderly_topics else "concurrent"
            )
            replies = await execute(
                self._client,
                subscribe_calls(self.keys, self.group, sub.topic, sub.filter, self.member, expiry, kind),
            )
            check_subscribe_replies(replies, self.group, sub.topic, sub.filter, kind)
        capacity = self.settings.pull_threshold_for_all
        self._pool = HandlerPool(
            self.settings.concurrency,
            capacity,
            self.settings.consume_timeout_ms / 1000,
            self._on_done,
            self.handler_times,
        )
        if self._orderly_topics:
            self._orderly = OrderlyRunner(
                group=self.group,
                member=self.member,
                keys=self.keys,
                settings=self.settings,
                stats=self.stats,
                times=self.handler_times,
                pool=self._pool,  # one budget: orderly calls take slots of the same pool
                client=self._client,
                wait_client=open_client(self.url),
                start_position=self._start_position,
            )
            self._renew_task = asyncio.create_task(self._guard("renew", self._orderly.background_loop))
        await self._rebalance()
        await self._report_trims()  # a loss while no consumer ran is logged at start
        self._next_prune = time.monotonic() + self._prune_interval()
        self._pool.start()
        fetch = self._fetch_per_queue if is_cluster(self._fetch_client) else self._fetch_loop
        self._tasks = [
            asyncio.create_task(self._guard("membership", self._membership_loop)),
            asyncio.create_task(self._guard("fetch", fetch)),
            asyncio.create_task(self._guard("settle", self._settle_loop)),
            asyncio.create_task(self._guard("retries", self._retry_loop)),
        ]

    async def _abandon_start(self) -> None:
        """Undo a start that failed before anything was consumed (the member's heartbeat just expires)."""
        if self._renew_task is not None:
            self._renew_task.cancel()
            await asyncio.gather(self._renew_task, return_exceptions=True)
        clients = [self._client, self._fetch_client]
        if self._orderly is not None:
            clients.append(self._orderly.wait_client)
        for client in clients:
            if client is not None:
                await client.aclose()
        self._client = self._fetch_client = self._orderly = self._renew_task = self._pool = None
        self._queues.clear()
        self._streams.clear()
        self._started = False

    async def stop(self) -> None:
        """Stop fetching, let running handlers finish (shutdown_timeout_ms), settle, leave the group."""
        if not self._started or self._stopped.is_set():
            return
        self._stopped.set()
        self._stop.set()
        fetch, membership, settle, retries = self._tasks
        await asyncio.gather(fetch, membership, retries, return_exceptions=True)
        cut = 0
        if self._orderly is not None:
            cut += await self._orderly.stop(self.settings.shutdown_timeout_ms / 1000)
            if self._renew_task is not None:
                self._renew_task.cancel()
                await asyncio.gather(self._renew_task, return_exceptions=True)
            await self._orderly.wait_client.aclose()
        if self._pool is not None:
            cut += await self._pool.close(self.settings.shutdown_timeout_ms / 1000)
        self._drained.set()
        self._settle_wakeup.set()
        # Redis away at shutdown: give up after a while; what is not settled stays pending
        done, _ = await asyncio.wait([settle], timeout=max(self.settings.shutdown_timeout_ms / 1000, 5.0))
        if not done:
            settle.cancel()
            await asyncio.gather(settle, return_exceptions=True)
        client = self._client
        assert client is not None
        try:
            await execute(
                client,
                [
                    heartbeat_call(
                        self.keys,
                        self.group,
                        t,
                        self.member,
                        self.settings.membership.member_expiry_ms,
                        join=False,
                    )
                    for t in self._subs
                ],
            )
        except _TRANSIENT as exc:
            self._log.warning("consumer.leave_failed", error=str(exc))
        self._log.info("consumer.stopped", unfinished=cut, unsettled=self._total, stats=str(self.stats))
        for c in (self._client, self._fetch_client):
            if c is not None:
                await c.aclose()

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
        orderly = self._orderly.owned if self._orderly is not None else []
        return sorted([q.mq for q in self._queues.values() if q.owned] + orderly)

    @property
    def in_flight(self) -> int:
        return self._total

    # -- supervision ----------------------------------------------------------------------------

    async def _guard(self, name: str, loop: Callable[[], Any]) -> None:
        """Run a loop; an unexpected error is logged and the loop restarted: the consumer never dies."""
        backoff = _Backoff(self.settings.reconnect_backoff_ms, self.settings.reconnect_backoff_max_ms)
        while True:
            try:
                await loop()
                return
            except Exception:  # noqa: BLE001 - a bug or an unforeseen reply: log it, keep consuming
                self._log.exception("consumer.loop_crashed", loop=name)
                await backoff.wait(self._stop)
                if self._stop.is_set() and name != "settle":
                    return

    def _owned_names(self) -> list[str]:
        return [str(mq) for mq in self.queues]

    # -- membership and rebalance ---------------------------------------------------------------

    async def _membership_loop(self) -> None:
        backoff = _Backoff(self.settings.reconnect_backoff_ms, self.settings.reconnect_backoff_max_ms)
        interval = self.settings.membership.heartbeat_interval_ms / 1000
        while not await wait_event(self._stop, interval):
            try:
                await self._rebalance()
                await self._adopt()
                await self._report_trims()
                if time.monotonic() >= self._next_prune:
                    self._next_prune = time.monotonic() + self._prune_interval()
                    await self._prune()
                backoff.reset()
            except _TRANSIENT as exc:
                self._log.warning("consumer.redis_unavailable", task="membership", error=str(exc))
                await backoff.wait(self._stop)

    async def _report_trims(self) -> None:
        """Warn about entries a maxlen trim removed before the group read them (once per loss)."""
        queues = [mq for mq in self.queues if self._subs[mq.topic].counts_trims]
        if not queues:
            return
        client = self._client
        assert client is not None
        losses = trim_losses(queues, await execute(client, trim_loss_calls(self.keys, self.group, queues)))
        for loss in losses:
            self.stats.trimmed += loss.new
            self._log.warning(
                "entries.trimmed_unread",
                topic=loss.queue.topic,
                queue=loss.queue.queue_id,
                count=loss.new,
                total=loss.total,
                why="maxlen retention removed them before this group read them",
            )
        if losses:
            await execute(client, mark_reported_calls(self.keys, self.group, losses))

    async def _rebalance(self) -> None:
        client = self._client
        assert client is not None
        ms = self.settings.membership
        subs = list(self._subs.values())
        calls = [
            heartbeat_call(self.keys, self.group, s.topic, self.member, ms.member_expiry_ms) for s in subs
        ]
        # the route too: an expanded topic's new queues are taken within one interval
        calls += [command("HGETALL", self.keys.topic_meta(s.topic)) for s in subs]
        replies = await execute(client, calls)
        for sub, reply, meta in zip(subs, replies, replies[len(subs) :], strict=False):
            self._take_route(sub, single(meta))
            members = frozenset(m.decode() for m in single(reply))
            sub.members = members
            mine = set(my_queues(sub.topic, sub.queue_count, reply, self.member, ms.allocation))
            if self._orderly is not None and sub.topic in self._orderly_topics:
                self._orderly.assign(sub, mine)
                continue
            for mq, state in self._queues.items():
                if mq.topic == sub.topic and state.owned and mq not in mine:
                    state.owned = False
                    self._log.info("queue.released", topic=mq.topic, queue=mq.queue_id)
            new = [mq for mq in sorted(mine) if mq not in self._queues or not self._queues[mq].owned]
            if new:
                await self._acquire(sub, new)

    def _take_route(self, sub: Subscription, meta: dict[bytes, bytes]) -> None:
        """Take in the topic's queue count (it only grows) and retention; the topic may be deleted."""
        if not meta:
            return
        route = TopicRoute.from_meta(sub.topic, meta)
        sub.retention = route.retention  # for the delayed-message release
        if route.queue_count > sub.queue_count:
            self._log.info("topic.expanded", topic=sub.topic, queues=route.queue_count, were=sub.queue_count)
            sub.queue_count = route.queue_count

    def _start_position(self) -> tuple[str, str]:
        s = self.settings
        if s.consume_from == "timestamp":
            at = s.consume_timestamp
            ms = int(at.timestamp() * 1000) if at is not None else int(time.time() * 1000) - 30 * 60_000
            return "timestamp", str(ms)
        return s.consume_from, ""

    async def _acquire(self, sub: Subscription, queues: list[MessageQueue]) -> None:
        client = self._client
        assert client is not None
        where, value = self._start_position()
        calls = []
        for mq in queues:
            calls += create_groups_calls(self.keys.queue(mq.topic, mq.queue_id), self.group, where, value)
        for reply in await execute(client, calls):
            if isinstance(reply, Exception) and classify(reply) is not ReplyCode.BUSYGROUP:
                raise reply
        for mq in queues:
            state = self._queues.get(mq)
            if state is None:
                qk = self.keys.queue(mq.topic, mq.queue_id)
                state = QueueState(mq, qk, sub)
                state.streams = (
                    StreamState(qk.stream, state, retry=False),
                    StreamState(qk.retry_stream(self.group), state, retry=True),
                )
                self._queues[mq] = state
                for stream in state.streams:
                    self._streams[stream.key.encode()] = stream
            state.owned = True
            for stream in state.streams:
                stream.scan_from = b"0-0"  # entries of ours left pending (an earlier ownership)
            self._log.info("queue.acquired", topic=mq.topic, queue=mq.queue_id)
        self._capacity.set()
        self._retry_wakeup.set()
        self._queues_changed.set()

    async def _adopt(self) -> None:
        """Take over entries pending at members that are gone; re-read our own if some went astray."""
        client = self._client
        assert client is not None
        # queues handed to another member too: entries of ours may be stranded there (a read whose
        # reply was lost as the queue left us); nobody else takes them while we live
        streams = [s for q in self._queues.values() for s in q.streams]
        if not streams:
            return
        pipe = client.pipeline(transaction=False)
        for s in streams:
            pipe.xpending(s.key, self.group)
        summaries = await pipe.execute(raise_on_error=False)
        min_idle = self.settings.membership.heartbeat_interval_ms
        for stream, summary in zip(streams, summaries, strict=True):
            if isinstance(summary, Exception):
                continue  # NOGROUP: the fetch loop re-creates the group
            live = stream.queue.sub.members
            for consumer in summary.get("consumers") or []:
                name = consumer["name"].decode() if isinstance(consumer["name"], bytes) else consumer["name"]
                if name == self.member:
                    if int(consumer["pending"]) > len(stream.in_flight) and stream.scan_from is None:
                        stream.scan_from = b"0-0"
                    continue
                if name in live or not stream.queue.owned:
                    continue  # a live member still works on them (a slow handler is never taken away)
                rows = await client.xpending_range(
                    stream.key, self.group, min="-", max="+", count=1000, consumername=name, idle=min_idle
                )
                ids: list[Any] = [r["message_id"] for r in rows]
                if not ids:
                    continue
                claimed = await client.xclaim(stream.key, self.group, self.member, min_idle, ids, justid=True)
                if claimed:
                    self._log.warning(
                        "entries.adopted", stream=stream.key, from_member=name, count=len(claimed)
                    )
                    stream.scan_from = b"0-0"
                if len(claimed) < len(ids):
                    await self._count_trimmed_claims(stream, name, ids, claimed)

    async def _count_trimmed_claims(
        self, stream: StreamState, member: str, ids: list[Any], claimed: list[Any]
    ) -> None:
        """Entries trimmed while pending at a dead member: XCLAIM drops them silently (Redis 7)."""
        client = self._client
        assert client is not None
        head = await client.xrange(stream.key, count=1)
        first = parse_offset(head[0][0]) if head else None
        taken = {parse_offset(c) for c in claimed}
        for entry_id in ids:
            offset = parse_offset(entry_id)
            # unclaimed and before the first entry left: trimmed (else another member took it)
            if offset not in taken and (first is None or offset < first):
                self.stats.trimmed += 1
                self._log.warning(
                    "entry.lost_to_trim", stream=stream.key, offset=str(offset), from_member=member
                )

    def _prune_interval(self) -> float:
        """Seconds between prune passes: a consumer cannot become prunable faster than member expiry."""
        ms = self.settings.membership
        return max(_PRUNE_EVERY * ms.heartbeat_interval_ms, ms.member_expiry_ms) / 1000

    def _prune_targets(self) -> list[tuple[str, frozenset[str]]]:
        """Every stream this member consumes now, with the live members of its topic."""
        targets = []
        for q in self._queues.values():
            if q.owned:
                live = q.sub.members | {self.member}
                targets += [(s.key, live) for s in q.streams]
        for mq in self._orderly.owned if self._orderly is not None else []:
            live = self._subs[mq.topic].members | {self.member}
            qk = self.keys.queue(mq.topic, mq.queue_id)
            targets += [(qk.stream, live), (qk.retry_stream(self.group), live)]  # rs: replays
        return targets

    async def _prune(self) -> None:
        """Delete the stream consumers left by dead members once they own no pending entry.

        Each owner prunes its own queues' streams, so every queue is pruned by one member.
        """
        client = self._client
        assert client is not None
        targets = self._prune_targets()
        if not targets:
            return
        expiry = self.settings.membership.member_expiry_ms
        calls = [prune_consumers_call(key, self.group, expiry, live) for key, live in targets]
        replies = await execute(client, calls)
        for (key, _), reply in zip(targets, replies, strict=True):
            if isinstance(reply, Exception):
                self._log.error("consumers.prune_failed", stream=key, error=str(reply))
            elif reply:
                self._log.info("consumers.pruned", stream=key, count=int(reply))

    # -- fetching -------------------------------------------------------------------------------

    def _readable(
        self, reserved: dict[int, int] | None = None, only: QueueState | None = None
    ) -> list[StreamState]:
        """Streams with room for one more pull (of *only*, if given).

        *reserved*: entries read but not registered yet, per queue.
        """
        s = self.settings
        extra = reserved or {}
        room = s.pull_threshold_for_all - self._total - sum(extra.values())
        now = time.monotonic()
        out = []
        queues = list(self._queues.values()) if only is None else [only]
        if len(queues) > 1:  # when room runs out, the queues at the end must not always be the ones left out
            self._turn = (self._turn + 1) % len(queues)
            queues = queues[self._turn :] + queues[: self._turn]
        for q in queues:
            if not q.owned:
                # a queue gone to another member: only our own entries stranded there, read by a scan
                out += [st for st in q.streams if st.scan_from is not None]
                continue
            count = q.count + extra.get(id(q), 0)
            if (
                count + s.pull_batch_size > s.pull_threshold_for_queue
                or q.size >= s.pull_threshold_size_for_queue
            ):
                continue
            for stream in q.streams:
                if stream.retry and not (stream.wanted or stream.scan_from or now >= stream.next_check):
                    continue  # an empty retry stream would only slow every long poll down
                if room >= s.pull_batch_size:
                    out.append(stream)
                    room -= s.pull_batch_size
        return out

    def _read_new(self, client: AsyncClient, streams: list[StreamState]) -> asyncio.Future[Any]:
        s = self.settings
        next_check = time.monotonic() + s.retry_poll_ms / 1000
        for st in streams:
            if st.retry:  # read now; again when it returns entries or retries are released into it
                st.wanted = False
                st.next_check = next_check
        cmd = fetch_command(
            self.group,
            self.member,
            s.pull_batch_size,
            s.poll_timeout_ms,
            [st.key for st in streams],
            [">"] * len(streams),
        )
        read: asyncio.Future[Any] = asyncio.ensure_future(cast(Any, client).execute_command(*cmd.args))
        return read

    def _prefetch(
        self, client: AsyncClient, reply: Any, only: QueueState | None = None
    ) -> asyncio.Future[Any] | None:
        """Start the next long poll before handling this batch, so Redis works while we do."""
        if not reply or self._stop.is_set():
            return None
        reserved: dict[int, int] = {}
        for key, entries in reply:
            stream = self._streams.get(key if isinstance(key, bytes) else key.encode())
            if stream is not None:
                reserved[id(stream.queue)] = reserved.get(id(stream.queue), 0) + len(entries)
        if sum(reserved.values()) < _PREFETCH_MIN:
            return None  # a trickle: hand it over first, a read sent now would only delay it
        streams = self._readable(reserved, only)
        if not streams or any(st.scan_from is not None for st in streams):
            return None
        return self._read_new(client, streams)

    async def _fetch_per_queue(self) -> None:
        """Redis Cluster: the queues live in different slots, so each owned queue has its own long poll."""
        loops: dict[MessageQueue, asyncio.Task[None]] = {}
        try:
            while not self._stop.is_set():
                self._queues_changed.clear()
                for mq, q in self._queues.items():
                    running = loops.get(mq)
                    if (q.owned or _scanning(q)) and (running is None or running.done()):
                        loops[mq] = asyncio.create_task(self._fetch_queue(q))
                await wait_event(self._queues_changed, self.settings.poll_timeout_ms / 1000)
        finally:
            await asyncio.gather(*loops.values(), return_exceptions=True)

    async def _fetch_queue(self, q: QueueState) -> None:
        # a client of its own: redis-py's cluster client closes all its connections after some
        # errors, which would break the other queues' reads in flight
        client = open_client(self.url)
        try:
            await self._guard("fetch", partial(self._fetch_loop, q, client))
        finally:
            await client.aclose()

    async def _fetch_loop(self, only: QueueState | None = None, client: AsyncClient | None = None) -> None:
        """Long-poll the owned queues (only *only*, until it is released, on a Redis Cluster)."""
        client = client or self._fetch_client
        assert client is not None
        s = self.settings
        backoff = _Backoff(s.reconnect_backoff_ms, s.reconnect_backoff_max_ms)
        ahead: asyncio.Future[Any] | None = None
        try:
            while not self._stop.is_set():
                if ahead is None:
                    if only is not None and not only.owned and not _scanning(only):
                        return
                    streams = self._readable(only=only)
                    if not streams:
                        self._capacity.clear()
                        await wait_event(self._capacity, s.poll_timeout_ms / 1000)
                        continue
                    scans = [st for st in streams if st.scan_from is not None]
                else:
                    scans = []
                try:
                    if scans:
                        cmd = fetch_command(
                            self.group,
                            self.member,
                            s.pull_batch_size,
                            None,
                            [st.key for st in scans],
                            [st.scan_from.decode() for st in scans if st.scan_from is not None],
                        )
                        reply = await cast(Any, client).execute_command(*cmd.args)
                        self._on_read(reply, scans)
                    else:
                        read, ahead = ahead or self._read_new(client, streams), None
                        reply = await read
                        if self._stop.is_set():
                            return  # read after stop: left pending, handed back when we leave
                        ahead = self._prefetch(client, reply, only)
                        if ahead is not None:
                            await asyncio.sleep(0)  # lets the next XREADGROUP go out now
                        self._on_read(reply, None)
                    backoff.reset()
                except _TRANSIENT as exc:  # first: CLUSTERDOWN is a ResponseError too
                    self._log.warning("consumer.redis_unavailable", task="fetch", error=str(exc))
                    for q in self._queues.values() if only is None else (only,):
                        if q.owned:  # (a queue handed on: the heartbeat's own-pending check)
                            for st in q.streams:
                                st.scan_from = b"0-0"  # a lost reply may have delivered entries to us
                    await backoff.wait(self._stop)
                except ResponseError as exc:
                    if classify(exc) is not ReplyCode.NOGROUP:
                        raise
                    await self._recreate_groups(str(exc))
        finally:
            if ahead is not None:
                # never cancel a blocked read (fakeredis would keep a zombie reader); what it
                # delivers stays pending and is handed back when we leave
                await asyncio.gather(ahead, return_exceptions=True)

    async def _recreate_groups(self, error: str) -> None:
        client = self._client
        assert client is not None
        calls = []
        for q in self._queues.values():
            if q.owned:
                main = q.streams[0]
                where, value = ("after", main.last_id.decode()) if main.last_id else self._start_position()
                calls += create_groups_calls(q.keys, self.group, where, value)
                self._log.warning(
                    "group.recreated",
                    topic=q.mq.topic,
                    queue=q.mq.queue_id,
                    where=where,
                    at=value,
                    error=error,
                )
        for reply in await execute(client, calls):
            if isinstance(reply, Exception) and classify(reply) is not ReplyCode.BUSYGROUP:
                raise reply

    def _on_read(self, reply: Any, scans: list[StreamState] | None) -> None:
        """Register the entries read and hand them to the pool (or settle them at once).

        The hot path of the consumer: one pass per entry, no call that is not needed.
        """
        batch_size = self.settings.consume_message_batch_max_size
        max_size = self.settings.max_message_size
        pool = self._pool
        assert pool is not None
        returned: set[int] = set()
        for key, entries in reply or ():
            stream = self._streams[key if isinstance(key, bytes) else key.encode()]
            if stream.retry and entries:
                stream.wanted = True  # more may follow
            if not entries:
                continue
            returned.add(id(stream))
            queue = stream.queue
            sub = queue.sub
            topic, queue_id = queue.mq.topic, queue.mq.queue_id
            in_flight = stream.in_flight
            tags = sub.filter.tags
            one_by_one = batch_size == 1 and sub.model is None
            listener, is_async = sub.listener, sub.is_async
            ready: list[Delivery] = []
            calls: list[Call] = []
            count = size = 0
            for entry_id, fields in entries:
                if scans is not None:
                    stream.scan_from = entry_id
                    if entry_id in in_flight:
                        continue  # being handled or settled right now
                if not fields:  # trimmed while pending: nil fields, which redis-py reads as {}
                    self._register_lost(stream, entry_id)
                    continue
                body_size = len(fields.get(b"d") or b"")
                in_flight.add(entry_id)
                count += 1
                size += body_size
                problem = rejection(fields, max_size)
                if problem is not None:  # never handed to a listener (docs/storage.md, field validity)
                    self._settle(Delivery(stream, entry_id, fields, body_size), DeadLetterIt(problem))
                    continue
                msg = ReceivedMessage(topic, queue_id, entry_id, fields)  # lazy: decode_entry
                d = Delivery(stream, entry_id, fields, body_size, msg)
                if tags is not None and msg.tag not in tags:
                    self.stats.filtered += 1
                    self._settle(d, _ACK)
                elif one_by_one:
                    calls.append((listener, is_async, (msg,), d))
                else:
                    ready.append(d)
            queue.count += count
            queue.size += size
            self._total += count
            if scans is None:
                stream.last_id = entries[-1][0]
            if calls:
                pool.submit_many(calls)  # one hand-off per stream read, not one per message
            for start in range(0, len(ready), batch_size):
                self._submit(sub, ready[start : start + batch_size])
        for st in scans or ():
            if id(st) not in returned:
                st.scan_from = None  # no more entries of ours pending there

    def _register_lost(self, stream: StreamState, entry_id: bytes) -> None:
        """An entry trimmed while pending (MAXLEN retention): nothing left to handle, ack it."""
        d = Delivery(stream, entry_id, {}, 0)
        stream.in_flight.add(entry_id)
        stream.queue.count += 1
        self._total += 1
        self.stats.trimmed += 1
        self._log.warning("entry.lost_to_trim", stream=stream.key, offset=entry_id.decode())
        self._settle(d, _ACK)

    def _submit(self, sub: Subscription, deliveries: list[Delivery]) -> None:
        args: list[Any]
        if sub.model is not None:
            bodies = []
            good = []
            for d in deliveries:
                assert d.message is not None
                try:
                    bodies.append(d.message.decode(sub.model))
                    good.append(d)
                except SerializationError as exc:  # bad input: straight to the dead-letter queue
                    self._fail(d, exc)
            if not good:
                return
            deliveries = good
            messages = [d.message for d in good]
            args = (
                [bodies, messages]
                if self.settings.consume_message_batch_max_size > 1
                else [bodies[0], messages[0]]
            )
        else:
            messages = [d.message for d in deliveries]
            args = [messages] if self.settings.consume_message_batch_max_size > 1 else [messages[0]]
        assert self._pool is not None
        self._pool.submit(Work(sub.listener, sub.is_async, args, deliveries))

    # -- outcomes -------------------------------------------------------------------------------

    def _on_done(self, token: Delivery | list[Delivery], outcome: object) -> None:
        if outcome is None and type(token) is Delivery and token.decision is None:  # the common case
            self.stats.consumed += 1
            if self.settings.trace_messages:
                self._event(token).debug("message.consumed")
            token.decision = _ACK
            self._settle_buffer.append(token)
            self._settle_wakeup.set()
            return
        for d in token if isinstance(token, list) else [token]:
            if d.decision is not None:
                continue
            try:
                if outcome is None:
                    self._succeed(d)
                else:
                    self._fail(d, outcome)
            except Exception as exc:  # noqa: BLE001 - contained: one message never stops the pool
                self._log.exception("message.outcome_failed", offset=d.entry_id.decode())
                if d.decision is None:
                    self._settle(d, DeadLetterIt(f"settling failed: {describe_error(exc)}"))

    def _succeed(self, d: Delivery) -> None:
        self.stats.consumed += 1
        if self.settings.trace_messages:
            self._event(d).debug("message.consumed")
        self._settle(d, _ACK)

    def _fail(self, d: Delivery, outcome: object) -> None:
        reconsume = d.message.reconsume_times if d.message is not None else 0
        decision = decide(outcome, reconsume, self._policy)
        if isinstance(decision, Ack):
            self._succeed(d)
            return
        self.stats.failed += 1
        reason = decision.reason
        self._event(d).warning(
            "message.failed",
            reconsume_times=reconsume,
            reason=reason,
            next="retry" if isinstance(decision, RetryLater) else "dead_letter",
        )
        self._settle(d, decision)

    def _event(self, d: Delivery) -> Any:
        m = d.message
        return self._log.bind(
            msg_id=shown(d.fields.get(b"i") or b"") if m is None else m.msg_id,
            topic=d.stream.queue.mq.topic,
            queue=d.stream.queue.mq.queue_id,
            offset=shown(d.origin_offset),
        )

    def _settle(self, d: Delivery, decision: Any) -> None:
        d.decision = decision
        self._settle_buffer.append(d)
        self._settle_wakeup.set()

    async def _settle_loop(self) -> None:
        client = self._client
        assert client is not None
        backoff = _Backoff(self.settings.reconnect_backoff_ms, self.settings.reconnect_backoff_max_ms)
        while True:
            if not self._settle_buffer:
                if self._drained.is_set():
                    return
                self._settle_wakeup.clear()
                await wait_event(self._settle_wakeup, 0.5)
                continue
            batch, self._settle_buffer = self._settle_buffer, []
            round_ = self._plan(batch)
            try:
                replies = await execute(client, round_.calls)
            except _TRANSIENT as exc:
                self._log.warning("consumer.redis_unavailable", task="settle", error=str(exc))
                self._settle_buffer = batch + self._settle_buffer
                await backoff.wait(self._drained if self._drained.is_set() else self._stop)
                continue
            backoff.reset()
            acked, done, failed = round_.read_grouped(replies)
            for deliveries in acked:
                self._release_acked(deliveries)
            for settled in done:
                self._account(settled.delivery, settled.outcome)
            for d, error in failed:
                # left pending in Redis: our own-PEL re-read delivers it again
                self._event(d).error("message.settle_failed", error=str(error))
                self._release(d)

    def _plan(self, batch: list[Delivery]) -> SettleRound:
        """The round of *batch*; a delivery that cannot be planned is dead-lettered, the others settle."""
        try:
            return plan_round(self.group, batch)
        except Exception:  # noqa: BLE001 - a bug or an unforeseen value: contain it to its message
            planned = []
            for d in batch:
                try:
                    plan_round(self.group, [d])
                except Exception as exc:  # noqa: BLE001 - logged, then dead-lettered
                    self._event(d).exception("message.settle_failed")
                    d.decision = DeadLetterIt(f"settling failed: {describe_error(exc)}")
                    try:
                        plan_round(self.group, [d])
                    except Exception:  # noqa: BLE001 - left pending: delivered again by the own-PEL scan
                        self._event(d).error("message.left_pending")
                        self._release(d)
                        continue
                planned.append(d)
            return plan_round(self.group, planned)

    def _account(self, d: Delivery, outcome: str) -> None:
        if outcome == "retried":
            self.stats.retried += 1
            self._retry_wakeup.set()
            self._event(d).info(
                "message.retry_scheduled", reconsume_times=getattr(d.decision, "reconsume_times", 0)
            )
        elif outcome == "dead_lettered":
            self.stats.dead_lettered += 1
            self._event(d).warning("message.dead_lettered", reason=getattr(d.decision, "reason", ""))
        elif outcome == "group_lost":
            self._event(d).warning("message.group_lost")
        self._release(d)

    def _release_acked(self, deliveries: list[Delivery]) -> None:
        """_release of deliveries of one stream acknowledged together (the common case, in bulk)."""
        stream = deliveries[0].stream
        discard = stream.in_flight.discard
        size = 0
        for d in deliveries:
            discard(d.entry_id)
            size += d.size
        queue = stream.queue
        queue.count -= len(deliveries)
        queue.size -= size
        self._total -= len(deliveries)
        self._capacity.set()

    def _release(self, d: Delivery) -> None:
        stream = d.stream
        stream.in_flight.discard(d.entry_id)
        stream.queue.count -= 1
        stream.queue.size -= d.size
        self._total -= 1
        self._capacity.set()

    # -- retries --------------------------------------------------------------------------------

    async def _retry_loop(self) -> None:
        """Release the due retries of the owned queues and the due delayed messages of every queue owned.

        Waits until the next one is due (by the server clock) or retry_poll_ms at most. A delayed
        message is released into the topic's queue by a script, so of several groups owning that
        queue the first one moves it and the others find nothing (never twice).
        """
        client = self._client
        assert client is not None
        s = self.settings
        backoff = _Backoff(s.reconnect_backoff_ms, s.reconnect_backoff_max_ms)
        while not self._stop.is_set():
            owned = [q for q in self._queues.values() if q.owned]
            delayed = [q.mq for q in owned] + (self._orderly.owned if self._orderly is not None else [])
            wait_ms = s.retry_poll_ms
            self._retry_wakeup.clear()
            if delayed:
                calls = [release_retries_call(q.keys, self.group, _RELEASE_LIMIT) for q in owned]
                calls += [self._release_due_call(mq) for mq in delayed]
                try:
                    replies = await execute(client, calls)
                    backoff.reset()
                except _TRANSIENT as exc:
                    self._log.warning("consumer.redis_unavailable", task="retries", error=str(exc))
                    await backoff.wait(self._stop)
                    continue
                for q, reply in zip(owned, replies, strict=False):
                    if isinstance(reply, Exception):
                        self._log.error(
                            "retries.release_failed", topic=q.mq.topic, queue=q.mq.queue_id, error=str(reply)
                        )
                        continue
                    moved, next_ms = int(reply[0]), int(reply[1])
                    if moved:
                        q.streams[1].wanted = True
                        self._capacity.set()
                    if moved >= _RELEASE_LIMIT:
                        wait_ms = 0
                    elif next_ms >= 0:
                        wait_ms = min(wait_ms, next_ms)
                for mq, reply in zip(delayed, replies[len(owned) :], strict=True):
                    wait_ms = min(wait_ms, self._delayed_wait_ms(mq, reply, s.retry_poll_ms))
            if wait_ms > 0:
                await _wait_any(self._stop, self._retry_wakeup, wait_ms / 1000)

    def _release_due_call(self, mq: MessageQueue) -> RedisCall:
        sub = self._subs[mq.topic]
        route = TopicRoute(mq.topic, sub.queue_count, sub.retention)
        return release_due_call(self.keys, route, mq.queue_id, _RELEASE_LIMIT)

    def _delayed_wait_ms(self, mq: MessageQueue, reply: Any, poll_ms: int) -> int:
        """How long until the queue's next delayed message is due (its release_due reply)."""
        if isinstance(reply, Exception):
            self._log.error("delayed.release_failed", topic=mq.topic, queue=mq.queue_id, error=str(reply))
            return poll_ms
        moved, next_ms, now_ms = int(reply[0]), int(reply[1]), int(reply[2])
        if moved:
            self._log.debug("delayed.released", topic=mq.topic, queue=mq.queue_id, count=moved)
        if moved >= _RELEASE_LIMIT:
            return 0
        if next_ms < 0 or (next_ms <= now_ms and not moved):
            return poll_ms  # nothing held, or (a queue gone) nothing releasable: poll
        return max(next_ms - now_ms, 0)


async def _wait_any(a: asyncio.Event, b: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def _drive(client: AsyncClient, flow: Any) -> Any:
    from ._async._io import drive  # noqa: PLC0415

    return await drive(client, flow)
