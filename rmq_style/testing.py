"""Testing helpers: private redis-server processes on free loopback ports, for tests and benchmarks.

>>> server = RedisServer()          # doctest: +SKIP
>>> server.start(); server.url      # doctest: +SKIP
'redis://127.0.0.1:41234/0'

``SentinelGroup`` runs a master, a replica and a sentinel, to test failover;
``ClusterGroup`` a Redis Cluster. The process kit lives in the private
``_kit_server``, ``_kit_sentinel`` and ``_kit_cluster`` modules: import it from here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from types import TracebackType
from typing import Any

from ._kit_cluster import ClusterGroup
from ._kit_sentinel import SentinelGroup
from ._kit_server import RedisServer, free_port, private_redis_url, redis_server_available

__all__ = [
    "AppTester",
    "ClusterGroup",
    "RedisServer",
    "SentinelGroup",
    "free_port",
    "is_drained",
    "private_redis_url",
    "redis_server_available",
    "release_delayed",
]


async def is_drained(app: Any) -> bool:
    """True when every queue of every group of *app* is consumed, acknowledged and has no retry waiting."""
    from ._async.admin import AsyncAdmin  # noqa: PLC0415

    async with AsyncAdmin(app.url, namespace=app.settings.namespace) as admin:
        for group in app.groups():
            for row in await admin.progress(group):
                p = row.progress
                if row.members:  # broadcasting: each member's own position and retries
                    if any(m.lag or m.retrying for m in row.members):
                        return False
                    continue
                if p.lag or p.pending or row.retrying or p.group_offset is None:
                    return False
    return True


async def release_delayed(app: Any) -> int:
    """Move every delayed message of *app*'s topics into its queue now, due or not; how many moved."""
    from ._async.admin import AsyncAdmin  # noqa: PLC0415
    from ._producing import release_due_flow  # noqa: PLC0415

    moved = 0
    async with AsyncAdmin(app.url, namespace=app.settings.namespace) as admin:
        for topic in sorted({s.topic for s in app.subscriptions}):
            moved += await admin._drive(release_due_flow(admin.keys, topic, everything=True))
    return moved


class AppTester:
    """Runs an App's handlers in a background event loop, for tests (sync or async).

    >>> from rmq_style import App, ReceivedMessage
    >>> app = App("memory://doc-tester", auto_create_topics=True)
    >>> seen = []
    >>> @app.subscribe("orders", group="billing")
    ... def bill(order: dict, msg: ReceivedMessage) -> None:
    ...     seen.append((order["id"], msg.reconsume_times))
    >>> with AppTester(app) as tester:
    ...     _ = tester.send("orders", {"id": 1})
    ...     tester.drain()
    >>> seen
    [(1, 0)]

    Retries come back after ``retry_delays_ms`` (1 ms: delays are
    fast-forwarded), and ``drain`` releases delayed messages (``delay``,
    ``deliver_at``, ``delay_level``) at once; it returns once every queue of
    every group is consumed, acknowledged and has no retry waiting.
    """

    def __init__(
        self, app: Any, *, retry_delays_ms: tuple[int, ...] = (1,), **consumer_settings: Any
    ) -> None:
        from ._membership import MembershipSettings  # noqa: PLC0415 - keeps the module light for RedisServer users

        self.app = app
        self._settings: dict[str, Any] = {
            "consume_from": "first",
            "poll_timeout_ms": 50,
            "retry_delays_ms": retry_delays_ms,
            "retry_poll_ms": 20,
            "membership": MembershipSettings(heartbeat_interval_ms=100, member_expiry_ms=2000),
            **consumer_settings,
        }
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rmq-app-tester", daemon=True)
        self._stop: asyncio.Event | None = None
        self._task: concurrent.futures.Future[None] | None = None

    def _call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> AppTester:
        self._thread.start()
        ready = self._call(self._start())
        self._task = asyncio.run_coroutine_threadsafe(self._wait_ready_or_fail(ready), self._loop)
        self._task.result(30)
        return self

    async def _start(self) -> asyncio.Event:
        self._stop, ready = asyncio.Event(), asyncio.Event()
        self._running = asyncio.ensure_future(self.app.run(self._stop, ready=ready, **self._settings))
        return ready

    async def _wait_ready_or_fail(self, ready: asyncio.Event) -> None:
        waiter = asyncio.ensure_future(ready.wait())
        await asyncio.wait([waiter, self._running], return_when=asyncio.FIRST_COMPLETED)
        if self._running.done():
            waiter.cancel()
            self._running.result()  # raises the start-up error

    def send(self, topic: str, body: Any, **options: Any) -> Any:
        """Send one message (keyword options as Message and Producer.send take them)."""
        from ._message import Message  # noqa: PLC0415

        message_fields = {k: options.pop(k) for k in ("tag", "keys", "properties") if k in options}
        with self.app.producer() as producer:
            return producer.send(Message(topic, body, **message_fields), **options)

    def drain(self, timeout: float = 10.0) -> None:
        """Block until every message sent so far is handled, retried to the end, or dead-lettered.

        Delayed messages are released at once, whatever their due time (fast-forwarded).
        """
        deadline = time.monotonic() + timeout
        while self._call(release_delayed(self.app)) or not self._call(is_drained(self.app)):
            if self._running.done():
                self._running.result()
            if time.monotonic() > deadline:
                raise AssertionError(f"queues not drained after {timeout} s")
            time.sleep(0.01)  # bounded poll of Redis state

    def stats(self, group: str) -> Any:
        """The PushStats of *group*'s consumer (``.duplicates``: idempotent deliveries skipped)."""
        return self.app.consumers[group].stats

    def dead_letters(self, group: str) -> list[Any]:
        """The group's dead letters (DeadLetterRecord: .message, .reason ...)."""
        with self.app.admin() as admin:
            return list(admin.dead_letters(group))

    def assert_dead_lettered(self, group: str, *, count: int, reason: str = "") -> list[Any]:
        """Assert the group's DLQ holds exactly *count* letters, each reason containing *reason*."""
        letters = self.dead_letters(group)
        described = [f"{d.message.msg_id}: {d.reason}" for d in letters]
        assert len(letters) == count, f"expected {count} dead letters in {group!r}, found {described}"
        wrong = [d for d in described if reason not in d]
        assert not wrong, f"dead letters without {reason!r} in their reason: {wrong}"
        return letters

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._call(asyncio.wait_for(asyncio.shield(self._running), 30))
            self._stop = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> AppTester:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
