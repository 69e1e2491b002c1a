"""Replicated sends (min_replicas) on a Redis Cluster: each node's writes and their WAIT on the
connection that wrote them, on the queue's node. Three masters, one replica each.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from structlog.testing import capture_logs

from rmq_style import Admin, AsyncProducer, BrokerUnavailableError, Message, Producer, SendResult, SendStatus
from rmq_style._names import Keys
from rmq_style.testing import ClusterGroup, RedisServer, redis_server_available

pytestmark = [pytest.mark.cluster, pytest.mark.real_only]
TOPIC = "durable"
QUEUES = 6
REPLICATED = {"min_replicas": 1, "replica_timeout_ms": 2000}  # a loaded machine: room to acknowledge
SHORT = {"min_replicas": 1, "replica_timeout_ms": 200}


@pytest.fixture(scope="module")
def group() -> Iterator[ClusterGroup]:
    if not redis_server_available():
        pytest.fail("redis-server is not installed")
    with ClusterGroup(replicas=1) as cluster:
        with Admin(cluster.url) as admin:
            admin.create_topic(TOPIC, queues=QUEUES)
        yield cluster


def stream(queue: int) -> str:
    return Keys().queue(TOPIC, queue).stream


def master_of(group: ClusterGroup, queue: int) -> RedisServer:
    """The node serving *queue* now (asked afresh: failovers move it)."""
    with RedisCluster(host="127.0.0.1", port=group.nodes[0].port, protocol=2) as raw:
        port = raw.get_node_from_key(stream(queue)).port
    (node,) = [n for n in group.nodes + group.replicas if n.port == port]
    return node


def length(node: RedisServer, queue: int) -> int:
    """The queue's entries on *node*, a master or a replica (READONLY: no MOVED from a replica)."""
    with redis.Redis(port=node.port, protocol=2, single_connection_client=True) as client:
        client.execute_command("READONLY")
        return int(client.xlen(stream(queue)))


