"""Fetching: long-polling XREADGROUP over the owned queues, handing entries to the listener runner.

One XREADGROUP over the streams of every owned queue with room left (flow
control; on a Redis Cluster one per owned queue). The next read goes out
before a batch is handed on (read-ahead); a NOGROUP re-creates the groups.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from .._async._io import AsyncClient, execute, execute_unparsed, open_client
from .._call_values import Command, single
from .._entry_check import plain, rejection
from .._errors import SerializationError
from .._message import MessageQueue, ReceivedMessage, field_map
from .._replies import ReplyCode, classify
from .context import TRANSIENT, Context
from .dedup import DedupListener
from .outcomes import Ack, DeadLetterIt
from .redis_calls import check_created, create_groups_calls, fetch_command
from .runner import Call, Work
from .settling import Settler
from .state import Delivery, QueueState, StreamState, Subscription
from .waits import wait_event

__all__ = ["Fetcher"]

ACK = Ack()
PREFETCH_MIN = 4  # entries in a reply worth reading ahead of handling them
_BODY = 17  # index of the body in the fields of a plain entry (_entry_check.plain)


async def run_one(client: AsyncClient, cmd: Command) -> Any:
    """One read, its entries' fields left as Redis sent them where the client allows it (a flat
    list, else redis-py's dict); an error reply is raised (NOGROUP: re-create)."""
    return single(await execute_unparsed(client, cmd))


def scanning(q: QueueState) -> bool:
    return any(st.scan_from is not None for st in q.streams)


