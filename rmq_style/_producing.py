"""What a producer does, free of I/O: encode, pick queues, build script calls, read replies.

Encoding happens before any I/O, so an oversized or unserialisable message is
refused with nothing written. ``send_flow`` can be re-run after a connection
error: the messages keep their msg ids.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import chain, islice
from typing import Any, cast

import structlog
from pydantic import BaseModel, ConfigDict, Field

from ._call_values import Call, Command, Flow, ScriptCall, WaitAofRefused, run_script, single
from ._codec import Codec
from ._delay import due_spec
from ._errors import TopicExistsError, TopicNotFoundError, UsageError
from ._message import (
    DEFAULT_MAX_MESSAGE_SIZE,
    EntryEncoder,
    Message,
    MessageQueue,
    SendResult,
    SendStatus,
    pack_fields,
    wire,
)
from ._names import Keys
from ._replies import ReplyCode, classify, unknown_waitaof
from ._routing import RoundRobin, check_queue_id, queue_for_key
from ._scripts import Script, script
from ._topics import DEFAULT_QUEUE_COUNT, Retention, TopicRoute, create_flow, route_flow

__all__ = ["ProducerSettings", "ShardingKey"]

log = structlog.get_logger("rmq_style.producer")

ShardingKey = str | bytes | int | Callable[[Message], str | bytes | int]
_MAX_PER_CALL = 256  # messages per script call (bounds ARGV size)


class ProducerSettings(BaseModel):
    """Producer configuration with RocketMQ's defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    namespace: str = "rmq"
    codec: Codec = "json"
    max_message_size: int = Field(DEFAULT_MAX_MESSAGE_SIZE, gt=0)
    retries: int = Field(2, ge=0, description="retries on connection errors (retryTimesWhenSendFailed)")
    retry_backoff_ms: int = Field(100, ge=0)
    auto_create_topics: bool = False
    default_queue_count: int = Field(DEFAULT_QUEUE_COUNT, ge=1)
    route_ttl_s: float = Field(30.0, ge=0, description="how long a topic's queue count is cached")
    min_replicas: int = Field(
        0, ge=0, description="replicas that must acknowledge each send before it returns (WAIT); 0: none"
    )
    replica_timeout_ms: int = Field(
        1000, gt=0, description="how long a send waits for min_replicas; then FLUSH_SLAVE_TIMEOUT"
    )
    replica_fsync: bool = Field(
        False,
        description="with min_replicas: wait until the replicas fsynced their AOF (WAITAOF, Redis 7.2+)",
    )
    trace_sample: float = Field(
        0.0, ge=0, le=1, description="share of messages traced (docs/trace.md): 0 none, 1 all"
    )
    trace_maxlen: int = Field(10_000, ge=1, description="trace records kept per queue (XADD MAXLEN ~)")
    trace_max_age_ms: int = Field(0, ge=0, description="trace records older than this are trimmed; 0: none")


@dataclass(slots=True)
class SendPlan:
    """Messages encoded and validated, ready to be sent (and re-sent with the same ids)."""

    topics: list[str]  # per message
    entries: list[list[Any]]  # per message: msg id, r b t k p c d (EntryEncoder)
    wires: list[bytes]  # per message: the same values on the wire
    sharding_keys: list[str | bytes | int | None] | None  # per message, when sharding_key is a function
    sharding_key: str | bytes | int | None
    queue_id: int | None
    due: tuple[int, int] | None


# (topic, queue, indices of the plan's messages that go there)
_Bucket = tuple[str, int, Sequence[int]]


