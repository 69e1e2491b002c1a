"""Broadcasting push consumers (message_model="broadcasting"), on real Redis and fakeredis.

Three members of one group: each gets every message once; a restarted member
resumes from its stored position; a failing message is retried by that member
alone, then dead-lettered for it (the dead letter names the member); progress
shows each member's position and lag; delayed messages reach every member.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from rmq_style import AsyncAdmin, Message, PushConsumer, ReceivedMessage, UsageError
from rmq_style._async._io import open_client
from rmq_style._names import Keys
from tests.pushkit import create_topic, fast_settings, send, until

MEMBERS = ("m-a", "m-b", "m-c")


def member(
    url: str, name: str, seen: Counter[str], fail: set[str] = frozenset(), **options: Any
) -> PushConsumer:  # type: ignore[assignment]
    settings = fast_settings(
        message_model="broadcasting", instance_name=name, max_reconsume_times=2, **options
    )
    consumer = PushConsumer(url, "bc", settings)

    async def on_message(msg: ReceivedMessage) -> None:
        seen[msg.msg_id] += 1
        if msg.value()["n"] in fail:
            raise RuntimeError(f"planned failure of {msg.value()['n']}")

    consumer.subscribe("orders", "*", on_message)
    return consumer


async def lags(url: str) -> dict[str, int]:
    """Each member's lag over the queues of the topic, as progress shows it."""
    async with AsyncAdmin(url) as admin:
        rows = await admin.progress("bc", "orders")
    out: Counter[str] = Counter()
    for row in rows:
        for m in row.members:
            out[m.instance] += m.lag
    return dict(out)


async def until_lags(url: str, want: dict[str, int]) -> None:
    """Positions are committed every heartbeat: poll progress until it shows *want* (bounded)."""
    for _ in range(200):
        if await lags(url) == want:
            return
        await asyncio.sleep(0.02)
    assert await lags(url) == want


def test_every_member_gets_every_message_once(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=3)
        seen = {name: Counter[str]() for name in MEMBERS}
        consumers = [member(url, name, seen[name]) for name in MEMBERS]
        for c in consumers:
            await c.start()
        ids = await send(url, [Message("orders", {"n": str(i)}) for i in range(30)])
        for name in MEMBERS:
            await until(lambda name=name: len(seen[name]) == 30, what=f"{name} got all")
        await asyncio.sleep(0.2)  # a duplicate would show up by now
        for name in MEMBERS:
            assert seen[name] == Counter(dict.fromkeys(ids, 1)), name
        for c in consumers:
            assert c.stats.consumed == 30
            await c.stop()
        async with AsyncAdmin(url) as admin:
            rows = await admin.progress("bc", "orders")
        for row in rows:
            assert sorted(m.instance for m in row.members) == list(MEMBERS)
            assert all(m.lag == 0 for m in row.members)

    asyncio.run(main())


def test_a_restarted_member_resumes_from_its_position(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=2)
        seen_a, seen_b = Counter[str](), Counter[str]()
        a, b = member(url, "m-a", seen_a), member(url, "m-b", seen_b)
        await a.start()
        await b.start()
        first = await send(url, [Message("orders", {"n": str(i)}) for i in range(10)])
        await until(lambda: len(seen_a) == 10 and len(seen_b) == 10)
        await b.stop()
        second = await send(url, [Message("orders", {"n": str(i)}) for i in range(10, 20)])
        await until(lambda: len(seen_a) == 20)
        await until_lags(url, {"m-a": 0, "m-b": 10})
        b2 = member(url, "m-b", seen_b)  # the same instance name: its positions
        await b2.start()
        await until(lambda: len(seen_b) == 20, what="the restarted member got the rest")
        await asyncio.sleep(0.2)
        assert seen_b == Counter(dict.fromkeys(first + second, 1))  # stopped cleanly: no duplicate
        await a.stop()
        await b2.stop()

    asyncio.run(main())


