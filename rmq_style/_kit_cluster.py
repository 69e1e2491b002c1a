"""ClusterGroup: a Redis Cluster of our own, with replicas if asked (re-exported by rmq_style.testing)."""

from __future__ import annotations

import contextlib
import time
from types import TracebackType
from typing import Any

import redis

from ._kit_server import RedisServer, _wait_until

__all__ = ["ClusterGroup"]


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
