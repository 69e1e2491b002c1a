"""Redis Cluster failovers under load: (c) a master killed and its replica promoted, (d) a manual
``CLUSTER FAILOVER``. Each master has a replica; a producer at ~250/s with sharding keys on half the
sends, two lagging consumers (tests/failoverkit.py). (c) again with replicated sends: none that said
SEND_OK is lost.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio.connection import Connection
from redis.cluster import RedisCluster
from structlog.testing import capture_logs

from rmq_style import Admin, SendStatus
from rmq_style._async._io import _closed_under_us
from rmq_style._names import Keys
from rmq_style._routing import queue_for_key
from rmq_style.testing import ClusterGroup, redis_server_available
from tests.failoverkit import LOSS_WINDOW_S, QUEUES, TOPIC, TOTAL, Load, assert_outcome, send_under_load

pytestmark = [pytest.mark.cluster, pytest.mark.real_only]
RETRIES = {"retries": 12, "retry_backoff_ms": 50}


def assert_keyed_sends_kept_their_queue(load: Load) -> None:
    """A send retried through the outage stays on its sharding key's queue (round-robin may move on)."""
    keyed = [(load.results[i].queue.queue_id, key) for i, key in enumerate(load.keys) if key is not None]
    assert len(keyed) == TOTAL // 2
    assert [(q, k) for q, k in keyed if q != queue_for_key(k, QUEUES)] == []


@pytest.mark.parametrize("fault", ["kill-master", "cluster-failover"])
def test_a_cluster_failover_under_load(fault: str) -> None:
    if not redis_server_available():
        pytest.fail("redis-server is not installed")
    with ClusterGroup(replicas=1) as group:
        url = group.url
        with Admin(url) as admin:
            admin.create_topic(TOPIC, queues=QUEUES)
        raw = RedisCluster(host="127.0.0.1", port=group.nodes[0].port, protocol=2)
        home = raw.get_node_from_key(Keys().queue(TOPIC, 0).stream).port  # the master of queue 0
        raw.close()
        (master,) = [n for n in group.nodes if n.port == home]

        def act() -> None:
            if fault == "kill-master":
                group.kill_master(master)
            else:
                group.manual_failover(master)

        with capture_logs() as events:
            load = asyncio.run(send_under_load(url, act, keyed=True, **RETRIES))
        lost = load.lost()
        if fault == "cluster-failover":
            assert lost == []  # coordinated: the replica caught up before it took over
        assert all(load.fault_at - LOSS_WINDOW_S <= load.returned_at[i] for i in lost), lost
        assert_outcome(url, load, events, lost=lost)
        assert len(load.confirmed()) == TOTAL
        assert_keyed_sends_kept_their_queue(load)


REPLICATED = {"min_replicas": 1, "replica_timeout_ms": 300, **RETRIES}


def test_replicated_sends_survive_a_killed_cluster_master_under_load() -> None:
    """kill -9 of queue 0's master; once its replica took over, the dead node comes back (as that
    replica's replica), so the new master has a replica to acknowledge replicated sends again."""
    if not redis_server_available():
        pytest.fail("redis-server is not installed")
    with ClusterGroup(replicas=1) as group:
        url = group.url
        with Admin(url) as admin:
            admin.create_topic(TOPIC, queues=QUEUES)
        raw = RedisCluster(host="127.0.0.1", port=group.nodes[0].port, protocol=2)
        home = raw.get_node_from_key(Keys().queue(TOPIC, 0).stream).port
        raw.close()
        (master,) = [n for n in group.nodes if n.port == home]

        def act() -> None:
            group.kill_master(master)
            master.start()  # it rejoins as a replica of the node that took its slots

        with capture_logs() as events:
            load = asyncio.run(send_under_load(url, act, keyed=True, **REPLICATED))
        assert_outcome(url, load, events)  # every send that said SEND_OK was handled
        late = [r for r in load.results if r.status is not SendStatus.SEND_OK]
        # sends the new master took before the old one resynced as its replica: said, not silently durable
        assert all(r.replicas == 0 for r in late) and len(late) < TOTAL // 10, late
        assert_keyed_sends_kept_their_queue(load)


def test_a_cluster_connection_closed_under_a_writer_counts_as_a_connection_error() -> None:
    """redis-py's asyncio cluster client closes a dropped node's connections, also one another task is
    writing on (seen in test_cluster_failover): its AttributeError is a connection error, not a crash."""

    async def write_on_a_closed_connection() -> AttributeError:
        try:
            await Connection()._send_packed_command([b"PING\\r\\n"])  # as a write after the close
        except AttributeError as exc:
            return exc
        raise AssertionError("redis-py wrote on a closed connection")

    assert _closed_under_us(asyncio.run(write_on_a_closed_connection()))
    closed: Any = None
    with pytest.raises(AttributeError) as ours:
        closed.writelines([])  # an AttributeError of our own: not redis-py's
    assert not _closed_under_us(ours.value)
