"""Broadcasting push consumption: every member reads every queue of its topics from its own position.

RocketMQ's BROADCASTING message model on the one push runtime: the listener
runner, the settler (with ``BroadcastPlanner`` for its calls) and the retry
loop are the clustering ones; what differs is

- the fetch source (``BroadcastFetcher``): ``XREAD`` from the member's
  position per queue, and from the start of its own retry stream, instead of
  ``XREADGROUP`` (no consumer group, no rebalance: each member takes every
  queue, ``_rebalance.all_queues``);
- the offset commit (``Positions``, committed by ``BroadcastMembership`` at
  every heartbeat and at stop): the position stored in
  ``rmq:{T:i}:bcast:G`` (field: instance name) is the last entry of the
  queue before the first one still being handled, so a restarted member with
  the same instance name resumes there (duplicates: what was in flight and
  what settled since the last commit; no loss);
- retries and dead letters are the member's own: its retry records
  ``rmq:{T:i}:bretry:G:<instance>`` released into its retry stream
  ``rmq:{T:i}:brs:G:<instance>``, dead letters in the group's DLQ with a
  ``member`` field.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from .._async._io import AsyncClient, execute
from .._call_values import Call as RedisCall
from .._call_values import Command, command, run_script, single
from .._errors import InvalidOffsetError, UsageError
from .._membership import heartbeat_call
from .._message import MessageQueue
from .._names import check_instance
from .._offsets import Offset, parse_offset
from .._rebalance import all_queues
from .broadcast_orderly import OrderlyHold, one_per_queue, orderly
from .broadcast_plan import BroadcastPlanner
from .broadcast_positions import WORKER_SLOT_ENV, Positions, Track, default_member_name
from .context import TRANSIENT, Context
from .dedup import DedupListener
from .fetch import Fetcher, run_one
from .rebalance import Rebalancer
from .retries import RELEASE_LIMIT, Retries
from .settling import Settler
from .state import Delivery, QueueState, StreamState, Subscription
from .waits import wait_event

__all__ = [
    "WORKER_SLOT_ENV",
    "BroadcastFetcher",
    "BroadcastMembership",
    "BroadcastRetries",
    "broadcast_parts",
]

_RUNNING: set[tuple[str, str, str, str]] = set()  # (url, namespace, group, instance) started here


class BroadcastFetcher(Fetcher):
    """The fetch source of a broadcasting member: XREAD from its own positions."""

    positions: Positions

    def readable(
        self, reserved: dict[int, int] | None = None, only: QueueState | None = None
    ) -> list[StreamState]:
        extra = reserved or {}
        return [
            st
            for st in super().readable(reserved, only)
            if not self.positions.behind(st)
            and not ((st.queue.count or extra.get(id(st.queue))) and orderly(self.c, st.queue))
        ]

    def read_new(self, client: AsyncClient, streams: list[StreamState]) -> asyncio.Future[Any]:
        """The next read (also the read-ahead of ``Fetcher.prefetch``): XREAD after the positions."""
        s = self.c.settings
        next_check = time.monotonic() + s.retry_poll_ms / 1000
        for st in streams:
            if st.retry:  # read now; again when it returns entries or retries are released into it
                st.wanted = False
                st.next_check = next_check
        # orderly queues take one entry per read: only orderly ones here, no more is needed
        count = 1 if all(orderly(self.c, st.queue) for st in streams) else s.pull_batch_size
        ids = [(st.last_id or b"0-0").decode() for st in streams]
        cmd = Command(
            (
                "XREAD",
                "COUNT",
                count,
                "BLOCK",
                s.poll_timeout_ms,
                "STREAMS",
                *[st.key for st in streams],
                *ids,
            )
        )
        return asyncio.ensure_future(run_one(client, cmd))

    async def fetch_loop(self, only: QueueState | None = None, client: AsyncClient | None = None) -> None:
        """Long-poll the queues (only *only* on a Redis Cluster); a read has no side effect in Redis.

        As the clustering fetch, the next read goes out before a batch is handed on: the
        positions in memory move first, so it reads after what this reply brought.
        """
        client = client or self.c.fetch_client
        assert client is not None
        s = self.c.settings
        backoff = self.c.backoff()
        ahead: asyncio.Future[Any] | None = None
        try:
            while not self.c.stopping.is_set():
                if ahead is None:
                    streams = self.readable(only=only)
                    if not streams:
                        self.c.capacity.clear()
                        await wait_event(self.c.capacity, s.poll_timeout_ms / 1000)
                        continue
                read, ahead = ahead or self.read_new(client, streams), None
                try:
                    reply = await read
                except TRANSIENT as exc:
                    self.c.log.warning("consumer.redis_unavailable", task="fetch", error=str(exc))
                    await backoff.wait(self.c.stopping)
                    continue
                backoff.reset()
                if self.c.stopping.is_set():
                    return  # read after stop: not handed on, the position stays before it
                reply = one_per_queue(self.c, reply)
                read_now = []
                for key, entries in reply or ():
                    stream = self.c.streams.get(key if isinstance(key, bytes) else key.encode())
                    if stream is not None and entries:
                        stream.last_id = entries[-1][0]  # the read-ahead reads after them
                        read_now.append((stream, entries))
                ahead = self.prefetch(client, reply, only)
                if ahead is not None:
                    await asyncio.sleep(0)  # lets the next XREAD go out now
                self.on_read(reply, None)
                # only now, with every entry in flight: the position must never pass one not handed on
                for stream, entries in read_now:
                    self.positions.read(stream, entries)
        finally:
            if ahead is not None:  # never cancel a blocked read (fakeredis would keep a zombie reader)
                await asyncio.gather(ahead, return_exceptions=True)


class BroadcastMembership(Rebalancer):
    """Heartbeat, every queue of each topic (no allocation), the member's positions loaded and committed."""

    positions: Positions

    async def rebalance(self) -> None:
        subs = list(self.c.subs.values())
        ms = self.c.settings.membership
        calls = [
            heartbeat_call(self.c.keys, self.c.group, s.topic, self.c.member, ms.member_expiry_ms)
            for s in subs
        ]
        calls += [command("HGETALL", self.c.keys.topic_meta(s.topic)) for s in subs]
        replies = await execute(self.c.redis(), calls)
        for sub, reply, meta in zip(subs, replies, replies[len(subs) :], strict=False):
            sub.members = frozenset(m.decode() for m in single(reply))
            joined = any(mq.topic == sub.topic for mq in self.c.queues)
            self.take_route(sub, single(meta))
            new = [mq for mq in all_queues(sub.topic, sub.queue_count) if mq not in self.c.queues]
            if new:
                await self.acquire_all(sub, new, joined)
        await self.positions.commit()

    async def acquire_all(self, sub: Subscription, queues: list[MessageQueue], joined: bool) -> None:
        """Take *queues* at the member's stored positions.

        A queue without one starts where consume_from says if the member has no position in the
        topic at all (it is new), else at its first entry (the queue was added by expand_topic
        since: while this member ran, *joined*, or while it was stopped).
        """
        c, instance = self.c, self.positions.instance
        calls: list[RedisCall] = []
        for mq in queues:
            qk = c.keys.queue(mq.topic, mq.queue_id)
            calls += [
                command("HGET", qk.broadcast(c.group), instance),
                command("XREVRANGE", qk.stream, "+", "-", "COUNT", 1),
            ]
        replies = await execute(c.redis(), [*calls, command("TIME")])
        now_ms = int(single(replies.pop())[0]) * 1000 + 1000  # a second of slack: ids are ms of the server
        start = self.start_offset()
        stored_any = joined or any(r is not None for r in replies[0::2])
        writes: list[RedisCall] = []
        for i, mq in enumerate(queues):
            qk = c.keys.queue(mq.topic, mq.queue_id)
            stored, last = replies[2 * i], single(replies[2 * i + 1])
            last_id = parse_offset(last[0][0]) if last else None
            position = self.stored_position(mq, single(stored), now_ms)
            if position is None:
                position = Offset(0, 0) if stored_any else start or last_id or Offset(0, 0)
                writes.append(command("HSET", qk.broadcast(c.group), instance, str(position)))
            state = QueueState(mq, qk, sub)
            state.streams = (
                StreamState(qk.stream, state, retry=False, last_id=str(position).encode()),
                StreamState(qk.member_retry_stream(c.group, instance), state, retry=True, last_id=b"0-0"),
            )
            c.queues[mq] = state
            for stream in state.streams:
                c.streams[stream.key.encode()] = stream
            self.positions.tracks[state.streams[0]] = Track(stored=str(position).encode())
            c.log.info(
                "queue.acquired", topic=mq.topic, queue=mq.queue_id, position=str(position), instance=instance
            )
        if writes:
            await execute(c.redis(), writes)
        c.capacity.set()
        c.retry_wakeup.set()
        c.queues_changed.set()

    def stored_position(self, mq: MessageQueue, value: Any, now_ms: int) -> Offset | None:
        """The member's stored position, checked: Redis content may be hostile (None: not usable)."""
        if value is None or isinstance(value, Exception):
            return None
        try:
            position = parse_offset(value)
        except InvalidOffsetError:
            position = None
        if position is None or position.ms > now_ms:  # garbage, or in the future: it would wait forever
            self.c.log.warning(
                "broadcast.position_invalid", topic=mq.topic, queue=mq.queue_id, value=repr(value)[:80]
            )
            return None
        return position

    def start_offset(self) -> Offset | None:
        """Where a member without a position starts (consume_from); None: after the last entry."""
        where, value = self.c.start_position()
        if where == "first":
            return Offset(0, 0)
        if where == "timestamp":
            return Offset(int(value), 0).previous()
        return None

    async def adopt(self) -> None:
        """Nothing to adopt: no member reads another one's entries."""

    async def report_trims(self) -> None:
        """Trims are counted per stream consumer group; a broadcasting member has none."""

    async def prune(self) -> None:
        """No stream consumers to prune."""