def waits(node: RedisServer) -> int:
    with redis.Redis(port=node.port, protocol=2, decode_responses=True) as client:
        return int(client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


def lengths(group: ClusterGroup) -> dict[int, tuple[int, int]]:
    """Per queue: its entries on its master and on that master's replica."""
    out = {}
    for q in range(QUEUES):
        master = master_of(group, q)
        out[q] = (length(master, q), length(group.replica_of(master), q))
    return out


def test_replicated_sends_return_once_the_queues_replica_has_them(group: ClusterGroup) -> None:
    masters = {master_of(group, q).port for q in range(QUEUES)}
    assert len(masters) == 3  # the topic's queues are on every master
    before = lengths(group)
    with Producer(group.url, **REPLICATED) as producer:
        for q in range(QUEUES):
            one = producer.send(Message(TOPIC, {"q": q}), queue_id=q)
            assert (one.status, one.replicas) == (SendStatus.SEND_OK, 1)
            master = master_of(group, q)
            # on the replica of that queue's master when send returned: no wait in the test
            assert length(group.replica_of(master), q) == before[q][1] + 1
        waited = {n.port: waits(n) for n in group.nodes + group.replicas}
        batch = producer.send_batch([Message(TOPIC, {"n": n}) for n in range(2 * QUEUES)])  # 2 per queue
    assert {(r.status, r.replicas) for r in batch} == {(SendStatus.SEND_OK, 1)}
    assert {r.queue.queue_id for r in batch} == set(range(QUEUES))
    assert lengths(group) == {q: (before[q][0] + 3, before[q][1] + 3) for q in range(QUEUES)}
    # one WAIT per node the batch wrote to, after its scripts
    nodes = [n for n in group.nodes + group.replicas if n.port in masters]
    assert {n.port: waits(n) - waited[n.port] for n in nodes} == dict.fromkeys(masters, 1)

    async def main() -> None:
        async with AsyncProducer(group.url, **REPLICATED) as producer:
            result = await producer.send(Message(TOPIC, {"async": True}), queue_id=1)
            assert (result.status, result.replicas) == (SendStatus.SEND_OK, 1)
            results = await producer.send_batch([Message(TOPIC, {"n": n}) for n in range(QUEUES)])
            assert {(r.status, r.replicas) for r in results} == {(SendStatus.SEND_OK, 1)}

    asyncio.run(main())
    after = lengths(group)
    assert after[1] == (before[1][0] + 5, before[1][1] + 5)
    assert all(master == replica for master, replica in after.values())


def test_replica_fsync_falls_back_to_wait_on_the_same_node_connection(group: ClusterGroup) -> None:
    """A server before 7.2 refuses WAITAOF: WAIT runs in its place on the connection that wrote (a
    later WAIT on another connection would count nothing), and the producer uses WAIT from then on."""
    with redis.Redis(port=group.nodes[0].port, protocol=2) as client:
        version = tuple(int(p) for p in str(client.info("server")["redis_version"]).split(".")[:2])
    if version >= (7, 2):
        pytest.skip("this redis-server has WAITAOF (7.2+): no fallback to see")
    before = lengths(group)
    with capture_logs() as events, Producer(group.url, replica_fsync=True, **REPLICATED) as producer:
        results = [producer.send(Message(TOPIC, {"n": n}), queue_id=n % QUEUES) for n in range(2)]
        results += producer.send_batch([Message(TOPIC, {"n": n}) for n in range(QUEUES)])
    assert {(r.status, r.replicas) for r in results} == {(SendStatus.SEND_OK, 1)}
    assert [e["event"] for e in events if e["log_level"] == "warning"] == ["producer.waitaof_unavailable"]
    after = lengths(group)
    assert sum(a[1] - b[1] for a, b in zip(after.values(), before.values(), strict=True)) == QUEUES + 2


@pytest.mark.parametrize("front", ["sync", "async"])
def test_a_replicated_send_after_a_failover_follows_moved_and_waits_on_the_new_master(
    group: ClusterGroup, front: str
) -> None:
    """The producer's slot table still names the old master: its script is refused with MOVED (nothing
    written), and the script and its WAIT go again to the new master, once."""
    old = master_of(group, 0)
    new: RedisServer | None = None

    def failover() -> int:
        nonlocal new
        new = group.manual_failover(old)
        with redis.Redis(port=old.port, protocol=2) as client:
            client.config_resetstat()
        return length(new, 0)

    if front == "sync":
        with Producer(group.url, **REPLICATED) as producer:
            assert producer.send(Message(TOPIC, {"n": 0}), queue_id=0).status is SendStatus.SEND_OK
            before = failover()
            result = producer.send(Message(TOPIC, {"n": 1}), queue_id=0)
    else:

        async def main() -> tuple[int, SendResult]:
            async with AsyncProducer(group.url, **REPLICATED) as producer:
                first = await producer.send(Message(TOPIC, {"n": 0}), queue_id=0)
                assert first.status is SendStatus.SEND_OK
                before = await asyncio.to_thread(failover)
                return before, await producer.send(Message(TOPIC, {"n": 1}), queue_id=0)

        before, result = asyncio.run(main())
    assert new is not None
    assert (result.status, result.replicas) == (SendStatus.SEND_OK, 1)
    assert length(new, 0) == before + 1  # written once
    assert length(old, 0) == before + 1  # the old master, now its replica, has it
    with redis.Redis(port=old.port, protocol=2, decode_responses=True) as client:
        assert int(client.info("errorstats")["errorstat_MOVED"]["count"]) >= 1


def test_a_replicated_send_to_a_slot_being_migrated_asks_then_follows_the_move(
    group: ClusterGroup,
) -> None:
    """Queue 0's keys moved to another master, its slot still migrating: the old owner answers ASK, the
    importing node (asked with ASKING) TRYAGAIN, as its script's keys are not all there yet: nothing
    written, the send fails as Redis unavailable. Once the slot is the new node's, the next send
    follows MOVED there and waits on it."""
    source = master_of(group, 0)
    target = next(m for q in range(QUEUES) if (m := master_of(group, q)).port != source.port)
    slot = key_slot(stream(0).encode())
    ids = {n.port: group._node_id(n) for n in (source, target)}
    with Producer(group.url, **REPLICATED) as producer, Producer(group.url, retries=0, **REPLICATED) as once:
        assert producer.send(Message(TOPIC, {"n": 0}), queue_id=0).status is SendStatus.SEND_OK
        assert once.send(Message(TOPIC, {"n": 1}), queue_id=0).status is SendStatus.SEND_OK
        before = length(source, 0)
        with redis.Redis(port=source.port, protocol=2) as src:
            try:
                group._ask(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port])
                src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target.port])
                keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
                for node in (source, target):
                    group._ask(node, "CONFIG", "RESETSTAT")
                with pytest.raises(BrokerUnavailableError, match="rehashing of slot"):
                    once.send(Message(TOPIC, {"n": 2}), queue_id=0)
                errors = [_errors(node) for node in (source, target)]
            finally:  # the migration ends: the slot is the target's
                for node in group.nodes + group.replicas:
                    if group._role(node) == "master":
                        group._ask(node, "CLUSTER", "SETSLOT", slot, "NODE", ids[target.port])
        assert errors[0].get("errorstat_ASK") == 1
        assert errors[1].get("errorstat_TRYAGAIN") == 1  # asked with ASKING, or it would say MOVED
        assert length(target, 0) == before  # nothing written
        result = producer.send(Message(TOPIC, {"n": 3}), queue_id=0)
    assert (result.status, result.replicas) == (SendStatus.SEND_OK, 1)
    assert length(target, 0) == before + 1  # written once, on the new owner
    assert length(group.replica_of(target), 0) == before + 1  # and on its replica