def test_a_failing_message_is_retried_then_dead_lettered_for_that_member_only(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=2)
        seen = {name: Counter[str]() for name in MEMBERS}
        fails = {"m-a": {"bad"}, "m-b": set(), "m-c": set()}
        consumers = [member(url, n, seen[n], fails[n]) for n in MEMBERS]  # type: ignore[arg-type]
        for c in consumers:
            await c.start()
        with capture_logs() as events:
            (bad,) = await send(url, [Message("orders", {"n": "bad"})])
            await until(lambda: consumers[0].stats.dead_lettered == 1, what="dead letter of m-a")
        assert seen["m-a"][bad] == 3  # max_reconsume_times=2: 3 deliveries, all at m-a
        assert seen["m-b"][bad] == seen["m-c"][bad] == 1
        assert consumers[0].stats.retried == 2
        assert [c.stats.dead_lettered for c in consumers] == [1, 0, 0]
        dead = [e for e in events if e["event"] == "message.dead_lettered"]
        assert len(dead) == 1
        async with AsyncAdmin(url) as admin:
            (record,) = await admin.dead_letters("bc")
            assert (record.message.msg_id, record.member) == (bad, "m-a")
            assert record.message.reconsume_times == 2
            fails["m-a"].clear()
            assert await admin.replay_dead_letters("bc", [record]) == 1
            await until(lambda: seen["m-a"][bad] == 4, what="the replay reached m-a")
            assert await admin.dead_letters("bc") == []
        await asyncio.sleep(0.2)
        assert seen["m-b"][bad] == seen["m-c"][bad] == 1  # the replay went to m-a alone
        for c in consumers:
            await c.stop()

    asyncio.run(main())


