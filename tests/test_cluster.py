"""Redis Cluster (redis+cluster://): a topic's queues spread over the nodes, every front works on them.

Each queue's keys share one hash tag, so every script runs on one slot; reads
over several queues (push fetches, lite polls) are split per queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from redis.cluster import RedisCluster
from structlog.testing import capture_logs

from rmq_style import (
    Admin,
    AsyncAdmin,
    AsyncProducer,
    AsyncPullConsumer,
    BrokerRefusedError,
    DeadLetter,
    InvalidUrlError,
    LitePullConsumer,
    Message,
    MessageQueue,
    Producer,
    PullConsumer,
    PushConsumer,
    ReceivedMessage,
)
from rmq_style._connection import parse_url
from rmq_style._names import Keys
from rmq_style.testing import ClusterGroup, redis_server_available
from tests.pushkit import fast_settings, until

pytestmark = [pytest.mark.cluster, pytest.mark.real_only]
QUEUES = 8


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterGroup]:
    if not redis_server_available():
        pytest.fail("redis-server is not installed")
    with ClusterGroup() as group:
        yield group


@pytest.fixture
def url(cluster: ClusterGroup) -> str:
    cluster.flush()
    with Admin(cluster.url) as admin:
        admin.create_topic("orders", queues=QUEUES)
    return cluster.url


def test_cluster_urls_are_parsed_and_bad_ones_refused() -> None:
    target = parse_url("rediss+cluster://u:p%40ss@n1:7000,[::1]?ssl_ca_certs=/ca.pem").cluster
    assert target is not None
    assert target.nodes == (("n1", 7000), ("::1", 6379))
    assert (target.username, target.password) == ("u", "p@ss")
    assert target.node_options()["ssl_ca_certs"] == "/ca.pem"
    with pytest.raises(InvalidUrlError, match="a cluster has db 0 only"):
        parse_url("redis+cluster://n1:7000/2")
    with pytest.raises(InvalidUrlError, match=r"unknown options \['ssl_ca_certs'\]"):
        parse_url("redis+cluster://n1:7000?ssl_ca_certs=/ca.pem")
    with pytest.raises(InvalidUrlError, match="bad node port"):
        parse_url("redis+cluster://n1:x")


def test_queues_spread_over_the_nodes_and_the_sync_fronts_work(url: str, cluster: ClusterGroup) -> None:
    raw = RedisCluster.from_url(f"redis://127.0.0.1:{cluster.nodes[0].port}", protocol=2)
    homes = {raw.get_node_from_key(Keys().queue("orders", q).stream).port for q in range(QUEUES)}
    assert len(homes) == 3  # every node holds some of the topic's queues
    with Producer(url) as producer:
        sent = producer.send_batch(
            [Message("orders", {"n": n}, keys=[f"k{n}"]) for n in range(200)],
            sharding_key=lambda m: m.body["n"] % 20,
        )
        producer.send(Message("orders", {"n": 200}), delay=timedelta(milliseconds=1))
    with Admin(url) as admin:
        deadline = time.monotonic() + 5
        while admin.release_due("orders") == 0 and time.monotonic() < deadline:
            pass  # due by the server clock within a millisecond
        assert sum(q.length for q in admin.describe_topic("orders").queues) == 201
        (found,) = admin.find_messages("orders", key="k42")
        assert found.msg_id == sent[42].msg_id
    with PullConsumer(url, "reader") as pull:
        got = 0
        for q in range(QUEUES):
            queue = MessageQueue("orders", q)
            result = pull.pull(queue, "0-0", max_nums=64)
            got += len(result.messages)
            pull.commit(queue, result.next_offset)
        assert got == 201
        assert sum(pull.progress(MessageQueue("orders", q)).lag for q in range(QUEUES)) == 0


def test_async_fronts(url: str) -> None:
    async def main() -> None:
        async with AsyncAdmin(url) as admin, AsyncProducer(url) as producer:
            await admin.create_topic("audit", queues=4)
            await producer.send_batch([Message("audit", {"n": n}) for n in range(40)])
            async with AsyncPullConsumer(url, "g") as pull:
                counts = [len((await pull.pull(MessageQueue("audit", q), "0-0")).messages) for q in range(4)]
            assert counts == [10, 10, 10, 10]
            await admin.delete_topic("audit")
            assert [t.topic for t in await admin.list_topics()] == ["orders"]

    asyncio.run(main())


def test_push_consumers_get_every_message_once_with_retries_and_dead_letters(url: str) -> None:
    with Producer(url) as producer:
        producer.send_batch([Message("orders", {"n": n}) for n in range(400)])
    handled: list[int] = []

    async def listener(msg: ReceivedMessage) -> None:
        n = msg.value()["n"]
        if n == 7 and msg.reconsume_times == 0:
            raise RuntimeError("once")
        if n == 13:
            raise DeadLetter("never")
        handled.append(n)

    async def main() -> None:
        a = PushConsumer(url, "billing", fast_settings(retry_delays_ms=(10,), retry_poll_ms=20))
        b = PushConsumer(url, "billing", fast_settings(retry_delays_ms=(10,), retry_poll_ms=20))
        for consumer in (a, b):
            consumer.subscribe("orders", "*", listener)
        async with a, b:
            await until(lambda: len(a.queues) + len(b.queues) == QUEUES and len(a.queues) > 0, what="split")
            await until(lambda: len(handled) == 399, what="all but the dead letter")
            await until(lambda: a.in_flight + b.in_flight == 0, what="acks")

    asyncio.run(main())
    assert sorted(handled) == [n for n in range(400) if n != 13]
    with Admin(url) as admin:
        (letter,) = admin.dead_letters("billing", "orders")
        assert letter.message.value() == {"n": 13} and "never" in letter.reason
        reports = admin.progress("billing", "orders")
        assert all(r.progress.lag == 0 and r.progress.pending == 0 for r in reports)


def test_broadcasting_members_each_get_every_message(url: str) -> None:
    with Producer(url) as producer:
        producer.send_batch([Message("orders", {"n": n}) for n in range(100)])
    handled: dict[str, list[int]] = {"a": [], "b": []}

    async def main() -> None:
        members = []
        for name, got in handled.items():

            async def listener(msg: ReceivedMessage, name: str = name, got: list[int] = got) -> None:
                n = msg.value()["n"]
                if n == 7 and msg.reconsume_times == 0 and name == "a":
                    raise RuntimeError("once, at a")
                got.append(n)

            settings = fast_settings(message_model="broadcasting", instance_name=name, retry_delays_ms=(10,))
            member = PushConsumer(url, "screens", settings)
            member.subscribe("orders", "*", listener)
            members.append(member)
        async with members[0], members[1]:
            await until(lambda: all(len(h) == 100 for h in handled.values()), what="every message at each")

    asyncio.run(main())
    assert sorted(handled["a"]) == sorted(handled["b"]) == list(range(100))
    with Admin(url) as admin:
        reports = admin.progress("screens", "orders")
    assert sorted({(m.instance, m.lag) for r in reports for m in r.members}) == [("a", 0), ("b", 0)]


def test_orderly_consumers_keep_each_key_in_order(url: str) -> None:
    with Producer(url) as producer:
        producer.send_batch(
            [Message("orders", {"user": n % 10, "seq": n // 10}) for n in range(300)],
            sharding_key=lambda m: m.body["user"],
        )
    seen: dict[int, list[int]] = {}

    async def listener(msg: ReceivedMessage) -> None:
        body = msg.value()
        if body == {"user": 3, "seq": 5} and msg.reconsume_times == 0:
            raise RuntimeError("hold the queue once")
        seen.setdefault(body["user"], []).append(body["seq"])

    async def main() -> None:
        consumer = PushConsumer(url, "shipping", fast_settings(suspend_current_queue_time_ms=10))
        consumer.subscribe("orders", "*", listener, orderly=True)
        async with consumer:
            await until(lambda: sum(map(len, seen.values())) == 300, what="every message")
        assert consumer.stats.suspended == 1

    asyncio.run(main())
    assert seen == {user: list(range(30)) for user in range(10)}


def test_lite_pull_polls_every_queue(url: str) -> None:
    with Producer(url) as producer:
        producer.send_batch([Message("orders", {"n": n}) for n in range(100)])
    with LitePullConsumer(url, "lite", consume_from="first") as consumer:
        consumer.subscribe("orders")
        got: list[Any] = []
        deadline = time.monotonic() + 10
        while len(got) < 100 and time.monotonic() < deadline:
            got += consumer.poll(0.5)
        assert sorted(m.value()["n"] for m in got) == list(range(100))
        with Producer(url) as producer:
            producer.send(Message("orders", {"n": 100}), queue_id=5)  # a queue it is not waiting on now
        (late,) = consumer.poll(5)
        assert late.value() == {"n": 100}


def test_a_plain_url_to_a_cluster_node_says_what_to_use(cluster: ClusterGroup) -> None:
    plain = f"redis://127.0.0.1:{cluster.nodes[0].port}/0"
    with Admin(plain) as admin, pytest.raises(BrokerRefusedError, match=r"connect with redis\+cluster://"):
        for topic in ("a", "b", "c", "d", "e", "f"):  # some land on other nodes
            admin.create_topic(topic, queues=1)


def test_a_new_async_client_sends_its_first_command_to_the_right_node(cluster: ClusterGroup) -> None:
    from rmq_style._async._io import open_client

    # redis-py 8 picks a node before reading the slot table: without ClusterClient, about 2 in 3
    # first commands got MOVED (and five MOVED close every connection of the client)
    async def main() -> list[int]:
        redirected = []
        for n in range(12):
            client: Any = open_client(cluster.url)
            await client.execute_command("HGETALL", f"rmq:topic:{{t{n}}}")
            redirected.append(client.reinitialize_counter)
            await client.aclose()
        return redirected

    assert asyncio.run(main()) == [0] * 12


def test_recovery_of_stranded_entries_works_on_a_cluster(cluster: ClusterGroup) -> None:
    from tests.test_push_recovery import (
        test_entries_of_ours_stranded_in_a_queue_that_moved_to_another_member_are_handled as stranded,
    )

    cluster.flush()
    stranded(cluster.url)  # per-queue long polls: the scan runs on the queue's own loop


def test_a_node_killed_and_restarted_under_load_loses_nothing() -> None:
    with ClusterGroup(appendonly=True) as group:
        url = group.url
        with Admin(url) as admin:
            admin.create_topic("orders", queues=QUEUES)
        handled: set[int] = set()

        async def listener(msg: ReceivedMessage) -> None:
            handled.add(msg.value()["n"])

        async def main() -> list[int]:
            consumer = PushConsumer(url, "billing", fast_settings())
            consumer.subscribe("orders", "*", listener)
            sent: list[int] = []
            async with consumer, AsyncProducer(url, retries=10, retry_backoff_ms=50) as producer:
                restart: asyncio.Future[None] | None = None
                for n in range(600):
                    if n == 200:
                        # a node dies while messages flow both ways; AOF (fsync always) brings it back
                        restart = asyncio.ensure_future(asyncio.to_thread(group.restart, group.nodes[0]))
                    await producer.send(Message("orders", {"n": n}))  # retried while its node is down
                    sent.append(n)
                assert restart is not None
                await restart
                await until(lambda: handled >= set(sent), timeout=30, what="every sent message handled")
                await until(lambda: consumer.in_flight == 0, what="acks")
            return sent

        with capture_logs() as events:
            sent = asyncio.run(main())
        assert handled == set(sent) and len(sent) == 600
        felt = {e["event"] for e in events if e["log_level"] == "warning"}
        assert "consumer.redis_unavailable" in felt, felt  # the outage reached the consumer
        # CLUSTERDOWN (every node refuses while a master is away) is an outage, not an error
        assert [e["event"] for e in events if e["log_level"] == "error"] == []
        with Admin(url) as admin:
            assert admin.dead_letters("billing", "orders") == []
            reports = admin.progress("billing", "orders")
            assert sum(r.progress.lag + r.progress.pending for r in reports) == 0


def test_delayed_messages_and_an_expansion_reach_running_push_consumers(url: str) -> None:
    """Releases of several queues (slots) in one round, groups created on new queues of other slots."""
    got: dict[str, list[str]] = {"billing": [], "audit": []}

    def listener(group: str) -> Any:
        async def on(msg: ReceivedMessage) -> None:
            got[group].append(msg.msg_id)

        return on

    async def main() -> list[str]:
        settings = fast_settings(consume_from="last", orderly_lease_ms=1000)
        concurrent = PushConsumer(url, "billing", settings)
        concurrent.subscribe("orders", "*", listener("billing"))
        orderly = PushConsumer(url, "audit", settings)
        orderly.subscribe("orders", "*", listener("audit"), orderly=True)
        async with concurrent, orderly:
            await until(lambda: len(orderly.queues) == QUEUES, what="orderly queues locked")
            async with AsyncAdmin(url) as admin:
                await admin.expand_topic("orders", QUEUES + 4)
            async with AsyncProducer(url) as producer:
                sent = [
                    (await producer.send(Message("orders", {"n": n}), queue_id=n, **delay)).msg_id
                    for n in range(QUEUES + 4)
                    for delay in ({}, {"delay": timedelta(milliseconds=200)})
                ]
            for group in got:
                await until(lambda g=group: len(got[g]) >= len(sent), what=f"{group}: all")  # type: ignore[misc]
            await until(lambda: concurrent.in_flight == 0, what="acks")
        return sent

    with capture_logs():
        sent = asyncio.run(main())
    for group, ids in got.items():
        assert sorted(ids) == sorted(sent), group


def test_message_trace_works_on_a_cluster(url: str) -> None:
    """Trace records live on their queue's slot (docs/trace.md): recorded and read across the nodes."""
    with Producer(url, trace_sample=1.0) as producer:
        sent = producer.send_batch([Message("orders", {"n": n}) for n in range(16)])
    handled: list[int] = []

    async def listener(msg: ReceivedMessage) -> None:
        n = msg.value()["n"]
        if n == 5 and msg.reconsume_times == 0:
            raise RuntimeError("once")
        handled.append(n)

    async def main() -> None:
        consumer = PushConsumer(url, "billing", fast_settings(retry_delays_ms=(10,), retry_poll_ms=20))
        consumer.subscribe("orders", "*", listener)
        async with consumer:
            await until(lambda: len(handled) == 16 and consumer.in_flight == 0, what="all handled and acked")

    asyncio.run(main())
    assert {r.queue.queue_id for r in sent} == set(range(QUEUES))
    with Admin(url) as admin:
        journeys = {
            r.msg_id: [(s.event, s.outcome) for t in admin.trace(r.msg_id) for s in t.steps] for r in sent
        }
    for n, r in enumerate(sent):
        expected = (
            [("pub", "ok"), ("sub", "retry"), ("sub", "ok")] if n == 5 else [("pub", "ok"), ("sub", "ok")]
        )
        assert journeys[r.msg_id] == expected, n