class BroadcastRetries(Retries):
    """The retry loop on the member's own retry records."""

    instance: str

    def release_retries_call(self, q: QueueState) -> RedisCall:
        g, m = self.c.group, self.instance
        keys = (q.keys.member_retry(g, m), q.keys.member_retry_body(g, m), q.keys.member_retry_stream(g, m))
        return run_script("release_retries", keys, (RELEASE_LIMIT,))


class Broadcast:
    """The broadcasting parts of one PushConsumer, wired to its Context."""

    def __init__(
        self,
        c: Context,
        fetcher: BroadcastFetcher,
        membership: BroadcastMembership,
        retries: BroadcastRetries,
    ) -> None:
        s = c.settings
        given = s.instance_name
        self.c = c
        self.instance, self.unstable = (check_instance(given), None) if given else default_member_name()
        self.positions = Positions(c, self.instance)
        fetcher.positions = membership.positions = self.positions
        retries.instance = self.instance
        c.member_valid_until = math.inf  # no allocation to lose: calls read are never dropped
        self.running: tuple[str, str, str, str] | None = None

    def check(self) -> None:
        """Before start: refuse what broadcasting does not do, and a second member of this name here."""
        c = self.c
        if c.orderly_topics and c.settings.consume_message_batch_max_size > 1:
            raise UsageError(
                "orderly broadcasting hands one message at a time: consume_message_batch_max_size "
                f"must be 1 with orderly subscriptions ({sorted(c.orderly_topics)}) and message_model="
                "'broadcasting'"
            )
        keyed = sorted(t for t, sub in c.subs.items() if sub.key_order is not None)
        if keyed:
            raise UsageError(
                f"key-ordered subscriptions ({keyed}) are not supported with message_model='broadcasting': "
                "a broadcasting member takes orderly=True (each queue in order, per member)"
            )
        deduped = sorted(t for t, sub in c.subs.items() if isinstance(sub.listener, DedupListener))
        if deduped:
            raise UsageError(
                f"idempotent subscriptions ({deduped}) are not supported with message_model='broadcasting' "
                "yet: the consumed marks are the group's, so one member would skip what another handled"
            )
        key = (c.url, c.settings.namespace, c.group, self.instance)
        if key in _RUNNING:
            raise UsageError(
                f"a broadcasting member {self.instance!r} of group {c.group!r} runs in this process already: "
                "give each member its own instance_name"
            )
        _RUNNING.add(key)
        self.running = key
        if self.unstable and c.settings.instance_name is None:
            c.log.warning(
                "broadcast.instance_unstable",
                instance=self.instance,
                why=self.unstable + ": pass instance_name",
            )

    def release(self) -> None:
        """The member stopped (or did not start): its name is free in this process again."""
        if self.running is not None:
            _RUNNING.discard(self.running)
            self.running = None

    async def settled(self) -> None:
        """At stop, once every outcome is settled: the final positions."""
        self.release()
        try:
            await self.positions.commit()
        except TRANSIENT as exc:
            self.c.log.warning("broadcast.commit_failed", error=str(exc))


def broadcast_parts(
    c: Context, settling: Settler
) -> tuple[Broadcast, BroadcastFetcher, BroadcastMembership, BroadcastRetries]:
    """The parts of a broadcasting PushConsumer that differ from a clustering one; the settler plans
    the member's own calls from now on."""
    fetcher, membership, retries = BroadcastFetcher(c, settling), BroadcastMembership(c), BroadcastRetries(c)
    broadcast = Broadcast(c, fetcher, membership, retries)
    settling.plan_round = BroadcastPlanner(broadcast.instance)
    settling.hold = OrderlyHold(c, settling, fetcher)

    def again(d: Delivery) -> None:
        """Settling failed (Redis refused a write: OOM, a key of the wrong type): the position must
        not pass the message, so it stays in flight and is settled again after a pause."""
        delay = c.settings.reconnect_backoff_max_ms / 1000
        asyncio.get_running_loop().call_later(delay, settling.settle, d, d.decision)

    settling.unsettled = again
    return broadcast, fetcher, membership, retries