def test_delayed_messages_reach_every_member_when_due(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        seen = {name: Counter[str]() for name in MEMBERS}
        consumers = [member(url, n, seen[n]) for n in MEMBERS]
        for c in consumers:
            await c.start()
        (msg_id,) = await send(url, [Message("orders", {"n": "later"})], delay=timedelta(milliseconds=300))
        await asyncio.sleep(0.1)
        assert all(not s for s in seen.values())  # not before it is due
        for n in MEMBERS:
            await until(lambda n=n: seen[n][msg_id] == 1, what=f"{n} got the delayed message")
        for c in consumers:
            await c.stop()

    asyncio.run(main())


def test_instance_names_are_checked_and_not_shared_in_one_process(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        with pytest.raises(Exception, match="instance name"):
            fast_settings(message_model="broadcasting", instance_name="a:b")
        a, again = member(url, "m-a", Counter()), member(url, "m-a", Counter())
        await a.start()
        with pytest.raises(UsageError, match="own instance_name"):
            await again.start()
        await a.stop()
        orderly = PushConsumer(
            url,
            "bc",
            fast_settings(message_model="broadcasting", instance_name="o", consume_message_batch_max_size=2),
        )
        orderly.subscribe("orders", "*", lambda m: None, orderly=True)
        with pytest.raises(UsageError, match="one message at a time"):
            await orderly.start()
        deduped = PushConsumer(url, "bc", fast_settings(message_model="broadcasting", instance_name="d"))
        deduped.subscribe("orders", "*", lambda m: None, idempotent=True)
        with pytest.raises(UsageError, match="idempotent"):
            await deduped.start()

    asyncio.run(main())


def test_positions_are_stored_under_the_instance_name(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        seen: Counter[str] = Counter()
        a = member(url, "m-a", seen)
        await a.start()
        await send(url, [Message("orders", {"n": "1"})])
        await until(lambda: len(seen) == 1)
        await a.stop()
        client = open_client(url)
        stored = await client.hgetall(Keys().queue("orders", 0).broadcast("bc"))
        (last,) = await client.xrevrange(Keys().queue("orders", 0).stream, count=1)
        await client.aclose()
        assert stored == {b"m-a": last[0]}

    asyncio.run(main())


def test_app_handlers_can_broadcast(url: str) -> None:
    from rmq_style import App
    from rmq_style.testing import AppTester

    app = App(url, auto_create_topics=True)
    seen: list[tuple[str, str]] = []

    @app.subscribe("news", group="screens", message_model="broadcasting", instance_name="screen-1")
    def show(item: dict[str, str], msg: ReceivedMessage) -> None:
        seen.append((item["title"], msg.topic))

    with AppTester(app) as tester:
        tester.send("news", {"title": "hello"})
        tester.drain()
        assert app.consumers["screens"].instance_name == "screen-1"
    assert seen == [("hello", "news")]


@pytest.mark.real_only
def test_a_member_killed_mid_way_resumes_without_loss(private_redis: Any) -> None:
    """SIGKILL: the restarted member (same instance name) handles the rest; duplicates are bounded
    by what it handled since its last commit (a heartbeat, 100 ms here) plus what was in flight."""
    import signal

    import redis

    from tests.pushkit import spawn_worker

    url = private_redis.url
    asyncio.run(create_topic(url, queues=2))
    control = redis.Redis.from_url(url)
    first, words = spawn_worker("tests.push_worker", url, "bc", "10", "m-k")  # consume_from first
    assert words == ["ready"]
    try:
        ids = set(asyncio.run(send(url, [Message("orders", {"n": str(i)}) for i in range(300)])))
        asyncio.run(until(lambda: control.scard("test:handled") >= 60, what="the first run under way"))
        first.send_signal(signal.SIGKILL)
        first.wait()
        before = control.scard("test:handled")
        assert before < 300
        second, _ = spawn_worker("tests.push_worker", url, "bc", "1", "m-k")
        try:
            asyncio.run(until(lambda: control.scard("test:handled") == 300, timeout=30, what="all handled"))
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(10)
        assert {m.decode() for m in control.smembers("test:handled")} == ids  # no loss
        counts = {k.decode(): int(v) for k, v in control.hgetall("test:counts").items()}
        duplicates = sum(counts.values()) - 300
        # 10 ms handlers, concurrency 8: at most ~80 settled per 100 ms commit interval, plus 8 running
        assert duplicates <= 100, duplicates
    finally:
        if first.poll() is None:
            first.kill()
        control.close()


def test_orderly_broadcasting_keeps_queue_order_per_member(url: str) -> None:
    """Each member handles each queue in offset order; a failure holds that member's queue only."""

    async def main() -> None:
        await create_topic(url, queues=2)
        calls: dict[str, list[tuple[int, int, int]]] = {n: [] for n in MEMBERS}  # (queue, n, reconsume)
        plans = {"m-a": {"3": 1, "7": 9}, "m-b": {}, "m-c": {"4": 2}}  # n -> failures planned
        consumers = []
        for name in MEMBERS:
            settings = fast_settings(
                message_model="broadcasting", instance_name=name, max_reconsume_times=2,
                suspend_current_queue_time_ms=10, concurrency=4,
            )  # fmt: skip
            consumer = PushConsumer(url, "bc", settings)

            async def on(msg: ReceivedMessage, name: str = name) -> None:
                n = msg.value()["n"]
                calls[name].append((msg.queue_id, int(n), msg.reconsume_times))
                await asyncio.sleep(0.002)
                if msg.reconsume_times < plans[name].get(n, 0):
                    raise RuntimeError("planned")

            consumer.subscribe("orders", "*", on, orderly=True)
            consumers.append(consumer)
            await consumer.start()
        for i in range(12):
            await send(url, [Message("orders", {"n": str(i)})], sharding_key=f"k{i % 2}")
        for c in consumers:
            await until(lambda c=c: c.stats.consumed + c.stats.dead_lettered == 12, what="all settled")
        for name in MEMBERS:
            for q in (0, 1):
                ns = [n for queue, n, _ in calls[name] if queue == q]
                assert ns == sorted(ns), (name, q, ns)  # offset order, a retry right after its failure
        assert [(n, r) for _, n, r in calls["m-a"] if n in (3, 7)] == [(3, 0), (3, 1), (7, 0), (7, 1), (7, 2)]
        assert [(n, r) for _, n, r in calls["m-c"] if n == 4] == [(4, 0), (4, 1), (4, 2)]
        assert [c.stats.dead_lettered for c in consumers] == [1, 0, 0]
        assert [c.stats.suspended for c in consumers] == [3, 0, 2]
        async with AsyncAdmin(url) as admin:
            (record,) = await admin.dead_letters("bc")
        assert (record.member, record.message.value()["n"], record.message.reconsume_times) == ("m-a", "7", 2)
        for c in consumers:
            await c.stop()

    asyncio.run(main())


def test_metrics_and_the_console_show_each_members_lag(url: str) -> None:
    from prometheus_client import CollectorRegistry

    from rmq_style.metrics import ProgressCollector

    async def main() -> None:
        await create_topic(url, queues=1)
        a = member(url, "m-a", Counter())
        await a.start()
        await a.stop()
        await send(url, [Message("orders", {"n": "1"})] * 2)

    asyncio.run(main())
    from rmq_style import Admin
    from rmq_style.console._rates import RateRing
    from rmq_style.console._views import group_summary

    with Admin(url) as admin:
        summary = group_summary("bc", admin.progress("bc"), RateRing())
    assert (summary.lag, summary.owners) == (2, ["m-a"])  # the console's group list: the members' lag
    registry = CollectorRegistry()
    registry.register(ProgressCollector(url, ["bc"]))
    labels = {"group": "bc", "topic": "orders", "queue": "0", "member": "m-a"}
    assert registry.get_sample_value("rmq_member_lag", labels) == 2
    assert (
        registry.get_sample_value("rmq_group_lag", {k: v for k, v in labels.items() if k != "member"}) is None
    )


def test_a_retry_record_redis_refuses_holds_the_position_until_it_is_written(url: str) -> None:
    """No pending list to fall back on: a member whose retry write fails keeps the message in flight
    (its position stays before it) and writes it again, so nothing is lost."""

    async def main() -> None:
        await create_topic(url, queues=1)
        seen: Counter[str] = Counter()
        qk = Keys().queue("orders", 0)
        client = open_client(url)
        await client.set(qk.member_retry("bc", "m-a"), "not a sorted set")
        a = member(url, "m-a", seen, {"bad"}, reconnect_backoff_max_ms=50)
        await a.start()
        with capture_logs() as events:
            (bad,) = await send(url, [Message("orders", {"n": "bad"})])
            await until(lambda: any(e["event"] == "message.settle_failed" for e in events), what="refused")
        await asyncio.sleep(0.3)  # several heartbeats: the position must not pass the message
        ((entry_id, _),) = await client.xrange(qk.stream)
        assert await client.hget(qk.broadcast("bc"), "m-a") != entry_id
        assert a.in_flight == 1
        await client.delete(qk.member_retry("bc", "m-a"))
        await until(lambda: a.stats.dead_lettered == 1, what="retried, then dead-lettered")
        assert seen[bad] == 3
        await until_lags(url, {"m-a": 0})
        await a.stop()
        await client.aclose()

    asyncio.run(main())


def test_the_default_instance_name_is_the_host_and_the_worker_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    from rmq_style.push.broadcast_positions import WORKER_SLOT_ENV, default_member_name

    monkeypatch.delenv(WORKER_SLOT_ENV, raising=False)
    host, why = default_member_name()
    assert why is not None  # outside rmq-style worker: two processes on a host would share it
    monkeypatch.setenv(WORKER_SLOT_ENV, "2")
    name, _ = default_member_name()
    assert name == f"{host}-w2"


@pytest.mark.real_only
def test_worker_processes_are_members_named_by_their_slot(real_url: str) -> None:
    """`rmq-style worker --processes 2` of a broadcasting App: each process is a member named
    host-w0 and host-w1 (stable across its restarts) and consumes every message."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from rmq_style import Admin, Producer
    from rmq_style.push.broadcast_positions import WORKER_SLOT_ENV, default_member_name
    from tests.pushkit import ROOT

    with Admin(real_url) as admin:
        admin.create_topic("news", queues=2)
    with Producer(real_url) as producer:
        producer.send_batch([Message("news", {"n": n}) for n in range(50)])
    env = {k: v for k, v in os.environ.items() if k != WORKER_SLOT_ENV}
    env |= {"PYTHONPATH": str(ROOT), "RMQ_URL": real_url}
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "rmq_style.cli", "worker", "tests.apps.screens:app", "--processes", "2"],
        cwd=ROOT, env=env, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    host = default_member_name()[0].removesuffix("-w" + os.environ.get(WORKER_SLOT_ENV, "x"))
    want = {f"{host}-w0": 0, f"{host}-w1": 0}
    try:
        deadline = time.monotonic() + 30
        while True:
            with Admin(real_url) as admin:
                rows = admin.progress("screens", "news")
            got = {m.instance: 0 for r in rows for m in r.members}
            for r in rows:
                for m in r.members:
                    got[m.instance] += m.lag
            if got == want and sum(r.progress.max_queue_offset for r in rows) == 50:
                break
            assert time.monotonic() < deadline, got
            time.sleep(0.05)
    finally:
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0


def test_reset_offset_moves_every_stopped_members_position(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=2)
        seen = {n: Counter[str]() for n in MEMBERS[:2]}
        members = [member(url, n, seen[n]) for n in seen]
        for m in members:
            await m.start()
        ids = await send(url, [Message("orders", {"n": str(i)}) for i in range(6)])
        for got in seen.values():
            await until(lambda got=got: len(got) == 6)
        for m in members:
            await m.stop()
        async with AsyncAdmin(url) as admin:
            await admin.reset_offset("bc", "orders", "first")
            rows = await admin.progress("bc", "orders")
            assert rows[0].progress.group_offset is None  # no clustering group was made
        assert await lags(url) == {"m-a": 6, "m-b": 6}
        again = [member(url, n, seen[n]) for n in seen]
        for m in again:
            await m.start()
        for got in seen.values():
            await until(lambda got=got: got == Counter(dict.fromkeys(ids, 2)), what="all read again")
        for m in again:
            await m.stop()

    asyncio.run(main())
