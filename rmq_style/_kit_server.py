"""Private redis-server processes on free loopback ports (re-exported by rmq_style.testing)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import redis

__all__ = ["RedisServer", "free_port", "private_redis_url", "redis_server_available"]


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


def _tls_args(cert_dir: Path) -> list[str]:
    """redis-server options serving the self-signed certificate of *cert_dir* (made if missing)."""
    cert, key = cert_dir / "cert.pem", cert_dir / "key.pem"
    if not cert.exists():
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
             str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True,
        )  # fmt: skip
    return [
        "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
        "--tls-auth-clients", "no",
    ]  # fmt: skip


def _wait_for_pong(process: subprocess.Popen[bytes], port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass  # not listening yet; the deadline bounds the wait
        time.sleep(0.02)
    raise RuntimeError(f"redis-server on port {port} not ready after {timeout} s")


def _wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll *check* (errors count as not yet) until it holds; AssertionError after *timeout*."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            last = exc  # a server still starting or failing over; the deadline bounds the wait
        time.sleep(0.02)
    raise AssertionError(f"{what}: not after {timeout} s (last error: {last})")


class RedisServer:
    """A redis-server process of our own: start, kill -9, restart (same port and data dir), stop.

    With ``appendonly=True`` the data survives a kill (AOF, fsync always);
    with ``replica_of=port`` it replicates the server on that loopback port
    (over TLS when ``tls=True``: give the master's TLS port, and a shared ``tls_dir``);
    *extra_args* are more redis-server options (``("--min-replicas-to-write", "1")``).
    """

    def __init__(
        self,
        *,
        appendonly: bool = False,
        port: int | None = None,
        data_dir: str | None = None,
        unixsocket: bool = False,
        tls: bool = False,
        tls_dir: Path | None = None,
        replica_of: int | None = None,
        cluster: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.port = port or free_port()
        self.extra_args = extra_args
        self.cluster_port = free_port() if cluster else None  # the bus (port + 10000 may be over 65535)
        self.appendonly = appendonly
        self.replica_of = replica_of
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="rmq-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.unixsocket = str(self.data_dir / "redis.sock") if unixsocket else None
        self.tls_port = free_port() if tls else None
        self.tls_dir = tls_dir or self.data_dir  # where the self-signed certificate is (made if missing)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def tls_url(self) -> str:
        """rediss:// URL trusting the server's self-signed certificate (needs ``tls=True``)."""
        return f"rediss://127.0.0.1:{self.tls_port}/0?ssl_ca_certs={self.tls_dir / 'cert.pem'}"

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
            "--repl-diskless-sync-delay",  # a replica syncs at once, not after 5 s
            "0",
        ]
        if self.tls_port:
            args += ["--tls-port", str(self.tls_port), *_tls_args(self.tls_dir)]
        if self.unixsocket:
            args += ["--unixsocket", self.unixsocket, "--unixsocketperm", "700"]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.cluster_port:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            args += ["--cluster-port", str(self.cluster_port)]
        if self.replica_of:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of)]
            args += ["--tls-replication", "yes"] if self.tls_port else []
        args += self.extra_args
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_pong(self.process, self.port, timeout)
        return self

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
