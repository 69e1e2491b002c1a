"""redis+sentinel:// against real processes: a master, its replica and a sentinel (fakeredis has no Sentinel).

Each test starts its own SentinelGroup (failover is destructive) and kills the
master or swaps the roles. Redis replication is asynchronous: a write the
master acknowledged and died before replicating is lost on failover, so the
tests WAIT for the replica before they kill the master (docs/connections.md).
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis
from structlog.testing import capture_logs

from rmq_style import (
    Admin,
    AsyncProducer,
    BrokerRefusedError,
    BrokerUnavailableError,
    Message,
    MessageQueue,
    Producer,
    PullConsumer,
    PullStatus,
    PushConsumer,
    ReceivedMessage,
)
from rmq_style._sync._io import LaneClient
from rmq_style.testing import SentinelGroup, free_port, redis_server_available
from tests.pushkit import fast_settings, until

pytestmark = [pytest.mark.real_only, pytest.mark.sentinel]

TOPIC = "ha"
# the first send after the master died waits out the failover (about 1-3 s): 20 ms doubling 9 times
RETRIES = {"retries": 9, "retry_backoff_ms": 20}


@pytest.fixture(params=["plain"])
def group(request: pytest.FixtureRequest) -> Iterator[SentinelGroup]:
    """A master, its replica and a sentinel; param "tls": they talk TLS, and group.url is rediss+sentinel."""
    if not redis_server_available():
        pytest.fail("redis-server is not installed: .ci/run installs it with apt-get")
    tls = request.param == "tls"
    if tls and shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the TLS test certificate (.ci/run installs it)")
    with SentinelGroup(tls=tls) as started:
        yield started


def create_topic(url: str) -> None:
    with Admin(url) as admin:
        admin.create_topic(TOPIC, queues=1)


def stored_entries(port: int) -> list[tuple[int, bytes]]:
    """(queue offset, msg id) of every entry of queue 0 on the server at *port*, in stream order."""
    with redis.Redis(port=port, protocol=2) as client:
        rows = client.xrange(f"rmq:{{{TOPIC}:0}}:s")
    return [(int(fields[b"q"]), fields[b"i"]) for _, fields in rows]


def assert_consecutive_and_unique(port: int, total: int) -> list[str]:
    entries = stored_entries(port)
    assert [q for q, _ in entries] == list(range(total))  # none lost, none twice
    ids = [i.decode() for _, i in entries]
    assert len(set(ids)) == total
    return ids


def lane_of(producer: Producer) -> Any:
    """The connection the producer keeps aside for sends."""
    return cast(LaneClient, producer._client).lane


async def consume_all(url: str, expected: int) -> Counter[str]:
    """Run a push consumer through *url* until it handled *expected* messages; how often it saw each."""
    seen: Counter[str] = Counter()

    async def listener(msg: ReceivedMessage) -> None:
        seen[msg.msg_id] += 1

    consumer = PushConsumer(url, "billing", fast_settings())
    consumer.subscribe(TOPIC, "*", listener)
    async with consumer:
        await until(lambda: sum(seen.values()) >= expected, what=f"{expected} messages handled")
        await until(lambda: consumer.in_flight == 0, what="acks")
    return seen


def test_produce_and_consume_through_the_sentinel(group: SentinelGroup) -> None:
    # a dead sentinel first in the list: the client asks the next one
    url = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{group.sentinel_port}/mymaster/0"
    create_topic(url)
    with Producer(url) as producer:
        sent = [producer.send(Message(TOPIC, {"i": i})).msg_id for i in range(20)]
    with PullConsumer(url, "analytics") as consumer:
        result = consumer.pull(MessageQueue(TOPIC, 0), "0-0", max_nums=32)
    assert result.status is PullStatus.FOUND
    assert [m.msg_id for m in result.messages] == sent
    assert_consecutive_and_unique(group.master.port, 20)
    assert Counter(asyncio.run(consume_all(url, 20))) == Counter(sent)
    # closing the clients closed their connections to the sentinel too (MasterPool owns them)
    with redis.Redis(port=group.sentinel_port, protocol=2) as asker:
        assert len(asker.client_list(_type="normal")) == 1


def test_url_logins_go_to_the_master_and_sentinel_logins_to_the_sentinel(group: SentinelGroup) -> None:
    grant = ("on", ">s3cret", "~*", "&*", "+@all")
    for port in (group.master.port, group.replica.port):
        with redis.Redis(port=port, protocol=2) as node:
            node.execute_command("ACL", "SETUSER", "alice", *grant)
    with redis.Redis(port=group.sentinel_port, protocol=2) as sentinel:
        sentinel.execute_command("ACL", "SETUSER", "watcher", *grant)  # alice is unknown there
    base = f"127.0.0.1:{group.sentinel_port}/mymaster/0"
    create_topic(f"redis+sentinel://alice:s3cret@{base}")  # alice's login never reaches the sentinel
    watcher = "sentinel_username=watcher&sentinel_password=s3cret"
    with Producer(f"redis+sentinel://alice:s3cret@{base}?{watcher}") as producer:
        assert producer.send(Message(TOPIC, b"x")).queue_offset == 0
    with pytest.raises(BrokerRefusedError, match=r"\(AUTH\)"):
        create_topic(f"redis+sentinel://alice:wrong@{base}")
    with pytest.raises(BrokerUnavailableError, match=r"No master found .*AuthenticationError"):
        create_topic(f"redis+sentinel://alice:s3cret@{base}?sentinel_username=watcher&sentinel_password=no")


@pytest.mark.parametrize("group", ["plain", "tls"], indirect=True)
def test_producer_rides_a_failover_and_a_consumer_gets_everything_once(group: SentinelGroup) -> None:
    create_topic(group.url)
    old_master = group.master_port()
    with Producer(group.url, **RETRIES) as producer:
        before = [producer.send(Message(TOPIC, {"i": i})).msg_id for i in range(30)]
        group.wait_replicated()  # without it, acknowledged writes may die with the master
        group.master.kill()
        after = [producer.send(Message(TOPIC, {"i": 30 + i})).msg_id for i in range(30)]
        lane = lane_of(producer)  # the lane followed the master the sentinel names now
    new_master = group.wait_for_failover()
    assert new_master != old_master and (lane.host, lane.port) == ("127.0.0.1", new_master)
    assert ("SSL" in type(lane).__name__) == group.url.startswith("rediss+sentinel:")
    assert assert_consecutive_and_unique(group.replica.port, 60) == before + after
    seen = asyncio.run(consume_all(group.url, 60))
    assert seen == Counter(before + after)  # every message handled, each exactly once


def test_push_consumer_keeps_consuming_across_a_failover(group: SentinelGroup) -> None:
    create_topic(group.url)
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def listener(msg: ReceivedMessage) -> None:  # sync: runs in the consumer's thread pool
        with lock:
            seen[msg.msg_id] += 1

    async def main() -> list[str]:
        consumer = PushConsumer(group.url, "billing", fast_settings())
        consumer.subscribe(TOPIC, "*", listener)
        async with consumer, AsyncProducer(group.url, **RETRIES) as producer:
            sent = [(await producer.send(Message(TOPIC, {"i": i}))).msg_id for i in range(20)]
            await until(lambda: len(seen) == 20 and consumer.in_flight == 0, what="first 20 handled")
            group.wait_replicated()  # the acks too: a lost ack would mean a redelivery
            group.master.kill()
            sent += [(await producer.send(Message(TOPIC, {"i": 20 + i}))).msg_id for i in range(20)]
            await until(lambda: len(seen) == 40 and consumer.in_flight == 0, what="all 40 handled")
        return sent

    with capture_logs() as events:
        sent = asyncio.run(main())
    assert seen == Counter(sent)  # all 40, each once: nothing was in flight when the master died
    outages = {e["task"] for e in events if e["event"] == "consumer.redis_unavailable"}
    assert "fetch" in outages  # it did lose the master, and came back by itself


@pytest.mark.parametrize("pool_learns_first", [False, True], ids=["readonly", "pool-learns-first"])
def test_a_master_demoted_behind_the_clients_back_loses_them(
    group: SentinelGroup, pool_learns_first: bool
) -> None:
    """The lane stays open to the old master, now a replica: its write gets READONLY, or, when a
    pooled connection of the client met the new master first, the lane is dropped before it writes."""
    create_topic(group.url)
    with Producer(group.url, **RETRIES) as producer:
        first = producer.send(Message(TOPIC, b"0"))
        group.switch_over_unseen()
        if pool_learns_first:
            client = producer._client
            client.connection_pool.disconnect(inuse_connections=False)  # idle ones dropped (not the lane)
            client.ping()  # a pooled connection reconnects: it asks the sentinel, the pool learns
        second = producer.send(Message(TOPIC, b"1"))
        lane = lane_of(producer)
    assert (first.queue_offset, second.queue_offset) == (0, 1)
    assert lane.port == group.master.port == group.master_port()
    assert assert_consecutive_and_unique(group.master.port, 2) == [first.msg_id, second.msg_id]
    with redis.Redis(port=group.replica.port, protocol=2) as old_master:
        refused = old_master.info("errorstats").get("errorstat_READONLY", {"count": 0})["count"]
    assert (refused == 0) if pool_learns_first else (refused >= 1)