class Fetcher:
    def __init__(self, c: Context, settling: Settler) -> None:
        self.c = c
        self.settling = settling
        self._turn = 0  # the queue readable() starts from, moved on each call

    def readable(
        self, reserved: dict[int, int] | None = None, only: QueueState | None = None
    ) -> list[StreamState]:
        """Streams with room for one more pull (of *only*, if given).

        *reserved*: entries read but not registered yet, per queue.
        """
        s = self.c.settings
        if not self.c.membership_current():
            return []  # silent past member expiry: nothing is read until the heartbeat is renewed
        extra = reserved or {}
        room = s.pull_threshold_for_all - self.c.total - sum(extra.values())
        now = time.monotonic()
        out = []
        queues = list(self.c.queues.values()) if only is None else [only]
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

    def read_new(self, client: AsyncClient, streams: list[StreamState]) -> asyncio.Future[Any]:
        s = self.c.settings
        next_check = time.monotonic() + s.retry_poll_ms / 1000
        for st in streams:
            if st.retry:  # read now; again when it returns entries or retries are released into it
                st.wanted = False
                st.next_check = next_check
        cmd = fetch_command(
            self.c.group,
            self.c.member,
            s.pull_batch_size,
            s.poll_timeout_ms,
            [st.key for st in streams],
            [">"] * len(streams),
        )
        read: asyncio.Future[Any] = asyncio.ensure_future(run_one(client, cmd))
        return read

    def prefetch(
        self, client: AsyncClient, reply: Any, only: QueueState | None = None
    ) -> asyncio.Future[Any] | None:
        """Start the next long poll before handling this batch, so Redis works while we do."""
        if not reply or self.c.stopping.is_set():
            return None
        reserved: dict[int, int] = {}
        for key, entries in reply:
            stream = self.c.streams.get(key if isinstance(key, bytes) else key.encode())
            if stream is not None:
                reserved[id(stream.queue)] = reserved.get(id(stream.queue), 0) + len(entries)
        if sum(reserved.values()) < PREFETCH_MIN:
            return None  # a trickle: hand it over first, a read sent now would only delay it
        streams = self.readable(reserved, only)
        if not streams or any(st.scan_from is not None for st in streams):
            return None
        return self.read_new(client, streams)

    async def fetch_per_queue(self) -> None:
        """Redis Cluster: the queues live in different slots, so each owned queue has its own long poll."""
        loops: dict[MessageQueue, asyncio.Task[None]] = {}
        try:
            while not self.c.stopping.is_set():
                self.c.queues_changed.clear()
                for mq, q in self.c.queues.items():
                    running = loops.get(mq)
                    if (q.owned or scanning(q)) and (running is None or running.done()):
                        # a child of the consumer's task group, awaited below too
                        loops[mq] = self.c.tree.spawn(f"fetch {mq}", partial(self.fetch_queue, q))
                await wait_event(self.c.queues_changed, self.c.settings.poll_timeout_ms / 1000)
        finally:
            await asyncio.gather(*loops.values(), return_exceptions=True)

    async def fetch_queue(self, q: QueueState) -> None:
        # a client of its own: redis-py's cluster client closes all its connections after some
        # errors, which would break the other queues' reads in flight
        client = open_client(self.c.url)
        try:
            await self.c.guard("fetch", partial(self.fetch_loop, q, client))
        finally:
            await client.aclose()

    async def fetch_loop(self, only: QueueState | None = None, client: AsyncClient | None = None) -> None:
        """Long-poll the owned queues (only *only*, until it is released, on a Redis Cluster)."""
        client = client or self.c.fetch_client
        assert client is not None
        s = self.c.settings
        backoff = self.c.backoff()
        ahead: asyncio.Future[Any] | None = None
        try:
            while not self.c.stopping.is_set():
                if ahead is None:
                    if only is not None and not only.owned and not scanning(only):
                        return
                    streams = self.readable(only=only)
                    if not streams:
                        self.c.capacity.clear()
                        await wait_event(self.c.capacity, s.poll_timeout_ms / 1000)
                        continue
                    scans = [st for st in streams if st.scan_from is not None]
                else:
                    scans = []
                try:
                    if scans:
                        cmd = fetch_command(
                            self.c.group,
                            self.c.member,
                            s.pull_batch_size,
                            None,
                            [st.key for st in scans],
                            [st.scan_from.decode() for st in scans if st.scan_from is not None],
                        )
                        reply = await run_one(client, cmd)
                        self.on_read(reply, scans)
                    else:
                        read, ahead = ahead or self.read_new(client, streams), None
                        reply = await read
                        if self.c.stopping.is_set():
                            return  # read after stop: left pending, handed back when we leave
                        ahead = self.prefetch(client, reply, only)
                        if ahead is not None:
                            await asyncio.sleep(0)  # lets the next XREADGROUP go out now
                        self.on_read(reply, None)
                    backoff.reset()
                except TRANSIENT as exc:  # first: CLUSTERDOWN is a ResponseError too
                    self.c.log.warning("consumer.redis_unavailable", task="fetch", error=str(exc))
                    for q in self.c.queues.values() if only is None else (only,):
                        if q.owned:  # (a queue handed on: the heartbeat's own-pending check)
                            for st in q.streams:
                                st.scan_from = b"0-0"  # a lost reply may have delivered entries to us
                    await backoff.wait(self.c.stopping)
                except Exception as exc:
                    if classify(exc) is not ReplyCode.NOGROUP:
                        raise
                    await self.recreate_groups(str(exc))
        finally:
            if ahead is not None:
                # never cancel a blocked read (fakeredis would keep a zombie reader); what it
                # delivers stays pending and is handed back when we leave
                await asyncio.gather(ahead, return_exceptions=True)

    async def recreate_groups(self, error: str) -> None:
        client = self.c.client
        assert client is not None
        calls = []
        for q in self.c.queues.values():
            if q.owned:
                main = q.streams[0]
                where, value = ("after", main.last_id.decode()) if main.last_id else self.c.start_position()
                calls += create_groups_calls(q.keys, self.c.group, where, value)
                self.c.log.warning(
                    "group.recreated",
                    topic=q.mq.topic,
                    queue=q.mq.queue_id,
                    where=where,
                    at=value,
                    error=error,
                )
        check_created(await execute(client, calls))

    def on_read(self, reply: Any, scans: list[StreamState] | None) -> None:
        """Register the entries read and hand them to the pool (or settle them at once).

        The hot path of the consumer: one pass per entry, no call that is not needed.
        """
        batch_size = self.c.settings.consume_message_batch_max_size
        max_size = self.c.settings.max_message_size
        pool = self.c.pool
        assert pool is not None
        returned: set[int] = set()
        # a plain entry has no properties, so no trace flag: it is traced only when all are
        plain_traceable = self.c.recorder is not None and self.c.recorder.trace_all
        admits: dict[DedupListener, tuple[Subscription, list[Delivery]]] = {}
        for key, entries in reply or ():
            stream = self.c.streams[key if isinstance(key, bytes) else key.encode()]
            if stream.retry and entries:
                stream.wanted = True  # more may follow
            if not entries:
                continue
            returned.add(id(stream))
            queue = stream.queue
            sub = queue.sub
            topic, queue_id = queue.mq.topic, queue.mq.queue_id
            in_flight = stream.in_flight
            epoch = queue.epoch
            tags = sub.filter.tags
            listener, is_async = sub.listener, sub.is_async
            dedup = listener if type(listener) is DedupListener else None
            one_by_one = batch_size == 1 and sub.model is None and dedup is None
            ready: list[Delivery] = []
            calls: list[Call] = []
            count = size = 0
            for entry_id, raw in entries:
                if scans is not None:
                    stream.scan_from = entry_id
                    if entry_id in in_flight:
                        continue  # being handled or settled right now
                if not raw:  # trimmed while pending: nil fields (redis-py's dict of them: {})
                    self.register_lost(stream, entry_id)
                    continue
                in_flight.add(entry_id)
                count += 1
                # fields as Redis sent them (a list) are checked in place; any other layout as a map
                fields = raw
                traceable = plain_traceable
                if type(raw) is list and plain(raw, max_size):
                    body_size = len(raw[_BODY])
                else:
                    traceable = True
                    fields = field_map(raw) if type(raw) is list else raw
                    body_size = len(fields.get(b"d") or b"")
                    problem = rejection(fields, max_size)
                    if problem is not None:  # never handed to a listener (docs/storage.md, field validity)
                        size += body_size
                        d = Delivery(stream, entry_id, fields, body_size)
                        self.settling.settle(d, DeadLetterIt(problem))
                        continue
                size += body_size
                msg = ReceivedMessage(topic, queue_id, entry_id, fields)  # lazy: decode_entry
                d = Delivery(stream, entry_id, fields, body_size, msg, None, epoch, traceable)
                if tags is not None and msg.tag not in tags:
                    self.c.stats.filtered += 1
                    self.settling.settle(d, ACK)
                elif one_by_one:
                    calls.append((listener, is_async, (msg,), d))
                else:
                    ready.append(d)
            self.c.register(stream, count, size)
            if scans is None:
                stream.last_id = entries[-1][0]
            if calls:
                pool.submit_many(calls)  # one hand-off per stream read, not one per message
            if dedup is not None:  # idempotent: the marks of the whole read are claimed first
                admits.setdefault(dedup, (sub, []))[1].extend(ready)
                continue
            for start in range(0, len(ready), batch_size):
                self.submit(sub, ready[start : start + batch_size])
        for st in scans or ():
            if id(st) not in returned:
                st.scan_from = None  # no more entries of ours pending there
        for dedup, (sub, ready) in admits.items():
            if ready and self.c.marks is not None:
                self.c.marks.admit(asyncio.ensure_future(dedup.admit(sub, ready, self)))

    def register_lost(self, stream: StreamState, entry_id: bytes) -> None:
        """An entry trimmed while pending (MAXLEN retention): nothing left to handle, ack it."""
        d = Delivery(stream, entry_id, {}, 0)
        stream.in_flight.add(entry_id)
        self.c.register(stream, 1, 0)
        self.c.stats.trimmed += 1
        self.c.log.warning("entry.lost_to_trim", stream=stream.key, offset=entry_id.decode())
        self.settling.settle(d, ACK)

    def submit(
        self,
        sub: Subscription,
        deliveries: list[Delivery],
        claimed: Callable[[list[Delivery]], Callable[..., Any]] | None = None,
    ) -> None:
        """Queue one listener call (*claimed*: the idempotent call of the deliveries that decoded)."""
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
                    self.settling.fail(d, exc)
            if not good:
                return
            deliveries = good
            messages = [d.message for d in good]
            args = (
                [bodies, messages]
                if self.c.settings.consume_message_batch_max_size > 1
                else [bodies[0], messages[0]]
            )
        else:
            messages = [d.message for d in deliveries]
            args = [messages] if self.c.settings.consume_message_batch_max_size > 1 else [messages[0]]
        assert self.c.pool is not None
        if claimed is not None:
            self.c.pool.submit(Work(claimed(deliveries), True, args, deliveries))
            return
        self.c.pool.submit(Work(sub.listener, sub.is_async, args, deliveries))
