"""Membership and rebalance of the concurrent queues: heartbeat, allocation, adoption, pruning.

Each heartbeat interval: renew this member's heartbeat per subscribed topic,
take the queues the allocation gives it (creating their groups), let go of
the others, adopt entries pending at members that are gone, report maxlen
trims, and now and then delete dead members' stream consumers. Orderly
topics get their queue set from here too (``OrderlyRunner.assign``).
"""

from __future__ import annotations

import time
from typing import Any

from .._async._io import execute
from .._call_values import command, single
from .._membership import heartbeat_call
from .._message import MessageQueue
from .._offsets import parse_offset
from .._rebalance import my_queues, reassign
from .._simple import SIMPLE_CONSUMER
from .._topics import TopicRoute
from .._trim_report import mark_reported_calls, trim_loss_calls, trim_losses
from .context import TRANSIENT, Context
from .redis_calls import adopt_entries_call, check_created, create_groups_calls, prune_consumers_call
from .state import QueueState, StreamState, Subscription
from .waits import wait_event

__all__ = ["Rebalancer"]

ADOPT_COUNT = 1000  # entries of a gone member taken over per heartbeat and stream
PRUNE_EVERY = 10  # heartbeat intervals between two passes deleting dead members' stream consumers


class Rebalancer:
    def __init__(self, c: Context) -> None:
        self.c = c
        self._next_prune = 0.0

    def schedule_prune(self) -> None:
        self._next_prune = time.monotonic() + self.prune_interval()

    async def membership_loop(self) -> None:
        backoff = self.c.backoff()
        interval = self.c.settings.membership.heartbeat_interval_ms / 1000
        while not await wait_event(self.c.stopping, interval):
            try:
                await self.rebalance()
                await self.adopt()
                await self.report_trims()
                if time.monotonic() >= self._next_prune:
                    self._next_prune = time.monotonic() + self.prune_interval()
                    await self.prune()
                backoff.reset()
            except TRANSIENT as exc:
                self.c.log.warning("consumer.redis_unavailable", task="membership", error=str(exc))
                await backoff.wait(self.c.stopping)

    async def report_trims(self) -> None:
        """Warn about entries a maxlen trim removed before the group read them (once per loss)."""
        queues = [mq for mq in self.c.owned_queues() if self.c.subs[mq.topic].counts_trims]
        if not queues:
            return
        client = self.c.client
        assert client is not None
        losses = trim_losses(
            queues, await execute(client, trim_loss_calls(self.c.keys, self.c.group, queues))
        )
        for loss in losses:
            self.c.stats.trimmed += loss.new
            self.c.log.warning(
                "entries.trimmed_unread",
                topic=loss.queue.topic,
                queue=loss.queue.queue_id,
                count=loss.new,
                total=loss.total,
                why="maxlen retention removed them before this group read them",
            )
        if losses:
            await execute(client, mark_reported_calls(self.c.keys, self.c.group, losses))

    async def rebalance(self) -> None:
        client = self.c.client
        assert client is not None
        ms = self.c.settings.membership
        sent = time.monotonic()
        subs = list(self.c.subs.values())
        calls = [
            heartbeat_call(self.c.keys, self.c.group, s.topic, self.c.member, ms.member_expiry_ms)
            for s in subs
        ]
        # the route too: an expanded topic's new queues are taken within one interval
        calls += [command("HGETALL", self.c.keys.topic_meta(s.topic)) for s in subs]
        replies = await execute(client, calls)
        for reply in replies[: len(subs)]:
            single(reply)
        self.renewed(sent)
        for sub, reply, meta in zip(subs, replies, replies[len(subs) :], strict=False):
            self.take_route(sub, single(meta))
            members = frozenset(m.decode() for m in single(reply))
            sub.members = members
            mine = set(my_queues(sub.topic, sub.queue_count, reply, self.c.member, ms.allocation))
            if self.c.orderly is not None and sub.topic in self.c.orderly_topics:
                self.c.orderly.assign(sub, mine)
                continue
            owned = [mq for mq, state in self.c.queues.items() if mq.topic == sub.topic and state.owned]
            change = reassign(owned, mine)
            for mq in change.lost:
                state = self.c.queues[mq]
                state.owned = False
                state.epoch += 1  # its calls not started yet are dropped
                self.c.log.info("queue.released", topic=mq.topic, queue=mq.queue_id)
            if change.gained:
                await self.acquire(sub, change.gained)

    def renewed(self, sent: float) -> None:
        """The heartbeat sent at *sent* (monotonic) was taken: the membership holds until expiry after it.

        Silent past the expiry before (a SIGSTOP, a stalled loop, Redis away), this member may have
        been dropped and its queues and pending entries taken over: the calls read until now go.
        """
        c = self.c
        expiry_s = c.settings.membership.member_expiry_ms * 0.9 / 1000  # margin: Redis's clock runs later
        if sent >= c.member_valid_until and c.queues:
            c.log.warning("member.lapsed", silent_s=round(sent - c.member_valid_until + expiry_s, 3))
            c.lapse()
        c.member_valid_until = sent + expiry_s
        if c.dropped:
            c.log.info("calls.dropped", count=c.dropped, why="their queue was lost before they started")
            c.dropped = 0

    def take_route(self, sub: Subscription, meta: dict[bytes, bytes]) -> None:
        """Take in the topic's queue count (it only grows) and retention; the topic may be deleted."""
        if not meta:
            return
        route = TopicRoute.from_meta(sub.topic, meta)
        sub.retention = route.retention  # for the delayed-message release
        if route.queue_count > sub.queue_count:
            self.c.log.info("topic.expanded", topic=sub.topic, queues=route.queue_count, were=sub.queue_count)
            sub.queue_count = route.queue_count

    async def acquire(self, sub: Subscription, queues: list[MessageQueue]) -> None:
        client = self.c.client
        assert client is not None
        where, value = self.c.start_position()
        calls = []
        for mq in queues:
            calls += create_groups_calls(self.c.keys.queue(mq.topic, mq.queue_id), self.c.group, where, value)
        check_created(await execute(client, calls))
        for mq in queues:
            state = self.c.queues.get(mq)
            if state is None:
                qk = self.c.keys.queue(mq.topic, mq.queue_id)
                state = QueueState(mq, qk, sub)
                state.streams = (
                    StreamState(qk.stream, state, retry=False),
                    StreamState(qk.retry_stream(self.c.group), state, retry=True),
                )
                self.c.queues[mq] = state
                for stream in state.streams:
                    self.c.streams[stream.key.encode()] = stream
            state.owned = True
            for stream in state.streams:
                stream.scan_from = b"0-0"  # entries of ours left pending (an earlier ownership)
            self.c.log.info("queue.acquired", topic=mq.topic, queue=mq.queue_id)
        self.c.capacity.set()
        self.c.retry_wakeup.set()
        self.c.queues_changed.set()

    async def adopt(self) -> None:
        """Take over entries pending at members that are gone; re-read our own if some went astray."""
        c = self.c
        client = c.redis()
        # queues handed to another member too: entries of ours may be stranded there (a read whose
        # reply was lost as the queue left us); nobody else takes them while we live
        streams = [s for q in c.queues.values() for s in q.streams]
        if not streams:
            return
        summaries = await execute(client, [command("XPENDING", s.key, c.group) for s in streams])
        min_idle = c.settings.membership.heartbeat_interval_ms
        adoptions: list[tuple[StreamState, str]] = []
        for stream, summary in zip(streams, summaries, strict=True):
            if isinstance(summary, Exception):
                continue  # NOGROUP: the fetch loop re-creates the group
            live = stream.queue.sub.members
            for consumer in summary.get("consumers") or []:
                name = consumer["name"].decode() if isinstance(consumer["name"], bytes) else consumer["name"]
                if name == c.member:
                    if int(consumer["pending"]) > len(stream.in_flight) and stream.scan_from is None:
                        stream.scan_from = b"0-0"
                    continue
                if name in live or not stream.queue.owned or name == SIMPLE_CONSUMER:
                    # a live member still works on them (a slow handler is never taken away); the
                    # simple consumers' leases end by their own clock (simple_receive takes them again)
                    continue
                adoptions.append((stream, name))
        if not adoptions:
            return
        calls = [
            adopt_entries_call(st.key, c.group, name, c.member, min_idle, ADOPT_COUNT)
            for st, name in adoptions
        ]
        for (stream, name), reply in zip(adoptions, await execute(client, calls), strict=True):
            ids, claimed = single(reply)
            if claimed:
                c.log.warning("entries.adopted", stream=stream.key, from_member=name, count=len(claimed))
                stream.scan_from = b"0-0"
            if len(claimed) < len(ids):
                await self.count_trimmed_claims(stream, name, ids, claimed)

    async def count_trimmed_claims(
        self, stream: StreamState, member: str, ids: list[Any], claimed: list[Any]
    ) -> None:
        """Entries trimmed while pending at a dead member: XCLAIM drops them silently (Redis 7)."""
        (head,) = await execute(self.c.redis(), [command("XRANGE", stream.key, "-", "+", "COUNT", 1)])
        head = single(head)
        first = parse_offset(head[0][0]) if head else None
        taken = {parse_offset(c) for c in claimed}
        for entry_id in ids:
            offset = parse_offset(entry_id)
            # unclaimed and before the first entry left: trimmed (else another member took it)
            if offset not in taken and (first is None or offset < first):
                self.c.stats.trimmed += 1
                self.c.log.warning(
                    "entry.lost_to_trim", stream=stream.key, offset=str(offset), from_member=member
                )

    def prune_interval(self) -> float:
        """Seconds between prune passes: a consumer cannot become prunable faster than member expiry."""
        ms = self.c.settings.membership
        return max(PRUNE_EVERY * ms.heartbeat_interval_ms, ms.member_expiry_ms) / 1000

    def prune_targets(self) -> list[tuple[str, frozenset[str]]]:
        """Every stream this member consumes now, with the live members of its topic."""
        targets = []
        for q in self.c.queues.values():
            if q.owned:
                live = q.sub.members | {self.c.member}
                targets += [(s.key, live) for s in q.streams]
        for mq in self.c.orderly.owned if self.c.orderly is not None else []:
            live = self.c.subs[mq.topic].members | {self.c.member}
            qk = self.c.keys.queue(mq.topic, mq.queue_id)
            targets += [(qk.stream, live), (qk.retry_stream(self.c.group), live)]  # rs: replays
        return targets

    async def prune(self) -> None:
        """Delete the stream consumers left by dead members once they own no pending entry.

        Each owner prunes its own queues' streams, so every queue is pruned by one member.
        """
        client = self.c.client
        assert client is not None
        targets = self.prune_targets()
        if not targets:
            return
        expiry = self.c.settings.membership.member_expiry_ms
        calls = [prune_consumers_call(key, self.c.group, expiry, live) for key, live in targets]
        replies = await execute(client, calls)
        for (key, _), reply in zip(targets, replies, strict=True):
            if isinstance(reply, Exception):
                self.c.log.error("consumers.prune_failed", stream=key, error=str(reply))
            elif reply:
                self.c.log.info("consumers.pruned", stream=key, count=int(reply))
