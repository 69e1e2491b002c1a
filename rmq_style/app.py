"""App: decorator-declared handlers, producers and consumers from one place.

>>> from pydantic import BaseModel
>>> from rmq_style import App, ReceivedMessage
>>> app = App("memory://doc-app")
>>> class Order(BaseModel):
...     order_id: int
>>> @app.subscribe("orders", group="billing", tags="created || paid")
... async def bill(order: Order, msg: ReceivedMessage) -> None:
...     print("billing", order.order_id, msg.tag)
>>> [(s.topic, s.group, s.tags) for s in app.subscriptions]
[('orders', 'billing', 'created || paid')]
>>> bill.__name__                       # the handler is still a plain function
'bill'
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import structlog

from . import otel
from ._async.admin import AsyncAdmin
from ._async.producer import AsyncProducer
from ._async.transaction import AsyncTransactionProducer
from ._errors import (
    BrokerUnavailableError,
    ConfigurationError,
    TopicExistsError,
    TopicNotFoundError,
    UsageError,
)
from ._filter import TagFilter
from ._handlers import HandlerSpec, inspect_handler
from ._message import ReceivedMessage
from ._names import check_group, check_topic
from ._producing import ProducerSettings
from ._sync.admin import Admin
from ._sync.producer import Producer
from ._sync.pull import PullConsumer
from ._sync.transaction import TransactionProducer
from ._transaction import TransactionSettings
from ._wait_event import wait_event
from .push.consumer import PushConsumer
from .push.idempotence import Idempotent
from .push.key_window import KeyFunction, key_order_of
from .push.settings import PushSettings
from .settings import AppSettings

__all__ = ["App", "HandlerSubscription"]

F = TypeVar("F", bound=Callable[..., Any])
log = structlog.get_logger("rmq_style.app")
_FIRST_WAIT_S, _MAX_WAIT_S = 0.1, 2.0  # backoff while waiting for Redis at start


@dataclass(frozen=True, slots=True)
class HandlerSubscription:
    """One decorated handler: what it consumes and how."""

    topic: str
    group: str
    tags: str
    handler: HandlerSpec
    orderly: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    idempotent: Idempotent | None = None  # docs/idempotence.md
    key_order: KeyFunction | None = None  # order="key": the ordering key of a message (docs/push.md)


# options a handler may set; each is a PushSettings field of its group's consumer
_GROUP_OPTIONS = (
    "max_reconsume_times", "concurrency", "consume_from", "retry_delays_ms", "consume_timeout_ms",
    "message_model", "instance_name", "message_trace",
)  # fmt: skip


class App:
    """The application: its Redis URL and settings, its handlers, its producers.

    Handlers of one group share one consumer (one member of the group per
    worker process); their per-group options must agree.
    """

    def __init__(
        self, url: str | None = None, *, settings: AppSettings | None = None, **overrides: Any
    ) -> None:
        if settings is None:
            values: dict[str, Any] = {"url": url} if url else {}
            settings = AppSettings(**values, **overrides)
        elif url or overrides:
            raise ConfigurationError("give App either settings or url/keyword settings, not both")
        self.settings = settings
        if settings.tracing and not otel.instrumented():  # the global OpenTelemetry providers
            otel.instrument(parent=settings.tracing_parent)
        self._subscriptions: list[HandlerSubscription] = []
        self.consumers: dict[str, PushConsumer] = {}  # group -> its consumer, while run() runs
        # producer group -> its checker and TransactionSettings fields (@transaction_checker)
        self._checkers: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {}

    def __repr__(self) -> str:
        return f"<App url={self.settings.url!r} handlers={len(self._subscriptions)}>"

    @property
    def url(self) -> str:
        return self.settings.url

    @property
    def subscriptions(self) -> list[HandlerSubscription]:
        return list(self._subscriptions)

    def subscribe(
        self,
        topic: str,
        *,
        group: str,
        tags: str = "*",
        orderly: bool = False,
        batch: int | None = None,
        idempotent: bool | str | Idempotent | None = None,
        order: Literal["queue", "key"] | None = None,
        order_key: KeyFunction | None = None,
        **options: Any,
    ) -> Callable[[F], F]:
        """Declare *func* the handler of *topic* for *group*; returns *func* unchanged.

        *options*: ``max_reconsume_times``, ``concurrency``, ``consume_from``,
        ``retry_delays_ms``, ``consume_timeout_ms``, ``message_model`` (``"broadcasting"``: every
        worker process gets every message; docs/push.md), ``instance_name`` and ``message_trace``
        (docs/trace.md).
        *idempotent*: handle each message (or business key) once per group (True, ``"keys"``,
        ``"property:NAME"`` or an Idempotent; docs/idempotence.md).
        *order*: ``"queue"`` is *orderly*; ``"key"`` handles the messages
        of one ordering key (*order_key* of the message, by default its first business key)
        one at a time in queue order, different keys in parallel (docs/push.md, "Key order").
        """
        check_topic(topic)
        check_group(group)
        TagFilter.parse(tags)
        unknown = sorted(set(options) - set(_GROUP_OPTIONS))
        if unknown:
            raise ConfigurationError(
                f"unknown subscribe option(s) {unknown} for {topic!r}/{group!r}; "
                f"known: {list(_GROUP_OPTIONS)}"
            )
        if batch is not None and batch < 1:
            raise ConfigurationError(f"batch must be at least 1, got {batch}")
        dedup = Idempotent.of(idempotent)
        try:
            key_order = key_order_of(order, order_key, batch or 1)
        except UsageError as exc:
            raise ConfigurationError(str(exc)) from None
        orderly = orderly or order is not None

        def decorate(func: F) -> F:
            spec = inspect_handler(func)
            if spec.batch != (batch is not None and batch > 1):
                raise ConfigurationError(
                    f"handler {spec.name}: a batch handler (batch > 1) takes lists, a single handler does not"
                )
            for existing in self._subscriptions:
                if (existing.topic, existing.group) == (topic, group):
                    raise ConfigurationError(
                        f"two handlers for topic {topic!r} in group {group!r}: {existing.handler.name} "
                        f"and {spec.name}; a group has one handler per topic (use tags, or another group)"
                    )
            opts = dict(options)
            if batch is not None:
                opts["consume_message_batch_max_size"] = batch
            self._subscriptions.append(
                HandlerSubscription(topic, group, tags, spec, orderly, opts, dedup, key_order)
            )
            return func

        return decorate

    def transaction_checker(self, group: str, **options: Any) -> Callable[[F], F]:
        """Declare *func* the checker of producer group *group*: ``check(message) -> TransactionState``.

        Workers of the app then take part in the group's check-back (docs/transactions.md), and
        ``transaction_producer(group)`` uses it. *options*: TransactionSettings fields.
        """
        check_group(group)
        TransactionSettings(**options)  # a wrong option fails here, not in a worker

        def decorate(func: F) -> F:
            if group in self._checkers:
                raise ConfigurationError(f"producer group {group!r} has a checker already")
            self._checkers[group] = (func, options)
            return func

        return decorate

    def _checker(self, group: str) -> tuple[Callable[..., Any], TransactionSettings]:
        if group not in self._checkers:
            raise ConfigurationError(f"no checker for producer group {group!r}: use @app.transaction_checker")
        func, options = self._checkers[group]
        base = self._producer_settings().model_dump()
        return func, TransactionSettings(**{**base, **options})

    def transaction_producer(self, group: str) -> TransactionProducer:
        """A transactional producer of *group*, with the group's declared checker."""
        return TransactionProducer(self.url, group, *self._checker(group))

    def async_transaction_producer(self, group: str) -> AsyncTransactionProducer:
        return AsyncTransactionProducer(self.url, group, *self._checker(group))

    # producers and consumers -------------------------------------------------

    def _producer_settings(self) -> ProducerSettings:
        s = self.settings
        return ProducerSettings(
            namespace=s.namespace, codec=s.codec, max_message_size=s.max_message_size,
            auto_create_topics=s.auto_create_topics, trace_sample=s.trace_sample,
        )  # fmt: skip

    def producer(self) -> Producer:
        return Producer(self.url, self._producer_settings())

    def async_producer(self) -> AsyncProducer:
        return AsyncProducer(self.url, self._producer_settings())

    def admin(self) -> Admin:
        return Admin(self.url, namespace=self.settings.namespace)

    def pull_consumer(self, group: str, **options: Any) -> PullConsumer:
        return PullConsumer(self.url, group, namespace=self.settings.namespace, **options)

    def groups(self) -> list[str]:
        return sorted({s.group for s in self._subscriptions})

    def push_settings(self, group: str, *, concurrency: int | None = None, **extra: Any) -> PushSettings:
        """The consumer settings of *group*: app defaults, then the handlers' options (which must agree)."""
        merged: dict[str, Any] = {}
        for sub in self._subscriptions:
            if sub.group != group:
                continue
            for name, value in sub.options.items():
                if name in merged and merged[name] != value:
                    raise ConfigurationError(
                        f"handlers of group {group!r} disagree on {name}: {merged[name]!r} and {value!r}"
                    )
                merged[name] = value
        s = self.settings
        values: dict[str, Any] = {
            "namespace": s.namespace,
            "concurrency": s.concurrency,
            "max_reconsume_times": s.max_reconsume_times,
            "shutdown_timeout_ms": int(s.shutdown_timeout_s * 1000),
            "max_message_size": s.max_message_size,
            "message_trace": s.message_trace,
            **merged,
            **extra,
        }
        if concurrency is not None:
            values["concurrency"] = concurrency
        return PushSettings(**values)

    def clone(self, **settings: Any) -> App:
        """The same handlers with other settings (e.g. another URL, for tests)."""
        twin = App(settings=self.settings.model_copy(update=settings))
        twin._subscriptions = list(self._subscriptions)
        twin._checkers = dict(self._checkers)
        return twin

    def consumer(self, group: str, *, concurrency: int | None = None, **extra: Any) -> PushConsumer:
        """A push consumer of *group* with every handler of that group subscribed."""
        consumer = PushConsumer(self.url, group, self.push_settings(group, concurrency=concurrency, **extra))
        for sub in self._subscriptions:
            if sub.group == group:
                consumer.subscribe(sub.topic, sub.tags, _listener(sub.handler), **_orderly(sub))
        return consumer

    async def check(self) -> None:
        """Fail early: every subscribed topic must exist (auto_create_topics creates the missing ones)."""
        if not self._subscriptions and not self._checkers:
            raise ConfigurationError("the app has no handlers: decorate functions with @app.subscribe")
        async with AsyncAdmin(self.url, namespace=self.settings.namespace) as admin:
            for topic in sorted({s.topic for s in self._subscriptions}):
                try:
                    await admin.topic(topic)
                except TopicNotFoundError:
                    if self.settings.auto_create_topics:
                        with contextlib.suppress(TopicExistsError):  # another worker was faster
                            await admin.create_topic(topic)
                        continue
                    raise ConfigurationError(
                        f"handlers subscribe topic {topic!r}, which does not exist: create it "
                        f"(`rmq-style topic create {topic}`) or set auto_create_topics"
                    ) from None

    async def _check_when_reachable(self, stop: asyncio.Event) -> bool:
        """check(), again with backoff while Redis cannot be reached; False if *stop* was set meanwhile."""
        deadline = time.monotonic() + self.settings.startup_wait_s
        delay = _FIRST_WAIT_S
        while True:
            try:
                await self.check()
                return True
            except BrokerUnavailableError as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                log.warning("app.redis_unavailable", error=str(exc), retry_in_s=min(delay, left))
                if await wait_event(stop, min(delay, left)):
                    return False
                delay = min(delay * 2, _MAX_WAIT_S)

    def health(self) -> dict[str, Any]:
        """Consumer state for a health endpoint: running groups and their counters."""
        return {
            "running": bool(self.consumers),
            "groups": {g: dataclasses.asdict(c.stats) for g, c in sorted(self.consumers.items())},
        }

    async def run(
        self,
        stop: asyncio.Event,
        *,
        only_groups: Sequence[str] | None = None,
        concurrency: int | None = None,
        ready: asyncio.Event | None = None,
        **consumer_settings: Any,
    ) -> None:
        """Consume with every handler (or those of *only_groups*) until *stop* is set, then drain.

        Redis unreachable at start: waits for it (settings.startup_wait_s at most, or until *stop*).
        """
        if not await self._check_when_reachable(stop):
            return
        groups = self.groups()
        if only_groups:
            missing = sorted(set(only_groups) - set(groups))
            if missing:
                raise ConfigurationError(f"no handlers for group(s) {missing}; the app has {groups}")
            groups = sorted(set(only_groups))
        consumers = [self.consumer(g, concurrency=concurrency, **consumer_settings) for g in groups]
        started: list[PushConsumer] = []
        checking = [self.async_transaction_producer(g) for g in sorted(self._checkers)]
        failures: list[BaseException] = []
        try:
            for consumer in consumers:
                await consumer.start()
                started.append(consumer)
                self.consumers[consumer.group] = consumer
            for producer in checking:  # the app's share of its producer groups' check-back
                await producer.start()
            log.info("app.running", groups=groups)
            if ready is not None:
                ready.set()
            await _until_stopped(stop, started)
        finally:
            # every consumer drains, even when one failed; then the first failure is raised
            stopped = await asyncio.gather(*(c.stop() for c in started), return_exceptions=True)
            failures = [e for e in stopped if isinstance(e, BaseException)]
            await asyncio.gather(*(p.close() for p in checking))
            self.consumers = {}
            log.info("app.stopped", groups=groups, failed=len(failures))
        if failures:
            raise failures[0]  # ConsumerFailedError: a worker process exits non-zero, and is restarted