class ProducerCore:
    """Producer state and logic shared by Producer and AsyncProducer."""

    def __init__(self, settings: ProducerSettings, *, server_replicates: bool = True) -> None:
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self._routes: dict[str, tuple[TopicRoute, float]] = {}
        self._round_robin = RoundRobin()
        self._encoder = EntryEncoder(settings.codec, settings.max_message_size, 0)  # of the latest ms
        # per queue: the send script's keys (stream, seq, trimmed) and the MessageQueue of the results
        self._queues: dict[tuple[str, int], tuple[tuple[str, str, str], MessageQueue]] = {}
        # per topic: the route these were made for, the trim arguments and their wire form
        self._trims: dict[str, tuple[TopicRoute, tuple[str, int], bytes]] = {}
        # replicated sends: WAIT in the same round trip (and on the same connection) as the writes
        self._wait: Command | None = None
        self._unwaited: tuple[SendStatus, int | None] = (SendStatus.SEND_OK, None)
        if settings.min_replicas and server_replicates:
            self._wait = _wait_command(settings, aof=settings.replica_fsync)
        elif settings.min_replicas:  # memory:// has no replicas: said at once, as WAIT would say later
            self._unwaited = (SendStatus.FLUSH_SLAVE_TIMEOUT, 0)

    def plan(
        self,
        messages: Sequence[Message],
        *,
        sharding_key: ShardingKey | None = None,
        queue_id: int | None = None,
        delay: timedelta | None = None,
        deliver_at: datetime | None = None,
        delay_level: int | None = None,
    ) -> SendPlan:
        if sharding_key is not None and queue_id is not None:
            raise UsageError("give either sharding_key or queue_id, not both")
        due = due_spec(delay, deliver_at, delay_level)
        # one clock reading and one draw of randomness for the whole batch
        born_ms = int(time.time() * 1000)
        encoder = self._encoder
        if encoder.born_ms != born_ms:
            encoder = self._encoder = EntryEncoder(encoder.codec, encoder.max_size, born_ms)
        msg_ids = encoder.msg_ids(len(messages))
        encode = encoder.encode
        topics: list[str] = []
        entries: list[list[Any]] = []
        wires: list[bytes] = []
        keys: list[str | bytes | int | None] | None = [] if callable(sharding_key) else None
        for message, msg_id in zip(messages, msg_ids, strict=True):
            if type(message) is not Message and not isinstance(message, Message):
                raise UsageError(f"send takes Message objects, got {type(message).__name__}")
            values, packed = encode(message, msg_id)
            entries.append(values)
            wires.append(packed)
            topics.append(message.topic)
            if keys is not None:
                keys.append(cast("Callable[[Message], str | bytes | int]", sharding_key)(message))
        batch_key = None if keys is not None else cast("str | bytes | int | None", sharding_key)
        return SendPlan(topics, entries, wires, keys, batch_key, queue_id, due)

    def _cached_route(self, topic: str) -> TopicRoute | None:
        hit = self._routes.get(topic)
        if hit is None or time.monotonic() - hit[1] > self.settings.route_ttl_s:
            return None
        return hit[0]

    def forget_route(self, topic: str) -> None:
        self._routes.pop(topic, None)

    def _fresh_routes(self, topics: Sequence[str]) -> dict[str, TopicRoute] | None:
        """The routes of *topics* if all are cached and fresh (no Redis call needed), else None."""
        routes = {}
        now, ttl = time.monotonic(), self.settings.route_ttl_s
        for topic in dict.fromkeys(topics):
            hit = self._routes.get(topic)
            if hit is None or now - hit[1] > ttl:
                return None
            routes[topic] = hit[0]
        return routes

    def routes_flow(self, topics: Sequence[str]) -> Flow[dict[str, TopicRoute]]:
        routes: dict[str, TopicRoute] = {}
        for topic in dict.fromkeys(topics):
            route = self._cached_route(topic)
            if route is None:
                try:
                    route = yield from route_flow(self.keys, topic)
                except TopicNotFoundError:
                    if not self.settings.auto_create_topics:
                        raise
                    route = yield from self._auto_create(topic)
                self._routes[topic] = (route, time.monotonic())
            routes[topic] = route
        return routes

    def _auto_create(self, topic: str) -> Flow[TopicRoute]:
        try:
            return (yield from create_flow(self.keys, topic, self.settings.default_queue_count, Retention()))
        except TopicExistsError:  # another producer created it first
            return (yield from route_flow(self.keys, topic))

    def send_flow(self, plan: SendPlan) -> Flow[list[SendResult]]:
        topics, entries, wires, due = plan.topics, plan.entries, plan.wires, plan.due
        if len(entries) == 1:  # a single send, the most frequent call: no buckets
            topic = topics[0]
            hit = self._routes.get(topic)
            if hit is not None and time.monotonic() - hit[1] <= self.settings.route_ttl_s:
                route = hit[0]
            else:
                route = (yield from self.routes_flow(topics))[topic]
            key = plan.sharding_key if plan.sharding_keys is None else plan.sharding_keys[0]
            queue = self._queue_for(topic, route.queue_count, key, plan.queue_id)
            keys, mq = self._where(topic, queue)
            if due is None:
                call = self._send_call(route, keys, entries, wires)
            else:
                call = self._schedule_call(route, queue, due, entries)
            if self._wait is None:
                (outcome,) = yield [call]
                status, replicas = self._unwaited
            else:
                outcome, acked = yield [call, self._wait]
                status, replicas = yield from self._replicated(acked)
            reply = self._reply(topic, outcome)
            if due is None:  # [first queue offset, entry id]
                return [
                    SendResult(entries[0][0], mq, reply[1].decode(), int(reply[0]), None, status, replicas)
                ]
            return [SendResult(entries[0][0], mq, None, None, int(reply), status, replicas)]

        one_topic = topics.count(topics[0]) == len(topics)
        wanted = topics[:1] if one_topic else topics
        routes = self._fresh_routes(wanted)
        if routes is None:
            routes = yield from self.routes_flow(wanted)
        buckets = self._one_topic_buckets(plan, routes) if one_topic else None
        if buckets is None:
            buckets = self._buckets(plan, routes)

        calls: list[Call] = []
        owners: list[tuple[str, MessageQueue, Sequence[int]]] = []
        for topic, queue, indices in buckets:
            route = routes[topic]
            keys, mq = self._where(topic, queue)
            for start in range(0, len(indices), _MAX_PER_CALL):
                chunk = indices[start : start + _MAX_PER_CALL]
                rows = [entries[i] for i in chunk]
                if due is None:
                    calls.append(self._send_call(route, keys, rows, [wires[i] for i in chunk]))
                else:
                    calls.append(self._schedule_call(route, queue, due, rows))
                owners.append((topic, mq, chunk))
        status, replicas = self._unwaited
        if self._wait is None:
            replies = yield calls
        else:
            *replies, acked = yield [*calls, self._wait]
            status, replicas = yield from self._replicated(acked)

        results: list[SendResult] = [None] * len(entries)  # type: ignore[list-item]
        for (topic, mq, chunk), outcome in zip(owners, replies, strict=True):
            reply = self._reply(topic, outcome)
            if due is None:  # [first queue offset, entry id 1, ..., entry id n]
                queue_offset = int(reply[0])
                for i, entry_id in zip(chunk, islice(reply, 1, None), strict=True):
                    results[i] = SendResult(
                        entries[i][0], mq, entry_id.decode(), queue_offset, None, status, replicas
                    )
                    queue_offset += 1
            else:
                deliver_at_ms = int(reply)
                for i in chunk:
                    results[i] = SendResult(entries[i][0], mq, None, None, deliver_at_ms, status, replicas)
        return results

    def _replicated(self, acked: Any) -> Flow[tuple[SendStatus, int]]:
        """The status of a replicated send from WAIT's (or WAITAOF's) reply: how many replicas have it.

        A server without WAITAOF (before 7.2) refuses it: the producer says so once and waits with
        WAIT from then on (this send too), which promises the replicas' memory, not their disk.
        """
        if isinstance(acked, WaitAofRefused) or unknown_waitaof(acked):
            log.warning("producer.waitaof_unavailable", fallback="WAIT", error=str(acked))
            self._wait = _wait_command(self.settings, aof=False)
            if isinstance(acked, WaitAofRefused):  # a cluster node: WAIT already ran on its connection
                acked = acked.wait_reply
            else:
                (acked,) = yield [self._wait]
        reply = single(acked)
        replicas = int(reply[1]) if isinstance(reply, list) else int(reply)  # WAITAOF: [local, replicas]
        ok = replicas >= self.settings.min_replicas
        return (SendStatus.SEND_OK if ok else SendStatus.FLUSH_SLAVE_TIMEOUT), replicas

    def _reply(self, topic: str, outcome: Any) -> Any:
        if classify(outcome) is ReplyCode.NOTOPIC:
            self.forget_route(topic)
            raise TopicNotFoundError(topic) from None
        return single(outcome)

    def _where(self, topic: str, queue: int) -> tuple[tuple[str, str, str], MessageQueue]:
        """The send script's keys (stream, seq, trimmed) of a queue and its MessageQueue, made once."""
        where = self._queues.get((topic, queue))
        if where is None:
            qk = self.keys.queue(topic, queue)
            where = self._queues[(topic, queue)] = (
                (qk.stream, qk.seq, qk.trimmed),
                MessageQueue(topic, queue),
            )
        return where

    def _queue_for(self, topic: str, count: int, key: str | bytes | int | None, queue_id: int | None) -> int:
        if queue_id is not None:
            return check_queue_id(topic, queue_id, count)
        if key is not None:
            return queue_for_key(key, count)
        return self._round_robin.next(topic, count)

    def _one_topic_buckets(self, plan: SendPlan, routes: dict[str, TopicRoute]) -> list[_Bucket] | None:
        """Buckets without a per-message decision, when every message goes by the same rule."""
        if plan.sharding_keys is not None:
            return None
        topic, n = plan.topics[0], len(plan.topics)
        count = routes[topic].queue_count
        if plan.queue_id is not None:
            return [(topic, check_queue_id(topic, plan.queue_id, count), range(n))]
        if plan.sharding_key is not None:
            return [(topic, queue_for_key(plan.sharding_key, count), range(n))]
        # round-robin: message j takes turn start + j, so queue (start + j) % count
        start = self._round_robin.take(topic, n)
        return [(topic, (start + j) % count, range(j, n, count)) for j in range(min(n, count))]

    def _buckets(self, plan: SendPlan, routes: dict[str, TopicRoute]) -> list[_Bucket]:
        buckets: dict[tuple[str, int], list[int]] = {}
        keys, queue_id = plan.sharding_keys, plan.queue_id
        for index, topic in enumerate(plan.topics):
            key = keys[index] if keys is not None else plan.sharding_key
            queue = self._queue_for(topic, routes[topic].queue_count, key, queue_id)
            buckets.setdefault((topic, queue), []).append(index)
        return [(topic, queue, indices) for (topic, queue), indices in buckets.items()]

    def _send_call(
        self, route: TopicRoute, keys: tuple[str, str, str], rows: list[list[Any]], packed: list[bytes]
    ) -> Call:
        trim = self._trims.get(route.topic)
        if trim is None or trim[0] is not route:
            mode, value = route.retention.script_args
            trim = self._trims[route.topic] = (
                route,
                (mode, value),
                wire(mode.encode()) + wire(b"%d" % value),
            )
        args = (*trim[1], len(rows), *chain.from_iterable(rows))
        return ScriptCall(_send_script(), keys, args, b"".join([trim[2], wire(b"%d" % len(rows)), *packed]))

    def _schedule_call(
        self, route: TopicRoute, queue: int, due: tuple[int, int], rows: list[list[Any]]
    ) -> Call:
        qk = self.keys.queue(route.topic, queue)
        flat: list[Any] = [due[0], due[1], len(rows)]
        for row in rows:
            flat += [row[0], pack_fields(row[1:])]
        return run_script("schedule", (qk.delay, qk.delayed, qk.seq), flat)


