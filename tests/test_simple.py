"""SimpleConsumer (RocketMQ 5): receive, ack, change invisible duration, on real Redis and fakeredis.

Invisible durations are short here (the 10 s minimum is lowered by the private
``_min_invisible_s``); every wait is a receive's bounded long poll.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from rmq_style import (
    Admin,
    InvalidReceiptHandleError,
    Keys,
    Message,
    Producer,
    PushConsumer,
    SimpleConsumer,
    StaleReceiptHandleError,
    SubscriptionConflictError,
    UsageError,
)
from rmq_style.testing import RedisServer
from tests.pushkit import fast_settings, until

FAST = {"consume_from": "first", "await_duration": 0.05, "_min_invisible_s": 0.01}


def setup(
    url: str, topic: str = "jobs", queues: int = 2, bodies: list[str] | None = None, **send: Any
) -> None:
    with Admin(url) as admin:
        admin.create_topic(topic, queues=queues)
    if bodies:
        with Producer(url) as producer:
            for body in bodies:
                producer.send(Message(topic, body, **send))


def end_leases(url: str, topic: str, queues: int, group: str) -> None:
    """Fast-forward: every lease of *group* in *topic* ended (its visible-again time becomes 0)."""

    async def run() -> None:
        from rmq_style._async._io import open_client

        client = open_client(url)
        for q in range(queues):
            key = Keys().queue(topic, q).invisible(group)
            leased = await client.zrange(key, 0, -1)
            if leased:
                await client.zadd(key, dict.fromkeys(leased, 0))
        await client.aclose()

    asyncio.run(run())


def receive_all(consumer: Any, n: int, invisible: float, timeout: float = 5.0) -> list[Any]:
    """Receive until *n* messages came (bounded)."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        assert time.monotonic() < deadline, f"received {len(got)} of {n}"
        got += consumer.receive(32, invisible)
    return got


def test_receive_ack_on_both_fronts(url: str, front: Any) -> None:
    setup(url, bodies=[f"m{i}" for i in range(5)])
    with front.SimpleConsumer(url, "workers", {"jobs": "*"}, **FAST) as consumer:
        got = receive_all(consumer, 5, 30)
        assert sorted(m.value() for m in got) == [f"m{i}" for i in range(5)]
        assert {m.delivery_attempt for m in got} == {1} and {m.reconsume_times for m in got} == {0}
        assert len({m.receipt_handle for m in got}) == 5
        for m in got:
            consumer.ack(m)
        assert consumer.receive(32, 30) == []
        with pytest.raises(StaleReceiptHandleError, match="no longer in flight"):
            consumer.ack(got[0])  # a second ack is refused, never silently accepted
    client = redis.Redis.from_url(url) if not url.startswith("memory") else None
    if client is not None:
        qk = Keys().queue("jobs", 0)
        assert client.xpending(qk.stream, "workers")["pending"] == 0
        assert client.zcard(qk.invisible("workers")) == 0 and client.hlen(qk.receipts("workers")) == 0
        client.close()


def test_batch_limit_and_durations_are_checked(url: str) -> None:
    setup(url)
    with SimpleConsumer(url, "workers", {"jobs": "*"}, await_duration=0) as consumer:
        for bad in (0, 33, True, 2.0):
            with pytest.raises(UsageError, match="max_messages"):
                consumer.receive(bad, 30)
        for bad_s in (9.9, 12 * 3600 + 1, "30"):
            with pytest.raises(UsageError, match="invisible_duration"):
                consumer.receive(1, bad_s)
        assert consumer.receive(32, 10) == [] and consumer.receive(1, 12 * 3600) == []
        with pytest.raises(InvalidReceiptHandleError):
            consumer.ack("1:jobs:0:s:1-0:zz")
        with pytest.raises(ValidationError, match="await_duration"):
            SimpleConsumer(url, "workers", {"jobs": "*"}, await_duration=21)


