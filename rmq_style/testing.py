"""Testing helpers: a private redis-server on a free loopback port, for tests and benchmarks.

>>> server = RedisServer()          # doctest: +SKIP
>>> server.start(); server.url      # doctest: +SKIP
'redis://127.0.0.1:41234/0'
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "AppTester",
    "RedisServer",
    "free_port",
    "is_drained",
    "private_redis_url",
    "redis_server_available",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_available() -> bool:
    return shutil.which("redis-server") is not None


@contextlib.contextmanager
def private_redis_url(given: str | None = None) -> Iterator[str]:
    """*given* (a server the caller may flush), or a private redis-server for the duration.

    Refuses the machine's shared Redis on port 6379: benchmarks flush what they use.
    """
    if given:
        parts = urlsplit(given)
        if parts.hostname in ("127.0.0.1", "localhost", "::1") and (parts.port or 6379) == 6379:
            raise SystemExit(
                f"refusing {given}: the shared Redis on port 6379 would be flushed; pass a private one"
            )
        yield given
        return
    with RedisServer() as server:
        yield server.url


class RedisServer:
    """A redis-server process of our own: start, kill -9, restart (same port and data dir), stop.

    With ``appendonly=True`` the data survives a kill (AOF, fsync always).
    """

    def __init__(
        self,
        *,
        appendonly: bool = False,
        port: int | None = None,
        data_dir: str | None = None,
        unixsocket: bool = False,
        tls: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="rmq-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.unixsocket = str(self.data_dir / "redis.sock") if unixsocket else None
        self.tls_port = free_port() if tls else None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def tls_url(self) -> str:
        """rediss:// URL trusting the server's self-signed certificate (needs ``tls=True``)."""
        return f"rediss://127.0.0.1:{self.tls_port}/0?ssl_ca_certs={self.data_dir / 'cert.pem'}"

    def _make_certificate(self) -> list[str]:
        cert, key = self.data_dir / "cert.pem", self.data_dir / "key.pem"
        if not cert.exists():
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                 str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                check=True, capture_output=True,
            )  # fmt: skip
        return [
            "--tls-port", str(self.tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
        ]  # fmt: skip

    def __repr__(self) -> str:
        state = "running" if self.process and self.process.poll() is None else "stopped"
        return f"<RedisServer port={self.port} {state} aof={self.appendonly}>"

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--logfile",
            "",
            "--loglevel",
            "warning",
        ]
        if self.tls_port:
            args += self._make_certificate()
        if self.unixsocket:
            args += ["--unixsocket", self.unixsocket, "--unixsocketperm", "700"]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"redis-server on port {self.port} exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass  # not listening yet; the deadline bounds the wait
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} not ready after {timeout} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown save, connections drop at once."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start() if self.process is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


async def is_drained(app: Any) -> bool:
    """True when every queue of every group of *app* is consumed, acknowledged and has no retry waiting."""
    from ._async.admin import AsyncAdmin  # noqa: PLC0415

    async with AsyncAdmin(app.url, namespace=app.settings.namespace) as admin:
        for group in app.groups():
            for row in await admin.progress(group):
                p = row.progress
                if p.lag or p.pending or row.retrying or p.group_offset is None:
                    return False
    return True


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
    fast-forwarded); ``drain`` returns once every queue of every group is
    consumed, acknowledged and has no retry waiting.
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
        """Block until every message sent so far is handled, retried to the end, or dead-lettered."""
        deadline = time.monotonic() + timeout
        while not self._call(is_drained(self.app)):
            if self._running.done():
                self._running.result()
            if time.monotonic() > deadline:
                raise AssertionError(f"queues not drained after {timeout} s")
            time.sleep(0.01)  # bounded poll of Redis state

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
