"""Topics: metadata, retention, and the admin operations as flows (no I/O here)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from ._call_values import Call, Flow, command, run_script, single
from ._errors import TopicExistsError, TopicNotFoundError, UsageError
from ._names import LAYOUT_VERSION, Keys, check_topic

__all__ = ["QueueInfo", "Retention", "TopicInfo", "TopicRoute"]

DEFAULT_QUEUE_COUNT = 8
MAX_QUEUE_COUNT = 1024


@dataclass(frozen=True, slots=True)
class Retention:
    """How a topic's queue streams are kept bounded.

    ``minid`` (default): entries older than *max_age* are removed once every
    consumer group of the topic has acknowledged them; nothing a group still
    needs is ever trimmed. ``maxlen``: at most about *max_len* entries per
    queue, whatever the groups have read (an explicit choice to lose data).

    >>> Retention().mode, Retention.max_entries(1000).mode
    ('minid', 'maxlen')
    """

    mode: Literal["minid", "maxlen"] = "minid"
    max_age: timedelta = timedelta(hours=72)
    max_len: int = 0

    @classmethod
    def max_entries(cls, max_len: int) -> Retention:
        if max_len < 1:
            raise UsageError(f"max_len must be at least 1, got {max_len}")
        return cls(mode="maxlen", max_len=max_len)

    @property
    def script_args(self) -> tuple[str, int]:
        if self.mode == "maxlen":
            return ("maxlen", self.max_len)
        return ("minid", int(self.max_age.total_seconds() * 1000))


@dataclass(frozen=True, slots=True)
class TopicRoute:
    """What a producer or consumer needs to know of a topic."""

    topic: str
    queue_count: int
    retention: Retention

    @classmethod
    def from_meta(cls, topic: str, meta: Mapping[bytes, bytes]) -> TopicRoute:
        if not meta or b"queues" not in meta:
            raise TopicNotFoundError(topic)
        mode = meta.get(b"trim", b"minid").decode()
        value = int(meta.get(b"trim_value", b"259200000"))
        retention = (
            Retention.max_entries(value)
            if mode == "maxlen"
            else Retention(max_age=timedelta(milliseconds=value))
        )
        return cls(topic, int(meta[b"queues"]), retention)


@dataclass(frozen=True, slots=True)
class QueueInfo:
    queue_id: int
    first_offset: str | None
    last_offset: str | None
    length: int
    min_queue_offset: int
    max_queue_offset: int  # exclusive: messages ever written (RocketMQ's max offset)
    delayed: int


@dataclass(frozen=True, slots=True)
class TopicInfo:
    topic: str
    queue_count: int
    retention: Retention
    created_ms: int
    queues: list[QueueInfo]


def _check_queue_count(queues: int) -> int:
    if isinstance(queues, bool) or not isinstance(queues, int) or not 1 <= queues <= MAX_QUEUE_COUNT:
        raise UsageError(f"a topic has 1 to {MAX_QUEUE_COUNT} queues, got {queues!r}")
    return queues


def route_flow(keys: Keys, topic: str) -> Flow[TopicRoute]:
    (meta,) = yield [command("HGETALL", keys.topic_meta(topic))]
    return TopicRoute.from_meta(topic, single(meta))


def create_flow(keys: Keys, topic: str, queues: int, retention: Retention) -> Flow[TopicRoute]:
    check_topic(topic)
    _check_queue_count(queues)
    meta = keys.topic_meta(topic)
    (created,) = yield [command("HSETNX", meta, "queues", queues)]
    if not single(created):
        raise TopicExistsError(topic)
    mode, value = retention.script_args
    calls = [
        command(
            "HSET",
            meta,
            "trim",
            mode,
            "trim_value",
            value,
            "layout",
            LAYOUT_VERSION,
            "created_ms",
            int(time.time() * 1000),
        ),
        *(command("SET", keys.queue(topic, q).seq, 0, "NX") for q in range(queues)),
        command("SADD", keys.topics, topic),
    ]
    for reply in (yield calls):
        single(reply)
    return TopicRoute(topic, queues, retention)


def expand_flow(keys: Keys, topic: str, queues: int) -> Flow[TopicRoute]:
    """Raise the queue count. Sharding keys then map to other queues (documented)."""
    route = yield from route_flow(keys, topic)
    _check_queue_count(queues)
    if queues < route.queue_count:
        raise UsageError(
            f"topic {topic!r} has {route.queue_count} queues; the queue count can only grow "
            "(removing queues would strand their messages)"
        )
    groups = yield from _groups_of_flow(keys, topic, route.queue_count)
    new = [keys.queue(topic, q) for q in range(route.queue_count, queues)]
    calls: list[Call] = [command("SET", qk.seq, 0, "NX") for qk in new]
    # the groups of the topic read a new queue from its first entry: what is sent there before
    # their running consumers notice the queue (or while none runs) is not skipped; the queues
    # are published (the count) only then. A group created later honours its consume_from.
    calls += [
        run_script("create_group", (qk.stream, qk.seq), (g, "after", "0-0")) for qk in new for g in groups
    ]
    for reply in (yield calls):
        single(reply)
    (reply,) = yield [command("HSET", keys.topic_meta(topic), "queues", queues)]
    single(reply)
    return TopicRoute(topic, queues, route.retention)


def _groups_of_flow(keys: Keys, topic: str, queue_count: int) -> Flow[list[str]]:
    """The consumer groups of *topic*: subscribed to it, or with a position in one of its queues."""
    (names,) = yield [command("SMEMBERS", keys.groups())]
    names = sorted(n.decode() for n in single(names))
    calls = [command("HEXISTS", keys.subscriptions(g), topic) for g in names]
    calls += [command("XINFO", "GROUPS", keys.queue(topic, q).stream) for q in range(queue_count)]
    replies = yield calls
    found = {g for g, subscribed in zip(names, replies, strict=False) if single(subscribed)}
    for reply in replies[len(names) :]:
        if isinstance(reply, Exception) and "no such key" in str(reply).lower():
            continue  # nothing was ever written or read there
        for info in single(reply):
            row = info if isinstance(info, dict) else dict(zip(info[::2], info[1::2], strict=True))
            name = {_text(k): v for k, v in row.items()}["name"]
            found.add(_text(name))
    return sorted(found)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def list_flow(keys: Keys) -> Flow[list[TopicRoute]]:
    (names,) = yield [command("SMEMBERS", keys.topics)]
    topics = sorted(n.decode() for n in single(names))
    metas = yield [command("HGETALL", keys.topic_meta(t)) for t in topics]
    return [TopicRoute.from_meta(t, single(m)) for t, m in zip(topics, metas, strict=True) if single(m)]


def describe_flow(keys: Keys, topic: str) -> Flow[TopicInfo]:
    (meta,) = yield [command("HGETALL", keys.topic_meta(topic))]
    meta = single(meta)
    route = TopicRoute.from_meta(topic, meta)
    calls = []
    for q in range(route.queue_count):
        qk = keys.queue(topic, q)
        calls += [
            command("XRANGE", qk.stream, "-", "+", "COUNT", 1),
            command("XREVRANGE", qk.stream, "+", "-", "COUNT", 1),
            command("XLEN", qk.stream),
            command("GET", qk.seq),
            command("ZCARD", qk.delay),
        ]
    replies = [single(r) for r in (yield calls)]
    infos = []
    for q in range(route.queue_count):
        first, last, length, seq, delayed = replies[5 * q : 5 * q + 5]
        max_q = int(seq or 0)
        head_q = first[0][1].get(b"q", b"") if first else b""
        min_q = int(head_q) if head_q.isdigit() else max_q  # (an entry no producer of ours wrote: no q)
        infos.append(
            QueueInfo(
                q,
                first[0][0].decode() if first else None,
                last[0][0].decode() if last else None,
                int(length),
                min_q,
                max_q,
                int(delayed),
            )
        )
    return TopicInfo(topic, route.queue_count, route.retention, int(meta.get(b"created_ms", 0)), infos)


def delete_flow(keys: Keys, topic: str) -> Flow[None]:
    route = yield from route_flow(keys, topic)
    groups, producer_groups = yield [
        command("SMEMBERS", keys.groups()),
        command("SMEMBERS", keys.producer_groups()),
    ]
    group_names = [g.decode() for g in single(groups)]
    tx_groups = [g.decode() for g in single(producer_groups)]  # their half messages go too
    calls = [command("DEL", keys.topic_meta(topic)), command("SREM", keys.topics, topic)]
    for q in range(route.queue_count):
        qk = keys.queue(topic, q)
        per_group = [
            k
            for g in group_names
            for k in (
                qk.retry(g),
                qk.retry_body(g),
                qk.retry_stream(g),
                qk.dlq(g),
                qk.lock(g),
                qk.broadcast(g),
                qk.invisible(g),
                qk.receipts(g),
            )
        ]
        per_group += [k for g in tx_groups for k in (qk.half(g), qk.half_checks(g), qk.tx_discarded(g))]
        queue_keys = (qk.stream, qk.seq, qk.delay, qk.delayed, qk.trimmed, qk.trace)
        calls.append(command("DEL", *queue_keys, *per_group))
    calls += [command("HDEL", keys.subscriptions(g), topic) for g in group_names]
    calls += [command("HDEL", keys.subscription_kinds(g), topic) for g in group_names]
    calls += [command("SREM", keys.tx_topics(g), topic) for g in tx_groups]
    for reply in (yield calls):
        single(reply)
    return None
