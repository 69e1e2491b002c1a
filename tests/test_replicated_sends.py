"""Replicated sends (min_replicas): a send returns once that many replicas have the write, or says they don't.

RocketMQ's SYNC_MASTER: the producer's WAIT goes in the same round trip as
the send script, on the same connection. A real master and replica; memory://
has no replicas.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis
from structlog.testing import capture_logs

from rmq_style import Admin, AsyncProducer, BrokerRefusedError, Message, Producer, SendStatus
from rmq_style.testing import RedisServer, redis_server_available

TOPIC = "durable"
REPLICATED = {"min_replicas": 1, "replica_timeout_ms": 2000}  # a loaded machine: room to acknowledge
SHORT = {"min_replicas": 1, "replica_timeout_ms": 200}


@pytest.fixture
def pair() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A master and its replica, in sync."""
    if not redis_server_available():
        pytest.fail("redis-server is not installed: .ci/run installs it with apt-get")
    with RedisServer() as master, RedisServer(replica_of=master.port) as replica:
        deadline = time.monotonic() + 10
        with redis.Redis(port=master.port, protocol=2, decode_responses=True) as client:
            while client.info("replication").get("slave0", {}).get("state") != "online":
                assert time.monotonic() < deadline, "replica not in sync"
                time.sleep(0.02)
        with Admin(master.url) as admin:
            admin.create_topic(TOPIC, queues=2)
        yield master, replica


def entries_on(server: RedisServer) -> int:
    with redis.Redis(port=server.port, protocol=2) as client:
        return sum(int(client.xlen(f"rmq:{{{TOPIC}:{q}}}:s")) for q in range(2))


@pytest.mark.real_only
def test_a_replicated_send_returns_once_the_replica_has_it(pair: tuple[RedisServer, RedisServer]) -> None:
    master, replica = pair
    with Producer(master.url, **REPLICATED) as producer:
        one = producer.send(Message(TOPIC, {"n": 0}))
        assert (one.status, one.replicas) == (SendStatus.SEND_OK, 1)
        assert entries_on(replica) == 1  # already there when send returned: no wait in the test
        batch = producer.send_batch([Message(TOPIC, {"n": n}) for n in range(1, 11)])
        assert {(r.status, r.replicas) for r in batch} == {(SendStatus.SEND_OK, 1)}
        assert entries_on(replica) == 11

    async def main() -> None:
        async with AsyncProducer(master.url, **REPLICATED) as producer:
            result = await producer.send(Message(TOPIC, {"n": 11}), queue_id=1)
            assert (result.status, result.replicas) == (SendStatus.SEND_OK, 1)
            assert entries_on(replica) == 12

    asyncio.run(main())
    with Producer(master.url) as plain:  # without the option: no WAIT, nothing said about replicas
        result = plain.send(Message(TOPIC, {"n": 12}))
        assert (result.status, result.replicas) == (SendStatus.SEND_OK, None)


@pytest.mark.real_only
def test_a_send_the_replicas_did_not_acknowledge_in_time_says_so(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    master, replica = pair
    replica.kill()
    with Producer(master.url, **SHORT) as producer:
        start = time.monotonic()
        one = producer.send(Message(TOPIC, {"n": 0}))
        waited = time.monotonic() - start
        batch = producer.send_batch([Message(TOPIC, {"n": n}) for n in range(1, 5)], delay_level=1)
    assert (one.status, one.replicas) == (SendStatus.FLUSH_SLAVE_TIMEOUT, 0)
    assert waited >= 0.2  # it waited replica_timeout_ms for the replica
    assert {(r.status, r.replicas) for r in batch} == {(SendStatus.FLUSH_SLAVE_TIMEOUT, 0)}
    assert entries_on(master) == 1  # written on the master all the same: the caller decides


def test_memory_has_no_replicas_and_says_so_at_once() -> None:
    with Admin("memory://replicated") as admin:
        admin.create_topic(TOPIC, queues=2)
    with Producer("memory://replicated", **SHORT) as producer:
        start = time.monotonic()
        result = producer.send(Message(TOPIC, {"n": 0}))
        assert time.monotonic() - start < 0.2
    assert (result.status, result.replicas, result.queue_offset) == (SendStatus.FLUSH_SLAVE_TIMEOUT, 0, 0)


@pytest.mark.real_only
def test_min_replicas_to_write_makes_a_master_without_replicas_refuse_sends() -> None:
    """The server-side bound (docs/connections.md): no replica in sync, no write, and the send says so."""
    if not redis_server_available():
        pytest.fail("redis-server is not installed: .ci/run installs it with apt-get")
    bound = ("--min-replicas-to-write", "1", "--min-replicas-max-lag", "10")
    with RedisServer(extra_args=bound) as master, RedisServer(replica_of=master.port) as replica:
        deadline = time.monotonic() + 10
        with redis.Redis(port=master.port, protocol=2, decode_responses=True) as client:
            while client.info("replication").get("min_slaves_good_slaves") != 1:
                assert time.monotonic() < deadline, "replica not in sync"
                time.sleep(0.02)
            with Admin(master.url) as admin:
                admin.create_topic(TOPIC, queues=2)
            replica.kill()
            while client.info("replication").get("min_slaves_good_slaves") != 0:
                assert time.monotonic() < deadline, "master did not see its replica go"
                time.sleep(0.02)
        with Producer(master.url) as producer, pytest.raises(BrokerRefusedError, match="NOREPLICAS"):
            producer.send(Message(TOPIC, {"n": 0}))
        assert entries_on(master) == 0


@pytest.mark.real_only
def test_replica_fsync_falls_back_to_wait_on_a_server_without_waitaof(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    master, replica = pair
    with redis.Redis(port=master.port, protocol=2) as client:
        version = tuple(int(p) for p in str(client.info("server")["redis_version"]).split(".")[:2])
    has_waitaof = version >= (7, 2)
    if has_waitaof:
        pytest.skip("this redis-server has WAITAOF (7.2+): no fallback to see")
    with capture_logs() as events, Producer(master.url, replica_fsync=True, **REPLICATED) as producer:
        first = producer.send(Message(TOPIC, {"n": 0}))
        second = producer.send(Message(TOPIC, {"n": 1}))
    assert [(r.status, r.replicas) for r in (first, second)] == [(SendStatus.SEND_OK, 1)] * 2
    assert [e["event"] for e in events if e["log_level"] == "warning"] == ["producer.waitaof_unavailable"]
    assert entries_on(master) == entries_on(replica) == 2


@pytest.mark.real_only
def test_a_send_whose_script_was_flushed_waits_again_after_its_write(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    """NOSCRIPT (a restarted or flushed server): the script is loaded and runs again, and so does the
    WAIT after it, which had counted replicas before anything was written."""
    master, _replica = pair
    with redis.Redis(port=master.port, protocol=2, decode_responses=True) as client:
        client.script_flush()
        client.config_resetstat()
        with Producer(master.url, **REPLICATED) as producer:
            result = producer.send(Message(TOPIC, {"n": 0}))
        stats = client.info("commandstats")
    assert (result.status, result.replicas) == (SendStatus.SEND_OK, 1)
    assert (stats["cmdstat_evalsha"]["calls"], stats["cmdstat_evalsha"]["failed_calls"]) == (2, 1)
    assert stats["cmdstat_wait"]["calls"] == 2  # once after the refused script, once after the write