async def _until_stopped(stop: asyncio.Event, consumers: Sequence[PushConsumer]) -> None:
    """Until *stop* is set, or a consumer stopped on its own (it failed; its stop() raises why)."""
    waits = [asyncio.ensure_future(stop.wait()), *(asyncio.ensure_future(c.wait()) for c in consumers)]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)  # retrieved: stop() raises it again


def _orderly(sub: HandlerSubscription) -> dict[str, Any]:
    extra: dict[str, Any] = {"orderly": True} if sub.orderly else {}
    if sub.idempotent is not None:
        extra["idempotent"] = sub.idempotent
    if sub.key_order is not None:
        extra.update(order="key", order_key=sub.key_order)
    return extra


def _listener(spec: HandlerSpec) -> Callable[..., Any]:
    """Adapt a handler's signature to the push listener (which passes the message or a list of them)."""
    if spec.roles == ("message",):
        return spec.func
    if spec.is_async:

        async def call_async(messages: ReceivedMessage | list[ReceivedMessage]) -> Any:
            return await spec.func(*spec.arguments(_as_list(messages)))

        return call_async

    def call(messages: ReceivedMessage | list[ReceivedMessage]) -> Any:
        return spec.func(*spec.arguments(_as_list(messages)))

    return call


def _as_list(messages: ReceivedMessage | list[ReceivedMessage]) -> list[ReceivedMessage]:
    return messages if isinstance(messages, list) else [messages]
