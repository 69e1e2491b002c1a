"""Redis refusing a command (out of memory, replica, no replicas, ACL) is one clear error, and writes nothing.

Each test reconfigures its own private redis-server (real only: fakeredis has
no maxmemory, replication or min-replicas).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis

from rmq_style import Admin, BrokerRefusedError, Message, Producer
from rmq_style.testing import RedisServer, free_port

pytestmark = pytest.mark.real_only

STREAM, SEQ = "rmq:{orders:0}:s", "rmq:{orders:0}:seq"


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        with Admin(s.url) as admin:
            admin.create_topic("orders", queues=1)
        yield s


def written(r: redis.Redis) -> tuple[int, int]:
    return r.xlen(STREAM), int(r.get(SEQ) or 0)


def test_out_of_memory(server: RedisServer) -> None:
    r = redis.Redis.from_url(server.url)
    with Producer(server.url) as producer:
        producer.send(Message("orders", b"before"))
        r.set("ballast", b"x" * 4_000_000)
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", 1_000_000)  # below what is used: every write is refused
        with pytest.raises(BrokerRefusedError, match=r"\(OOM\)") as refused:
            producer.send(Message("orders", b"refused"))
        assert refused.value.code == "OOM"
        with pytest.raises(BrokerRefusedError, match=r"\(OOM\)"):
            producer.send_batch([Message("orders", n) for n in range(10)])
        with Admin(server.url) as admin, pytest.raises(BrokerRefusedError, match=r"\(OOM\)"):
            admin.create_topic("more")
        assert written(r) == (1, 1)
        r.config_set("maxmemory", 0)  # fixed: the same producer goes on
        assert producer.send(Message("orders", b"after")).queue_offset == 1


def test_a_replica_refuses_writes(server: RedisServer) -> None:
    r = redis.Redis.from_url(server.url)
    r.replicaof("127.0.0.1", free_port())  # nothing listens there: a read-only replica that stays one
    try:
        with Producer(server.url) as producer, pytest.raises(BrokerRefusedError) as refused:
            producer.send(Message("orders", b"refused"))
        assert refused.value.code == "READONLY"
        assert written(r) == (0, 0)
    finally:
        r.replicaof("NO", "ONE")


def test_min_replicas_to_write(server: RedisServer) -> None:
    r = redis.Redis.from_url(server.url)
    r.config_set("min-replicas-to-write", 1)
    with Producer(server.url) as producer, pytest.raises(BrokerRefusedError) as refused:
        producer.send(Message("orders", b"refused"))
    assert refused.value.code == "NOREPLICAS"
    assert written(r) == (0, 0)


def test_an_acl_without_xadd_leaves_no_gap_in_queue_offsets(server: RedisServer) -> None:
    r = redis.Redis.from_url(server.url)
    r.acl_setuser("reader", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-xadd"])
    reader_url = f"redis://reader:pw@127.0.0.1:{server.port}/0"
    with Producer(server.url) as producer:  # a delayed message, due at once, for the release below
        producer.send(Message("orders", b"held"), delay=timedelta(milliseconds=1))
    with Producer(reader_url) as producer:
        with pytest.raises(BrokerRefusedError) as refused:
            producer.send(Message("orders", b"refused"))
        assert refused.value.code == "NOPERM"
        with pytest.raises(BrokerRefusedError, match=r"\(NOPERM\)"):
            producer.send_batch([Message("orders", n) for n in range(5)])
    # a script is not rolled back: the queue offset counter was given back by the script itself
    assert written(r) == (0, 0)
    with Admin(reader_url) as admin, pytest.raises(BrokerRefusedError, match=r"\(NOPERM\)"):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # due by the server clock within a few ms
            admin.release_due("orders")
    assert written(r) == (0, 0) and r.zcard("rmq:{orders:0}:delay") == 1
    with Producer(server.url) as producer:
        assert producer.send(Message("orders", b"allowed")).queue_offset == 0