def test_expiry_redelivers_with_attempt_counted_and_durations_coexist(url: str) -> None:
    setup(url, queues=1, bodies=["long", "short"])
    with SimpleConsumer(url, "workers", {"jobs": "*"}, **FAST) as consumer:
        (long,) = consumer.receive(1, 30)
        (short,) = consumer.receive(1, 0.2)
        assert (short.value(), long.value()) == ("short", "long")
        again = receive_all(consumer, 1, 0.2)  # the short lease ends; the long one does not
        assert [(m.value(), m.delivery_attempt, m.offset) for m in again] == [("short", 2, short.offset)]
        with pytest.raises(StaleReceiptHandleError, match="received again"):
            consumer.ack(short)  # the first delivery's handle
        third = receive_all(consumer, 1, 30)
        assert [(m.value(), m.delivery_attempt) for m in third] == [("short", 3)]
        consumer.ack(third[0])
        consumer.ack(long)
        assert consumer.receive(32, 30) == []


def test_change_invisible_duration_renews_under_a_new_handle(url: str, front: Any) -> None:
    setup(url, queues=1, bodies=["a"])
    with front.SimpleConsumer(url, "workers", {"jobs": "*"}, **FAST) as consumer:
        (m,) = receive_all(consumer, 1, 30)
        first = m.receipt_handle
        second = consumer.change_invisible_duration(m, 30)
        assert second != first and m.receipt_handle == second and m.invisible_until.year >= 2024
        with pytest.raises(StaleReceiptHandleError, match="newest receipt handle"):
            consumer.change_invisible_duration(first, 30)  # the old one: refused, not taken
        with pytest.raises(StaleReceiptHandleError, match="newest receipt handle"):
            consumer.ack(first)
        third = consumer.change_invisible_duration(second, 30)  # the handle text works too
        with pytest.raises(StaleReceiptHandleError):
            consumer.ack(second)
        assert consumer.receive(1, 30) == []  # still invisible
        with pytest.raises(StaleReceiptHandleError):
            consumer.ack(m)  # a change by the text does not update the message object: its handle is old
        consumer.change_invisible_duration(third, 0)  # visible again now: RocketMQ's "retry at once"
        again = receive_all(consumer, 1, 30)
        assert again[0].delivery_attempt == 2
        with pytest.raises(StaleReceiptHandleError):
            consumer.ack(third)
        consumer.ack(again[0])


def test_an_ended_lease_not_yet_taken_again(url: str) -> None:
    """Ack after the end: accepted while nobody received it again; a change: refused."""
    setup(url, queues=1, bodies=["a", "b"])
    with SimpleConsumer(url, "workers", {"jobs": "*"}, **FAST) as consumer:
        a, b = receive_all(consumer, 2, 30)
        end_leases(url, "jobs", 1, "workers")
        with pytest.raises(StaleReceiptHandleError, match="invisible duration ended"):
            consumer.change_invisible_duration(a, 30)
        consumer.ack(b)  # the work is done: a redelivery would only repeat it
        again = receive_all(consumer, 1, 30)
        assert [(m.value(), m.delivery_attempt) for m in again] == [("a", 2)]
        consumer.ack(again[0])


def test_in_flight_for_one_consumer_is_not_given_to_another(url: str) -> None:
    setup(url, queues=2, bodies=[f"m{i}" for i in range(6)])
    with (
        SimpleConsumer(url, "workers", {"jobs": "*"}, **FAST) as one,
        SimpleConsumer(url, "workers", {"jobs": "*"}, **FAST) as two,
    ):
        got = receive_all(one, 6, 30)
        assert two.receive(32, 30) == []
        end_leases(url, "jobs", 2, "workers")
        taken = receive_all(two, 6, 30)  # after the lease ended: the other consumer gets them
        assert sorted(m.value() for m in taken) == sorted(m.value() for m in got)
        assert {m.delivery_attempt for m in taken} == {2}
        for m in got:
            with pytest.raises(StaleReceiptHandleError):
                one.ack(m)
        for m in taken:
            two.ack(m)


def test_dead_letter_at_receive_after_max_attempts(url: str) -> None:
    setup(url, queues=1, bodies=["poison"], tag="t", keys=["k1"])
    with SimpleConsumer(url, "workers", {"jobs": "*"}, max_attempts=3, **FAST) as consumer:
        attempts = [receive_all(consumer, 1, 0.05)[0].delivery_attempt for _ in range(3)]
        assert attempts == [1, 2, 3]
        deadline = time.monotonic() + 5
        while True:  # the third lease ends: the next receive dead-letters instead of handing it out
            assert consumer.receive(32, 30) == []
            with Admin(url) as admin:
                dead = admin.dead_letters("workers", "jobs")
            if dead or time.monotonic() > deadline:
                break
    (letter,) = dead
    assert letter.message.value() == "poison" and letter.message.tag == "t" and letter.message.keys == ("k1",)
    assert "not acknowledged after 3 delivery attempts (max attempts 3)" in letter.reason
    assert letter.message.reconsume_times == 2


