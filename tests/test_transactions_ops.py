"""Transactional messages from the operators' side: the tx commands, App workers, a cluster, Redis away."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from rmq_style import Admin, HalfMessage, Message, TransactionProducer, TransactionState
from tests.test_transactions import COMMIT, FAST, ROLLBACK, UNKNOWN, make_topic, until, visible


def test_tx_commands_list_show_resume_commit_and_roll_back(fake_url: str) -> None:
    import json

    from typer.testing import CliRunner

    from rmq_style.cli import app

    def invoke(*args: str) -> str:
        result = CliRunner().invoke(app, [*args, "--url", fake_url], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    make_topic(fake_url, queues=2)
    with TransactionProducer(fake_url, "orders-tx", lambda m: UNKNOWN, check_max=1, **FAST) as producer:
        ids = [producer.begin().send(Message("orders", {"n": n}), queue_id=n).msg_id for n in range(2)]
        third = producer.begin().send(Message("orders", {"n": 2}), queue_id=0).msg_id
        listed = json.loads(invoke("tx", "list", "--group", "orders-tx", "--json"))
        assert sorted((r["msg_id"], r["status"], r["checks"]) for r in listed) == sorted(
            [(ids[0], "pending", 0), (ids[1], "pending", 0), (third, "pending", 0)])  # fmt: skip
        view = json.loads(invoke("tx", "progress", "--group", "orders-tx", "--json"))
        assert view["instances"] == {}  # no look yet: no live instance (the half messages wait)
        view = view["queues"]
        assert [(v["queue"], v["pending"], v["max_checks"], v["discarded"]) for v in view] == [
            (0, 2, 0, 0), (1, 1, 0, 0)]  # fmt: skip
        assert "orders-tx" in invoke("tx", "list", "--group", "orders-tx")
        with Admin(fake_url) as admin:  # check_max 1: discarded at the look after the first check
            until(lambda: producer.check_once() and len(admin.discarded_transactions("orders-tx")) == 3)
        # each look was a heartbeat: the producer is a live instance now
        assert list(json.loads(invoke("tx", "progress", "--group", "orders-tx", "--json"))["instances"]) == [
            producer.member]  # fmt: skip
        assert "checking instances" in invoke("tx", "progress", "--group", "orders-tx")
        discarded = json.loads(invoke("tx", "list", "--group", "orders-tx", "--discarded", "--json"))
        assert {r["msg_id"] for r in discarded} == {*ids, third}
        shown = json.loads(invoke("tx", "show", ids[0], "--group", "orders-tx"))
        assert (shown["body"], shown["status"], shown["checks"]) == ({"n": 0}, "discarded", 1)
        assert "queue offset 0" in invoke("tx", "commit", ids[0], "--group", "orders-tx")
        invoke("tx", "rollback", ids[1], "--group", "orders-tx")
        invoke("tx", "resume", third, "--group", "orders-tx")
        listed = json.loads(invoke("tx", "list", "--group", "orders-tx", "--json"))
        assert [(r["msg_id"], r["status"], r["checks"]) for r in listed] == [(third, "pending", 0)]
    assert [v[:2] for v in visible(fake_url)] == [(0, {"n": 0})] and visible(fake_url, 1) == []


@pytest.mark.cluster
@pytest.mark.real_only
def test_a_transaction_on_a_cluster_url() -> None:
    from rmq_style.testing import ClusterGroup

    with ClusterGroup() as cluster:
        url = cluster.url
        make_topic(url, queues=8)  # queues spread over the three nodes
        with TransactionProducer(url, "orders-tx", lambda m: COMMIT, **FAST) as producer:
            committed = [
                producer.send_in_transaction(Message("orders", {"n": q}), lambda m, arg: COMMIT, queue_id=q)
                for q in range(8)
            ]
            rolled = producer.send_in_transaction(Message("orders", 9), lambda m, arg: ROLLBACK, queue_id=3)
            left = producer.begin().send(Message("orders", {"n": 10}), queue_id=5)  # to the check-back
            with Admin(url) as admin:
                assert [r.msg_id for r in admin.pending_transactions("orders-tx")] == [left.msg_id]
                report = producer.check_once()
                assert (report.checked, report.committed) == (1, 1)
                assert admin.pending_transactions("orders-tx") == []
        assert rolled.send_result is None
        assert [c.send_result.queue_offset for c in committed] == [0] * 8  # type: ignore[union-attr]
        assert [v[:2] for v in visible(url, 5)] == [(0, {"n": 5}), (1, {"n": 10})]
        assert [v[:2] for v in visible(url, 3)] == [(0, {"n": 3})]


def test_app_workers_that_declare_a_checker_run_the_check_back(url: str) -> None:
    from rmq_style import App

    make_topic(url)
    app = App(url)
    asked: list[str] = []

    @app.transaction_checker("orders-tx", check_poll_ms=20)
    async def check(message: HalfMessage) -> TransactionState:
        asked.append(message.msg_id)
        return COMMIT

    with TransactionProducer(url, "orders-tx", lambda m: UNKNOWN, **FAST) as producer:  # never checks
        half = producer.begin().send(Message("orders", {"n": 1}))

    async def run_worker() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        worker = asyncio.create_task(app.run(stop, ready=ready))
        await asyncio.wait_for(ready.wait(), 10)
        deadline = time.monotonic() + 10
        while not asked:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        stop.set()
        await worker

    asyncio.run(run_worker())
    assert asked == [half.msg_id]
    until(lambda: [v[:2] for v in visible(url)] == [(0, {"n": 1})])
    with app.transaction_producer("orders-tx") as again:
        assert again.settings.check_poll_ms == 20


@pytest.mark.real_only
def test_redis_away_at_the_end_leaves_the_message_to_the_check_back(private_redis: Any) -> None:
    url = private_redis.url
    make_topic(url)
    options = {**FAST, "retries": 1, "retry_backoff_ms": 10}
    with TransactionProducer(url, "orders-tx", lambda m: COMMIT, **options) as producer:

        def execute(message: HalfMessage, arg: Any) -> TransactionState:
            private_redis.kill()  # the local transaction commits, then Redis is away (AOF: nothing lost)
            return COMMIT

        result = producer.send_in_transaction(Message("orders", {"n": 1}), execute)
        assert (result.state, result.send_result, result.checked) == (COMMIT, None, False)
        private_redis.start()
        until(lambda: producer.check_once().committed == 1)
    assert [v[:2] for v in visible(url)] == [(0, {"n": 1})]


def test_push_consumers_get_committed_messages_like_sent_ones(url: str) -> None:
    from rmq_style import AsyncTransactionProducer, PushConsumer, ReceivedMessage
    from tests.pushkit import create_topic, fast_settings
    from tests.pushkit import until as async_until

    got: list[tuple[Any, int, int]] = []

    async def main() -> None:
        await create_topic(url, queues=2)

        async def listener(msg: ReceivedMessage) -> None:
            got.append((msg.value(), msg.queue_offset, msg.reconsume_times))

        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("orders", "*", listener)
        async with (
            consumer,
            AsyncTransactionProducer(url, "orders-tx", lambda m: COMMIT, **FAST) as producer,
        ):
            for n in range(4):
                decision = COMMIT if n % 2 == 0 else ROLLBACK
                await producer.send_in_transaction(
                    Message("orders", n), lambda m, arg: arg, decision, queue_id=0
                )
            tx = await producer.begin()
            await tx.send(Message("orders", 4), queue_id=1)  # left to the check-back
            assert (await producer.check_once()).committed == 1
            await async_until(lambda: len(got) == 3, what="three committed messages")

    asyncio.run(main())
    assert sorted(got) == [(0, 0, 0), (2, 1, 0), (4, 0, 0)]