def _wait_command(settings: ProducerSettings, *, aof: bool) -> Command:
    """WAIT numreplicas timeout, or WAITAOF 0 numreplicas timeout (replicas fsynced their AOF)."""
    n, timeout = settings.min_replicas, settings.replica_timeout_ms
    return Command(("WAITAOF", 0, n, timeout) if aof else ("WAIT", n, timeout))


def _send_script() -> Script:
    return script("send")


def release_due_call(
    keys: Keys,
    route: TopicRoute,
    queue: int,
    limit: int = 1000,
    *,
    script_name: str = "release_due",
    everything: bool = False,
) -> Call:
    """Move due delayed messages of one queue into its stream (reply: [moved, next due ms or -1, now ms]).

    ``pull_prepare`` takes the same keys and arguments (and reports the queue's bounds too).
    *everything*: release every held message, due or not (AppTester fast-forwarding delays).
    """
    qk = keys.queue(route.topic, queue)
    return run_script(
        script_name,
        (qk.delay, qk.delayed, qk.stream, qk.seq, qk.trimmed),
        (limit, *route.retention.script_args, *(("all",) if everything else ())),
    )


def release_due_flow(keys: Keys, topic: str, *, everything: bool = False) -> Flow[int]:
    """Move every queue's due delayed messages of *topic* into its stream; returns how many moved.

    *everything*: every held message, due or not.
    """
    route = yield from route_flow(keys, topic)
    queues = range(route.queue_count)
    replies = yield [release_due_call(keys, route, q, everything=everything) for q in queues]
    return sum(int(single(reply)[0]) for reply in replies)