def test_only_matching_tags_are_received_and_delayed_ones_come_when_due(url: str) -> None:
    setup(url, queues=1)
    with Producer(url) as producer:
        producer.send(Message("jobs", "x", tag="skip"))
        producer.send(Message("jobs", "y", tag="take"))
        producer.send(Message("jobs", "later", tag="take"), delay=timedelta(milliseconds=200))
    with SimpleConsumer(url, "workers", {"jobs": "take"}, **FAST) as consumer:
        got = receive_all(consumer, 2, 30)  # the delayed one is released by receive (server clock)
        assert [m.value() for m in got] == ["y", "later"]
        for m in got:
            consumer.ack(m)
    if not url.startswith("memory"):
        client = redis.Redis.from_url(url)
        assert client.xpending(Keys().queue("jobs", 0).stream, "workers")["pending"] == 0
        client.close()


def test_replayed_dead_letter_reaches_the_simple_consumer(url: str) -> None:
    setup(url, queues=1, bodies=["again"])
    with SimpleConsumer(url, "workers", {"jobs": "*"}, max_attempts=1, **FAST) as consumer:
        receive_all(consumer, 1, 0.05)
        deadline = time.monotonic() + 5
        with Admin(url) as admin:
            while not admin.dead_letters("workers", "jobs"):
                assert time.monotonic() < deadline
                consumer.receive(32, 30)
            assert admin.replay_dead_letters("workers", admin.dead_letters("workers", "jobs")) == 1
        (m,) = receive_all(consumer, 1, 30)
        assert (m.value(), m.delivery_attempt, m.handle.source) == ("again", 1, "r")
        consumer.ack(m)
        assert consumer.receive(32, 30) == []


def test_simple_and_push_consumers_share_a_group(url: str) -> None:
    setup(url, topic="orders", queues=4, bodies=[f"m{i}" for i in range(40)])
    pushed: list[str] = []

    async def run() -> list[str]:
        from rmq_style import AsyncSimpleConsumer

        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("orders", "*", lambda m: pushed.append(m.value()))
        simple: list[str] = []
        async with AsyncSimpleConsumer(url, "billing", {"orders": "*"}, **FAST) as receiver:
            (held,) = await receiver.receive(1, 30)  # before the push consumer starts
            simple.append(held.value())
            async with consumer:
                deadline = time.monotonic() + 10
                while len(pushed) + len(simple) < 40:
                    assert time.monotonic() < deadline
                    for m in await receiver.receive(32, 30):
                        simple.append(m.value())
                        await receiver.ack(m)
                await until(lambda: consumer.in_flight == 0, what="push settled")
                # rebalances run every 100 ms: the push member never adopts the leased entry
                await asyncio.sleep(0.5)
                assert held.value() not in pushed
            await receiver.ack(held)
        return simple

    simple = asyncio.run(run())
    assert sorted(pushed + simple) == sorted(f"m{i}" for i in range(40))  # each once, in one group


@pytest.mark.parametrize(
    ("orderly", "expression", "refused"),
    [(True, "*", "live orderly members"), (False, "paid", "live concurrent members"), (False, "*", None)],
)
def test_simple_shares_a_group_only_with_concurrent_members_of_its_expression(
    url: str, orderly: bool, expression: str, refused: str | None
) -> None:
    setup(url, topic="orders", queues=1)

    async def run() -> None:
        from rmq_style import AsyncSimpleConsumer

        consumer = PushConsumer(url, "ledger", fast_settings())
        consumer.subscribe("orders", expression, lambda m: None, orderly=orderly)
        async with consumer, AsyncSimpleConsumer(url, "ledger", {"orders": "*"}, **FAST) as receiver:
            if refused is None:
                assert await receiver.receive(1, 30) == []
                return
            with pytest.raises(SubscriptionConflictError, match=refused):
                await receiver.receive(1, 30)

    asyncio.run(run())


