"""Planned and unplanned Sentinel failovers against real processes: clients follow the announcement.

After ``SENTINEL FAILOVER`` the old master stays up and writable for about
10 s before the sentinels turn it into a replica, which throws away whatever
it accepted meanwhile. Clients must leave it as soon as the sentinels
announce ``+switch-master`` (docs/connections.md, "During a failover").
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
import redis
from structlog.testing import capture_logs

from rmq_style import (
    Admin,
    AsyncProducer,
    Message,
    Producer,
    PushConsumer,
    ReceivedMessage,
    SendStatus,
)
from rmq_style.testing import RedisServer, SentinelGroup, redis_server_available
from tests.failoverkit import LOSS_WINDOW_S, QUEUES, TOTAL, assert_outcome, send_under_load
from tests.pushkit import fast_settings, until

pytestmark = [pytest.mark.real_only, pytest.mark.sentinel]

TOPIC = "ha"


@pytest.fixture(autouse=True)
def _redis_server() -> None:
    if not redis_server_available():
        pytest.fail("redis-server is not installed: .ci/run installs it with apt-get")


def stream_length(server: RedisServer, topic: str = TOPIC) -> int:
    with redis.Redis(port=server.port, protocol=2) as client:
        return int(client.xlen(f"rmq:{{{topic}:0}}:s"))


def queue_offsets(server: RedisServer) -> list[int]:
    with redis.Redis(port=server.port, protocol=2) as client:
        return [int(fields[b"q"]) for _, fields in client.xrange(f"rmq:{{{TOPIC}:0}}:s")]


def test_every_client_leaves_the_old_master_when_the_sentinels_announce_the_switch() -> None:
    with SentinelGroup(sentinels=3) as group:
        url = group.url
        with Admin(url) as admin:
            admin.create_topic(TOPIC, queues=1)
        old, new = group.master, group.replica
        seen: Counter[str] = Counter()

        async def listener(msg: ReceivedMessage) -> None:
            seen[msg.msg_id] += 1

        async def main() -> tuple[list[str], int, str]:
            consumer = PushConsumer(url, "billing", fast_settings())
            consumer.subscribe(TOPIC, "*", listener)
            async with consumer, AsyncProducer(url) as async_producer:
                with Producer(url) as producer, Admin(url) as admin:
                    sent = [producer.send(Message(TOPIC, {"i": i})).msg_id for i in range(5)]
                    sent += [(await async_producer.send(Message(TOPIC, {"i": i}))).msg_id for i in range(5)]
                    await until(lambda: len(seen) == 10 and consumer.in_flight == 0, what="first 10")
                    group.wait_replicated()
                    on_old = stream_length(old)
                    await asyncio.to_thread(group.planned_failover)
                    # the sentinels named the new master: from now on nothing may land on the old one
                    sent += [producer.send(Message(TOPIC, {"i": i})).msg_id for i in range(5)]
                    sent += [(await async_producer.send(Message(TOPIC, {"i": i}))).msg_id for i in range(5)]
                    admin.create_topic("after", queues=1)
                    role = group.role(old)  # still a writable master: the clients had a choice
                    await until(lambda: len(seen) == 20, timeout=5, what="the 10 sent after the switch")
                    await until(lambda: consumer.in_flight == 0, what="acks")
            return sent, on_old, role

        with capture_logs() as events:
            sent, on_old, role = asyncio.run(main())
        heard = [
            e["event"] for e in events if e["event"].startswith("sentinel.") and e["log_level"] != "debug"
        ]
        # the promotion held the writes, the switch moved every client (one shared watch per URL)
        assert heard[:2] == ["sentinel.promotion_started", "sentinel.switch_master"], heard
        assert role == "master"
        assert stream_length(old) == on_old == 10  # no write after the announcement reached it
        assert stream_length(old, "after") == 0
        assert queue_offsets(new) == list(range(20))
        assert seen == Counter(sent)  # each handled once, read from the new master
        with Admin(url) as admin:
            assert [t.topic for t in admin.list_topics()] == ["after", TOPIC]
            (row,) = admin.progress("billing", TOPIC)
            assert (row.progress.lag, row.progress.pending) == (0, 0)


REPLICATED = {"min_replicas": 1, "replica_timeout_ms": 300, "retries": 12, "retry_backoff_ms": 20}


@pytest.mark.parametrize("fault", ["sentinel-failover", "kill-master"])
def test_replicated_sends_survive_a_failover_under_load(fault: str) -> None:
    """(a) SENTINEL FAILOVER, (b) kill -9 of the master: three sentinels, two replicas (so the new
    master has one to acknowledge replicated sends at once)."""
    with SentinelGroup(sentinels=3, replicas=2, down_after_ms=1000) as group:
        url = group.url
        with Admin(url) as admin:
            admin.create_topic(TOPIC, queues=QUEUES)
        old_port = group.master.port

        def act() -> None:
            if fault == "kill-master":
                group.master.kill()
                group.wait_for_failover()
            else:
                group.planned_failover()

        with capture_logs() as events:
            load = asyncio.run(send_under_load(url, act, **REPLICATED))
        assert_outcome(url, load, events)
        # a loaded machine may see a second failover: clients follow it too
        assert group.master_port() != old_port
        late = [r for r in load.results if r.status is not SendStatus.SEND_OK]
        # sends the new master took before a replica resynced with it: said, not silently durable
        assert all(r.replicas == 0 for r in late) and len(late) < TOTAL // 10, late


PLAIN = {"retries": 12, "retry_backoff_ms": 20}


@pytest.mark.parametrize("fault", ["sentinel-failover", "kill-master"])
def test_plain_sends_lose_at_most_the_replication_lag_at_a_failover(fault: str) -> None:
    with SentinelGroup(sentinels=3, replicas=2, down_after_ms=1000) as group:
        url = group.url
        with Admin(url) as admin:
            admin.create_topic(TOPIC, queues=QUEUES)
        old_port = group.master.port

        def act() -> None:
            if fault == "kill-master":
                group.master.kill()
                group.wait_for_failover()
            else:
                group.planned_failover()

        with capture_logs() as events:
            load = asyncio.run(send_under_load(url, act, **PLAIN))
        lost = load.lost()
        assert all(load.fault_at - LOSS_WINDOW_S <= load.returned_at[i] for i in lost), lost
        assert_outcome(url, load, events, lost=lost)
        assert len(load.confirmed()) == TOTAL  # plain sends: every one returned success
        assert group.master_port() != old_port
