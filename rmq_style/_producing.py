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
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import ResponseError

from ._calls import Call, Flow, command, run_script, single
from ._codec import Codec
from ._delay import due_spec
from ._errors import TopicExistsError, TopicNotFoundError, UsageError
from ._message import (
    DEFAULT_MAX_MESSAGE_SIZE,
    EncodedMessage,
    Message,
    MessageQueue,
    SendResult,
    encode_message,
    new_msg_ids,
    pack_fields,
)
from ._names import Keys
from ._routing import RoundRobin, check_queue_id, queue_for_key
from ._topics import DEFAULT_QUEUE_COUNT, Retention, TopicRoute, create_flow, route_flow

__all__ = ["ProducerSettings", "ShardingKey"]

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


@dataclass(frozen=True, slots=True)
class _Planned:
    index: int
    topic: str
    encoded: EncodedMessage
    sharding_key: str | bytes | int | None
    queue_id: int | None
    due: tuple[int, int] | None


@dataclass(slots=True)
class SendPlan:
    """Messages encoded and validated, ready to be sent (and re-sent with the same ids)."""

    items: list[_Planned]


class ProducerCore:
    """Producer state and logic shared by Producer and AsyncProducer."""

    def __init__(self, settings: ProducerSettings) -> None:
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self._routes: dict[str, tuple[TopicRoute, float]] = {}
        self._round_robin = RoundRobin()

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
        msg_ids = new_msg_ids(len(messages), born_ms)
        codec, max_size = self.settings.codec, self.settings.max_message_size
        items = []
        for index, message in enumerate(messages):
            if not isinstance(message, Message):
                raise UsageError(f"send takes Message objects, got {type(message).__name__}")
            encoded = encode_message(
                message, codec=codec, max_size=max_size, msg_id=msg_ids[index], born_ms=born_ms
            )
            key = sharding_key(message) if callable(sharding_key) else sharding_key
            items.append(_Planned(index, message.topic, encoded, key, queue_id, due))
        return SendPlan(items)

    def _cached_route(self, topic: str) -> TopicRoute | None:
        hit = self._routes.get(topic)
        if hit is None or time.monotonic() - hit[1] > self.settings.route_ttl_s:
            return None
        return hit[0]

    def forget_route(self, topic: str) -> None:
        self._routes.pop(topic, None)

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
        routes = yield from self.routes_flow([item.topic for item in plan.items])
        buckets: dict[tuple[str, int, tuple[int, int] | None], list[_Planned]] = {}
        for item in plan.items:
            count = routes[item.topic].queue_count
            if item.queue_id is not None:
                queue = check_queue_id(item.topic, item.queue_id, count)
            elif item.sharding_key is not None:
                queue = queue_for_key(item.sharding_key, count)
            else:
                queue = self._round_robin.next(item.topic, count)
            buckets.setdefault((item.topic, queue, item.due), []).append(item)

        calls: list[Call] = []
        owners: list[tuple[str, int, tuple[int, int] | None, list[_Planned]]] = []
        for (topic, queue, due), items in buckets.items():
            for start in range(0, len(items), _MAX_PER_CALL):
                chunk = items[start : start + _MAX_PER_CALL]
                calls.append(self._call(routes[topic], queue, due, chunk))
                owners.append((topic, queue, due, chunk))
        replies = yield calls

        results: list[SendResult | None] = [None] * len(plan.items)
        for (topic, queue, due, chunk), outcome in zip(owners, replies, strict=True):
            if isinstance(outcome, ResponseError) and str(outcome).startswith("NOTOPIC"):
                self.forget_route(topic)
                raise TopicNotFoundError(topic) from None
            reply = single(outcome)
            mq = MessageQueue(topic, queue)
            for n, item in enumerate(chunk):
                if due is None:
                    results[item.index] = SendResult(
                        item.encoded.msg_id, mq, reply[2 * n].decode(), int(reply[2 * n + 1])
                    )
                else:
                    results[item.index] = SendResult(item.encoded.msg_id, mq, None, None, int(reply))
        return [r for r in results if r is not None]

    def _call(
        self, route: TopicRoute, queue: int, due: tuple[int, int] | None, items: list[_Planned]
    ) -> Call:
        qk = self.keys.queue(route.topic, queue)
        args: list[Any]
        if due is None:
            args = [*route.retention.script_args, len(items)]
            for item in items:
                args.append(item.encoded.msg_id)
                args.extend(item.encoded.fields)
            return run_script("send", (qk.stream, qk.seq), args)
        args = [due[0], due[1], len(items)]
        for item in items:
            args += [item.encoded.msg_id, pack_fields(item.encoded.fields)]
        return run_script("schedule", (qk.delay, qk.delayed, qk.seq), args)


def release_due_call(keys: Keys, route: TopicRoute, queue: int, limit: int = 1000) -> Call:
    """Move due delayed messages of one queue into its stream (reply: [moved, next due ms or -1])."""
    qk = keys.queue(route.topic, queue)
    return run_script(
        "release_due", (qk.delay, qk.delayed, qk.stream, qk.seq), (limit, *route.retention.script_args)
    )


def server_time_call() -> Call:
    return command("TIME")