def _errors(node: RedisServer) -> dict[str, int]:
    with redis.Redis(port=node.port, protocol=2, decode_responses=True) as client:
        return {name: int(v["count"]) for name, v in client.info("errorstats").items()}


def test_a_batch_whose_script_one_node_lost_still_says_the_least_replicated_node(
    group: ClusterGroup,
) -> None:
    """NOSCRIPT on one node (restarted, flushed): its scripts run again after a load, with a WAIT of
    their own; the batch still says what the other nodes' WAITs said (here: one replica frozen)."""
    frozen = master_of(group, 0)
    replica = group.replica_of(frozen)
    assert replica.process is not None
    flushed = next(m for q in range(QUEUES) if (m := master_of(group, q)).port != frozen.port)
    before = lengths(group)
    with Producer(group.url, **SHORT) as producer:
        producer.send(Message(TOPIC, {"warm": True}), queue_id=0)  # slot table and route read
        group._ask(flushed, "SCRIPT", "FLUSH")
        group._ask(flushed, "CONFIG", "RESETSTAT")
        replica.process.send_signal(signal.SIGSTOP)
        try:
            batch = producer.send_batch([Message(TOPIC, {"n": n}) for n in range(QUEUES)])
        finally:
            replica.process.send_signal(signal.SIGCONT)
    assert {(r.status, r.replicas) for r in batch} == {(SendStatus.FLUSH_SLAVE_TIMEOUT, 0)}
    on_flushed = [q for q in range(QUEUES) if master_of(group, q).port == flushed.port]
    stats = _commandstats(flushed)
    assert (stats["cmdstat_evalsha"]["calls"], stats["cmdstat_evalsha"]["failed_calls"]) == (
        2 * len(on_flushed),
        len(on_flushed),
    )
    assert stats["cmdstat_wait"]["calls"] == 2  # after the refused scripts, then after their writes
    after = lengths(group)
    assert all(after[q][0] == before[q][0] + 1 for q in on_flushed)  # written once
    assert after[0][0] == before[0][0] + 2


def _commandstats(node: RedisServer) -> dict[str, dict[str, int]]:
    with redis.Redis(port=node.port, protocol=2, decode_responses=True) as client:
        return dict(client.info("commandstats"))


def test_a_replicated_send_whose_replica_is_stopped_says_so_in_time(group: ClusterGroup) -> None:
    """The replica of queue 0's master frozen (SIGSTOP): a send there waits replica_timeout_ms and says
    FLUSH_SLAVE_TIMEOUT; a batch over every queue says it for all (its least replicated part)."""
    master = master_of(group, 0)
    replica = group.replica_of(master)
    assert replica.process is not None
    other = next(q for q in range(QUEUES) if master_of(group, q).port != master.port)
    before = length(master, 0)
    with Producer(group.url, **SHORT) as producer:
        assert producer.send(Message(TOPIC, {"n": 0}), queue_id=other).status is SendStatus.SEND_OK
        replica.process.send_signal(signal.SIGSTOP)
        try:
            start = time.monotonic()
            one = producer.send(Message(TOPIC, {"n": 1}), queue_id=0)
            waited = time.monotonic() - start
            elsewhere = producer.send(Message(TOPIC, {"n": 2}), queue_id=other)
            batch = producer.send_batch([Message(TOPIC, {"n": n}) for n in range(QUEUES)])
        finally:
            replica.process.send_signal(signal.SIGCONT)
    assert (one.status, one.replicas) == (SendStatus.FLUSH_SLAVE_TIMEOUT, 0)
    assert 0.2 <= waited < 2.0
    assert (elsewhere.status, elsewhere.replicas) == (SendStatus.SEND_OK, 1)
    assert {(r.status, r.replicas) for r in batch} == {(SendStatus.FLUSH_SLAVE_TIMEOUT, 0)}
    assert length(master, 0) == before + 2  # written on the master all the same: the caller decides
