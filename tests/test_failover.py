"""Planned and unplanned Sentinel failovers against real processes: clients follow the announcement.

After ``SENTINEL FAILOVER`` the old master stays up and writable for about
10 s before the sentinels turn it into a replica, which throws away whatever
it accepted meanwhile. Clients must leave it as soon as the sentinels
announce ``+switch-master`` (docs/connections.md, "During a failover").
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

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
    SendResult,
    SendStatus,
)
from rmq_style.testing import RedisServer, SentinelGroup, redis_server_available
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

        sent, on_old, role = asyncio.run(main())
        assert role == "master"
        assert stream_length(old) == on_old == 10  # no write after the announcement reached it
        assert stream_length(old, "after") == 0
        assert queue_offsets(new) == list(range(20))
        assert seen == Counter(sent)  # each handled once, read from the new master
        with Admin(url) as admin:
            assert [t.topic for t in admin.list_topics()] == ["after", TOPIC]
            (row,) = admin.progress("billing", TOPIC)
            assert (row.progress.lag, row.progress.pending) == (0, 0)


QUEUES = 4
TOTAL = 300


async def send_under_load(
    url: str, fault: Callable[[], None], *, fault_at: int, **producer_options: Any
) -> tuple[list[SendResult], Counter[str], list[PushConsumer]]:
    """Send TOTAL messages at about 250/s while two lagging consumers of one group consume; run *fault*
    (in a thread) once *fault_at* were sent. Returns the send results, how often each msg id was
    handled, and the consumers (stopped)."""
    seen: Counter[str] = Counter()

    async def lagging(msg: ReceivedMessage) -> None:  # 2 x 100/s: behind the producer
        await asyncio.sleep(0.01)
        seen[msg.msg_id] += 1

    consumers = [PushConsumer(url, "billing", fast_settings(concurrency=1)) for _ in range(2)]
    for consumer in consumers:
        consumer.subscribe(TOPIC, "*", lagging)
    results: list[SendResult] = []
    async with consumers[0], consumers[1], AsyncProducer(url, **producer_options) as producer:
        faulted: asyncio.Future[None] | None = None
        for n in range(TOTAL):
            if n == fault_at:
                faulted = asyncio.ensure_future(asyncio.to_thread(fault))
            results.append(await producer.send(Message(TOPIC, {"n": n})))
            await asyncio.sleep(0.004)
        assert faulted is not None
        await faulted
        confirmed = {r.msg_id for r in results if r.status is SendStatus.SEND_OK}
        await until(lambda: confirmed <= set(seen), timeout=30, what="every confirmed send handled")
        await until(lambda: all(c.in_flight == 0 for c in consumers), what="acks")
        assert all(c.queues for c in consumers)  # both still consuming their share
    return results, seen, consumers


def assert_outcome(url: str, results: list[SendResult], seen: Counter[str], events: list[Any]) -> None:
    """Every confirmed send handled at least once, no queue offset confirmed twice, nothing pending."""
    confirmed = [r for r in results if r.status is SendStatus.SEND_OK]
    assert {r.msg_id for r in confirmed} <= set(seen)
    offsets = Counter((r.queue.queue_id, r.queue_offset) for r in confirmed)
    assert [o for o, count in offsets.items() if count > 1] == []
    assert [e for e in events if e["log_level"] in ("error", "critical")] == []
    with Admin(url) as admin:  # progress against the new master
        rows = admin.progress("billing", TOPIC)
    assert len(rows) == QUEUES
    assert sum(r.progress.lag + r.progress.pending for r in rows) == 0


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
            results, seen, _ = asyncio.run(send_under_load(url, act, fault_at=100, **REPLICATED))
        assert_outcome(url, results, seen, events)
        # a loaded machine may see a second failover: clients follow it too
        assert group.master_port() != old_port
        late = [r for r in results if r.status is not SendStatus.SEND_OK]
        # sends the new master took before a replica resynced with it: said, not silently durable
        assert all(r.replicas == 0 for r in late) and len(late) < TOTAL // 10, late