_WORKER = """
import sys
from rmq_style import SimpleConsumer
consumer = SimpleConsumer(sys.argv[1], "workers", {"jobs": "*"}, consume_from="first", await_duration=1)
got = []
while len(got) < 4:
    got += consumer.receive(32, 10)
print("received", len(got), flush=True)
sys.stdin.read()
"""


def test_a_killed_receivers_messages_come_back_after_their_invisibility(redis_server: RedisServer) -> None:
    url = redis_server.url
    redis.Redis.from_url(url).flushall()
    setup(url, bodies=[f"m{i}" for i in range(4)])
    proc = subprocess.Popen(
        [sys.executable, "-c", _WORKER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().split() == ["received", "4"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
    with SimpleConsumer(url, "workers", {"jobs": "*"}, await_duration=1) as consumer:
        assert consumer.receive(32, 10) == []  # invisible for 10 s: nobody else gets them before
        end_leases(url, "jobs", 2, "workers")  # fast-forward: the dead receiver's leases end now
        back = receive_all(consumer, 4, 10)
        assert sorted(m.value() for m in back) == [f"m{i}" for i in range(4)]
        assert {m.delivery_attempt for m in back} == {2}
        for m in back:
            consumer.ack(m)


@pytest.mark.cluster
@pytest.mark.real_only
def test_simple_consumer_on_a_cluster() -> None:
    """Every script runs on one queue's slot; the long poll waits on the queues in turn."""
    from rmq_style.testing import ClusterGroup

    with ClusterGroup() as cluster:
        url = cluster.url
        setup(url, queues=8, bodies=[f"m{i}" for i in range(20)])
        with SimpleConsumer(url, "workers", {"jobs": "*"}, **{**FAST, "await_duration": 0.3}) as consumer:
            got = receive_all(consumer, 20, 0.3)
            assert sorted(m.value() for m in got) == sorted(f"m{i}" for i in range(20))
            renewed = consumer.change_invisible_duration(got[0], 30)
            for m in got[1:]:
                consumer.ack(m)
            started = time.monotonic()
            assert consumer.receive(32, 30) == []  # the long poll: nothing until await_duration
            assert time.monotonic() - started >= 0.25
            consumer.ack(renewed)


def test_the_long_poll_wakes_for_a_new_message_and_an_ended_lease(url: str) -> None:
    import threading

    setup(url, queues=2)
    options = {**FAST, "await_duration": 10}
    with SimpleConsumer(url, "workers", {"jobs": "*"}, **options) as consumer:

        def send() -> None:
            with Producer(url) as producer:
                producer.send(Message("jobs", "new"))

        sender = threading.Timer(0.1, send)
        sender.start()
        started = time.monotonic()
        (m,) = consumer.receive(32, 0.3)
        sender.join()
        assert m.value() == "new" and time.monotonic() - started < 5  # not the whole await_duration
        started = time.monotonic()
        (again,) = consumer.receive(32, 30)  # wakes when the 0.3 s lease ends, with no new entry
        assert (again.value(), again.delivery_attempt) == ("new", 2) and time.monotonic() - started < 5
        consumer.ack(again)


def test_a_group_lost_on_the_queue_is_created_again(url: str) -> None:
    """NOGROUP (a server restarted without persistence, a group destroyed): logged, created, no crash."""
    from structlog.testing import capture_logs

    setup(url, queues=1, bodies=["before"])
    with SimpleConsumer(url, "workers", {"jobs": "*"}, **FAST) as consumer:
        (m,) = receive_all(consumer, 1, 30)
        consumer.ack(m)
        assert "delivery_attempt=1" in repr(m) and repr(m).startswith("SimpleMessage(msg_id=")

        async def destroy() -> None:
            from rmq_style._async._io import open_client

            client = open_client(url)
            await client.xgroup_destroy(Keys().queue("jobs", 0).stream, "workers")
            await client.aclose()

        asyncio.run(destroy())
        with capture_logs() as logs:
            again = receive_all(consumer, 1, 30)  # consume_from "first": the queue from its start
        assert [x.value() for x in again] == ["before"]
        assert [e["event"] for e in logs if e["event"].startswith("simple.")] == ["simple.group_recreated"]
