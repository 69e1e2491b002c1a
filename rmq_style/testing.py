"""Testing helpers: a private redis-server on a free loopback port, for tests and benchmarks.

>>> server = RedisServer()          # doctest: +SKIP
>>> server.start(); server.url      # doctest: +SKIP
'redis://127.0.0.1:41234/0'
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["RedisServer", "free_port", "redis_server_available"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_available() -> bool:
    return shutil.which("redis-server") is not None


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
