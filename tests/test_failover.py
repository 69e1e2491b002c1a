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

from rmq_style import Admin, AsyncProducer, Message, Producer, PushConsumer, ReceivedMessage
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
