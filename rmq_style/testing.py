"""Testing helpers: private redis-server processes on free loopback ports, for tests and benchmarks.

>>> server = RedisServer()          # doctest: +SKIP
>>> server.start(); server.url      # doctest: +SKIP
'redis://127.0.0.1:41234/0'

``SentinelGroup`` runs a master, a replica and a sentinel, to test failover.
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
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import redis

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


def _linked_up(state: dict[str, Any]) -> bool:
    """A sentinel's view of an instance: not subjectively or objectively down, and linked."""
    return not (state["is_sdown"] or state["is_odown"] or state["is_disconnected"])


def _watched_port(server: RedisServer) -> int:
    """The port replicas and sentinels use: the TLS one if the server has one (tls-replication)."""
    return server.tls_port or server.port


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


class SentinelGroup:
    """A master, one replica and *sentinels* sentinels watching them: processes of our own on free ports.

    The sentinels declare the master down after *down_after_ms* and promote
    the replica (quorum: a majority of them). Everything is stopped on exit,
    even after a failure. With ``tls=True`` the sentinels and the nodes talk
    TLS to each other and ``url`` is a rediss+sentinel:// URL (the plain ports
    stay open for checks). *master_options* are extra redis-server options of
    both nodes (e.g. ``["--min-replicas-to-write", "1"]``).

    >>> with SentinelGroup() as group:   # doctest: +SKIP
    ...     group.url
    'redis+sentinel://127.0.0.1:40123/mymaster/0'
    """

    def __init__(
        self,
        *,
        master_name: str = "mymaster",
        down_after_ms: int = 300,
        failover_timeout_ms: int = 2000,
        tls: bool = False,
        sentinels: int = 1,
        replicas: int = 1,
        node_options: tuple[str, ...] = (),
    ) -> None:
        self.master_name = master_name
        self.dir = Path(tempfile.mkdtemp(prefix="rmq-sentinel-"))
        self.master = RedisServer(tls=tls, tls_dir=self.dir, extra_args=node_options)
        # one replica-priority for all: the sentinels promote the replica with the most data
        self.replicas = [
            RedisServer(
                replica_of=_watched_port(self.master), tls=tls, tls_dir=self.dir, extra_args=node_options
            )
            for _ in range(replicas)
        ]
        self.replica = self.replicas[0]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.sentinel_port = self.sentinel_ports[0]
        self.sentinel_tls_ports = [free_port() for _ in range(sentinels)] if tls else []
        self.sentinel_tls_port = self.sentinel_tls_ports[0] if tls else None
        self._quorum = sentinels // 2 + 1
        self._timings = [
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
            f"sentinel failover-timeout {master_name} {failover_timeout_ms}",
        ]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """The clients' URL naming every sentinel; with ``tls=True`` over TLS (self-signed certificate)."""
        if not self.sentinel_tls_ports:
            hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
            return f"redis+sentinel://{hosts}/{self.master_name}/0"
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_tls_ports)
        return f"rediss+sentinel://{hosts}/{self.master_name}/0?ssl_ca_certs={self.dir / 'cert.pem'}"

    def start(self, timeout: float = 10.0) -> SentinelGroup:
        try:
            self.master.start(timeout)
            for replica in self.replicas:
                replica.start(timeout)
            _wait_until(self._replica_in_sync, timeout, "replicas linked to their master")
            self._start_sentinel(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_sentinel(self, timeout: float) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        for i, port in enumerate(self.sentinel_ports):
            # sentinel rewrites its conf, so it lives in our writable dir; written afresh at each start
            conf = self.dir / f"sentinel-{i}.conf"
            lines = [
                *(f"port {port}", "bind 127.0.0.1", "protected-mode no", f"dir {self.dir}"),
                f"logfile {self.dir / f'sentinel-{i}.log'}",
                *self._tls_conf(i),
                f"sentinel monitor {self.master_name} 127.0.0.1 {_watched_port(self.master)} {self._quorum}",
                *self._timings,
            ]
            conf.write_text("\n".join(lines) + "\n")
            self.sentinels.append(
                subprocess.Popen(
                    [binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        for process, port in zip(self.sentinels, self.sentinel_ports, strict=True):
            _wait_for_pong(process, port, timeout)
        _wait_until(
            lambda: all(self._sentinel_sees(replica=True, port=p) for p in self.sentinel_ports),
            timeout,
            "sentinels watching master and replica",
        )
        if len(self.sentinel_ports) > 1:  # a failover needs a majority that knows each other
            _wait_until(self._sentinels_met, timeout, "sentinels aware of each other")

    def _sentinels_met(self) -> bool:
        others = len(self.sentinel_ports) - 1
        for port in self.sentinel_ports:
            with self._client(port) as sentinel:
                if int(sentinel.sentinel_master(self.master_name)["num-other-sentinels"]) < others:
                    return False
        return True

    def _tls_conf(self, i: int) -> list[str]:
        if not self.sentinel_tls_ports:
            return []
        tls_port = str(self.sentinel_tls_ports[i])
        args = ["--tls-port", tls_port, *_tls_args(self.dir), "--tls-replication", "yes"]
        return [f"{name[2:]} {value}" for name, value in zip(args[::2], args[1::2], strict=True)]

    def _stop_sentinel(self) -> None:
        for sentinel in self.sentinels:
            if sentinel.poll() is None:
                sentinel.terminate()
        for sentinel in self.sentinels:
            try:
                sentinel.wait(timeout=10)
            except subprocess.TimeoutExpired:
                sentinel.kill()
                sentinel.wait()
        self.sentinels = []

    def _client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, protocol=2, socket_timeout=2, decode_responses=True)

    def _ask(self, port: int, *command: Any) -> Any:
        with self._client(port) as client:
            return client.execute_command(*command)

    def _replica_in_sync(self) -> bool:
        return all(
            self._ask(r.port, "INFO", "replication")["master_link_status"] == "up"
            for r in self.replicas
            if r is not self.master
        )

    def _sentinel_sees(self, *, replica: bool, port: int | None = None) -> bool:
        """A sentinel has the master up and linked (so clients can find it), and a live replica."""
        with self._client(port or self.sentinel_port) as sentinel:
            master = sentinel.sentinel_master(self.master_name)
            replicas = sentinel.sentinel_slaves(self.master_name) if replica else []
        return _linked_up(master) and (not replica or any(_linked_up(r) for r in replicas))

    def master_port(self) -> int:
        """The port of the master the sentinel names now (its TLS port with ``tls=True``)."""
        _host, port = self._ask(self.sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return int(port)

    def wait_for_failover(self, timeout: float = 10.0) -> int:
        """Wait until the sentinel names a promoted replica, it acts as master, and the sentinel
        sees it up; its port.

        The sentinel relinks to the new master at most once a second: with a
        short down-after, it may call it down (and hide it from clients) for a
        moment after the switch; this waits that out.
        """
        ports = {_watched_port(r): r for r in self.replicas}

        def promoted() -> bool:
            named = ports.get(self.master_port())
            return (
                named is not None
                and self._ask(named.port, "ROLE")[0] == "master"
                and self._sentinel_sees(replica=False)
            )

        _wait_until(promoted, timeout, f"failover of {self.master_name} to one of {self.replicas}")
        return self.master_port()

    def planned_failover(self, timeout: float = 10.0) -> None:
        """``SENTINEL FAILOVER`` (an operator's planned switch); returns once the sentinel names the replica.

        The old master is still up, and still a writable master, until the
        sentinels turn it into a replica (about 10 s later; ``role`` tells).
        """
        old = _watched_port(self.master)
        self._ask(self.sentinel_port, "SENTINEL", "FAILOVER", self.master_name)
        _wait_until(lambda: self.master_port() != old, timeout, "sentinel naming a promoted replica")

    def role(self, server: RedisServer) -> str:
        """``master`` or ``slave``: what *server* says it is now."""
        return str(self._ask(server.port, "ROLE")[0])

    def wait_replicated(self, timeout_ms: int = 2000) -> None:
        """WAIT on the master until the replica acknowledged every write so far (replication is async).

        WAIT covers the writes of its own connection: a PUBLISH first (replicated,
        stores nothing) puts this connection's offset after everyone's writes so far.
        """
        with self._client(self.master.port) as master:
            master.publish("rmq-test:replication-fence", "")
            acked = master.execute_command("WAIT", 1, timeout_ms)
        if acked < 1:
            raise AssertionError(f"the replica did not acknowledge the master's writes in {timeout_ms} ms")

    def switch_over_unseen(self, timeout: float = 10.0) -> None:
        """Swap the roles of master and replica while the sentinel is away, then watch the new master.

        Like an operator's manual switchover: the old master keeps its client
        connections open and answers their writes with READONLY.
        """
        self.wait_replicated()  # an orderly switchover: the replica has every write first
        self._stop_sentinel()
        if len(self.replicas) > 1:
            raise NotImplementedError("switch_over_unseen swaps a master and its only replica")
        self._ask(self.replica.port, "REPLICAOF", "NO", "ONE")
        self._ask(self.master.port, "REPLICAOF", "127.0.0.1", _watched_port(self.replica))
        self.master, self.replica = self.replica, self.master
        self.replicas = [self.replica]
        _wait_until(self._replica_in_sync, timeout, "old master linked to the new one")
        self._start_sentinel(timeout)  # a fresh conf: it knows only the new master

    def stop(self) -> None:
        self._stop_sentinel()
        for replica in self.replicas:
            replica.stop()
        self.master.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SentinelGroup:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class ClusterGroup:
    """A Redis Cluster of our own: *nodes* masters on free loopback ports, the slots split evenly.

    With ``replicas=1`` each master has a replica, and a master that dies is
    replaced by it after *node_timeout_ms* (``kill_master``), or hands over
    on request (``manual_failover``: ``CLUSTER FAILOVER`` on its replica).

    >>> with ClusterGroup() as cluster:   # doctest: +SKIP
    ...     cluster.url
    'redis+cluster://127.0.0.1:40123,127.0.0.1:40125,127.0.0.1:40127'
    """

    SLOTS = 16384

    def __init__(
        self, nodes: int = 3, *, appendonly: bool = False, replicas: int = 0, node_timeout_ms: int = 1000
    ) -> None:
        timing = ("--cluster-node-timeout", str(node_timeout_ms)) if replicas else ()
        self.nodes = [
            RedisServer(cluster=True, appendonly=appendonly, extra_args=timing) for _ in range(nodes)
        ]
        self.replicas = [
            RedisServer(cluster=True, appendonly=appendonly, extra_args=timing)
            for _ in range(nodes * replicas)
        ]
        self._down: set[int] = set()  # ports of nodes killed and not restarted

    def restart(self, node: RedisServer, timeout: float = 10.0) -> None:
        """kill -9 *node* and start it again (it keeps its id and slots); back once the cluster is ok."""
        node.restart()
        _wait_until(self._ready, timeout, "the restarted node serving its slots again")

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self, timeout: float = 10.0) -> ClusterGroup:
        try:
            for node in self.nodes + self.replicas:
                node.start(timeout)
            share = self.SLOTS // len(self.nodes)
            for i, node in enumerate(self.nodes):
                last = self.SLOTS - 1 if i == len(self.nodes) - 1 else (i + 1) * share - 1
                self._ask(node, "CLUSTER", "ADDSLOTSRANGE", i * share, last)
            for node in self.nodes[1:] + self.replicas:
                self._ask(self.nodes[0], "CLUSTER", "MEET", "127.0.0.1", node.port, node.cluster_port)
            _wait_until(self._ready, timeout, "every node of the cluster sees every slot served")
            for i, replica in enumerate(self.replicas):
                self._replicate(replica, self._node_id(self.nodes[i % len(self.nodes)]), timeout)
            _wait_until(self._replicas_in_sync, timeout, "every replica in sync with its master")
        except BaseException:
            self.stop()
            raise
        return self

    def _replicate(self, replica: RedisServer, master_id: str, timeout: float) -> None:
        # refused (unknown node) until the gossip reached the replica: the deadline bounds the tries
        _wait_until(
            lambda: bool(self._ask(replica, "CLUSTER", "REPLICATE", master_id)), timeout, "replicating"
        )

    def _node_id(self, node: RedisServer) -> str:
        return str(self._ask(node, "CLUSTER", "MYID").decode())

    def _ask(self, node: RedisServer, *command: Any) -> Any:
        with redis.Redis(port=node.port, protocol=2) as client:
            return client.execute_command(*command)

    def _role(self, node: RedisServer) -> str:
        return str(self._ask(node, "ROLE")[0].decode())

    def _replicas_in_sync(self) -> bool:
        """Each replica linked to its master, and every node knows them as replicas (gossip settled)."""
        for node in self.replicas + self.nodes:
            if node.port not in self._down:
                nodes = self._ask(node, "CLUSTER", "NODES").decode()
                if nodes.count("slave") != len(self.replicas) - len(self._down):
                    return False
        for node in self.replicas + self.nodes:
            if node.port in self._down or self._role(node) == "master":
                continue
            if self._ask(node, "INFO", "replication").get("master_link_status") != "up":
                return False
        return True

    def _ready(self) -> bool:
        known = len(self.nodes) + len(self.replicas)
        for node in self.nodes + self.replicas:
            if node.port in self._down:
                continue
            info = self._ask(node, "CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text or f"cluster_known_nodes:{known}" not in text:
                return False
        return True

    def replica_of(self, master: RedisServer) -> RedisServer:
        """The replica that replicates *master* now."""
        for node in self.nodes + self.replicas:
            live = node is not master and node.port not in self._down
            if live and self._ask(node, "INFO", "replication").get("master_port") == master.port:
                return node
        raise AssertionError(f"{master} has no replica")

    def kill_master(self, master: RedisServer, timeout: float = 20.0) -> RedisServer:
        """kill -9 *master*; returns its replica once promoted and the cluster is ok again."""
        replica = self.replica_of(master)
        master.kill()
        self._down.add(master.port)
        _wait_until(lambda: self._role(replica) == "master", timeout, f"{replica} promoted")
        _wait_until(self._ready_without_dead, timeout, "the cluster ok without the dead master")
        return replica

    def _ready_without_dead(self) -> bool:
        for node in self.nodes + self.replicas:
            if node.port in self._down:
                continue
            info = self._ask(node, "CLUSTER", "INFO")
            if "cluster_state:ok" not in (info.decode() if isinstance(info, bytes) else str(info)):
                return False
        return True

    def manual_failover(self, master: RedisServer, timeout: float = 20.0) -> RedisServer:
        """``CLUSTER FAILOVER`` on *master*'s replica (coordinated: no write lost); returns the replica."""
        replica = self.replica_of(master)
        _wait_until(self._replicas_in_sync, timeout, "replicas in sync before the handover")
        deadline = time.monotonic() + timeout
        while self._role(replica) != "master":
            # an attempt the other masters did not vote for in time (5 s) is simply asked again
            self._ask(replica, "CLUSTER", "FAILOVER")
            with contextlib.suppress(AssertionError):
                _wait_until(lambda: self._role(replica) == "master", 6, "")
            if time.monotonic() > deadline:
                raise AssertionError(f"{replica} did not take over from {master} in {timeout} s")
        _wait_until(self._ready_without_dead, timeout, "the cluster ok after the handover")
        return replica

    def flush(self) -> None:
        for node in self.nodes:
            self._ask(node, "FLUSHALL")

    def stop(self) -> None:
        for node in self.nodes + self.replicas:
            node.stop()

    def __enter__(self) -> ClusterGroup:
        return self.start()

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
