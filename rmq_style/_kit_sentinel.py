"""SentinelGroup: a master, its replicas and sentinels of our own (re-exported by rmq_style.testing)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

from ._kit_server import RedisServer, _tls_args, _wait_for_pong, _wait_until, free_port

__all__ = ["SentinelGroup"]


def _linked_up(state: dict[str, Any]) -> bool:
    """A sentinel's view of an instance: not subjectively or objectively down, and linked."""
    return not (state["is_sdown"] or state["is_odown"] or state["is_disconnected"])


def _watched_port(server: RedisServer) -> int:
    """The port replicas and sentinels use: the TLS one if the server has one (tls-replication)."""
    return server.tls_port or server.port


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
