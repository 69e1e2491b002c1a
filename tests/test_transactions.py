"""Transactional messages: half store, commit/rollback, check-back, discard and resume, on both backends."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from rmq_style import (
    Admin,
    AsyncAdmin,
    AsyncTransactionProducer,
    HalfMessage,
    Message,
    MessageQueue,
    Producer,
    PullConsumer,
    TransactionProducer,
    TransactionState,
    TransactionStateError,
    UsageError,
)
from rmq_style._names import Keys
from rmq_style._sync._io import open_client

COMMIT, ROLLBACK, UNKNOWN = TransactionState.COMMIT, TransactionState.ROLLBACK, TransactionState.UNKNOWN
# checks due at once and again 1 ms later; the background loop off: tests call check_once
FAST: dict[str, Any] = {"transaction_timeout_ms": 0, "check_interval_ms": 1, "check_in_background": False}


def visible(url: str, queue: int = 0) -> list[tuple[int, Any, str]]:
    """(queue offset, body, msg id) of every message in queue *queue* of orders."""
    with PullConsumer(url, "reader") as consumer:
        found = consumer.pull(MessageQueue("orders", queue), "0-0", max_nums=100)
    return [(m.queue_offset, m.value(), m.msg_id) for m in found.messages]


def make_topic(url: str, queues: int = 1) -> None:
    with Admin(url) as admin:
        admin.create_topic("orders", queues=queues)


def until(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_commit_is_visible_once_with_the_offset_taken_at_commit(url: str) -> None:
    make_topic(url)
    with TransactionProducer(url, "orders-tx", lambda m: UNKNOWN, **FAST) as producer:
        tx = producer.begin()
        half = tx.send(Message("orders", {"n": 1}, keys=["o-1"]))
        assert visible(url) == []  # a half message is seen by no consumer
        with Producer(url) as plain:  # a plain send meanwhile takes queue offset 0
            plain.send(Message("orders", {"n": 0}))
        sent = tx.commit()
        assert (sent.msg_id, sent.queue_offset) == (half.msg_id, 1)
        assert tx.commit() == sent  # idempotent: the same entry, written once
        done = producer.send_in_transaction(Message("orders", {"n": 2}), lambda m, arg: arg, COMMIT)
        assert done.state is COMMIT and done.send_result is not None and done.send_result.queue_offset == 2
    assert visible(url) == [(0, {"n": 0}, visible(url)[0][2]), (1, {"n": 1}, half.msg_id),
                            (2, {"n": 2}, done.msg_id)]  # fmt: skip


def test_rollback_is_never_visible(url: str) -> None:
    make_topic(url)
    with TransactionProducer(url, "orders-tx", lambda m: COMMIT, **FAST) as producer:
        result = producer.send_in_transaction(Message("orders", {"n": 1}), lambda m, arg: ROLLBACK)
        assert result.state is ROLLBACK and result.send_result is None
        tx = producer.begin()
        tx.send(Message("orders", {"n": 2}))
        tx.rollback()
        tx.rollback()  # idempotent
        with pytest.raises(TransactionStateError) as refused:
            tx.commit()
        assert refused.value.code == "TXROLLEDBACK"
        # a rolled-back message is not checked either: the checker (COMMIT) never runs
        assert producer.check_once().checked == 0
    assert visible(url) == []


def test_usage_errors_are_clear(url: str) -> None:
    make_topic(url)
    with TransactionProducer(url, "orders-tx", lambda m: COMMIT, **FAST) as producer:
        tx = producer.begin()
        with pytest.raises(UsageError, match="no message yet"):
            tx.commit()
        with pytest.raises(UsageError, match="cannot be delayed"):
            tx.send(Message("orders", 1), delay=timedelta(seconds=5))
        with pytest.raises(UsageError, match="cannot be delayed"):
            producer.send_in_transaction(Message("orders", 1), lambda m, arg: COMMIT, delay_level=3)
        with pytest.raises(UsageError, match="must not be negative"):
            tx.send(Message("orders", 1), check_immunity=timedelta(seconds=-1))
        with pytest.raises(UsageError, match="one message per transaction"):
            tx.send([Message("orders", 1), Message("orders", 2)])  # type: ignore[arg-type]
        tx.send(Message("orders", 1))
        with pytest.raises(UsageError, match="one message per transaction"):
            tx.send(Message("orders", 2))
        with pytest.raises(TransactionStateError) as unknown:
            producer._end(MessageQueue("orders", 0), "f" * 32, COMMIT, "client")
        assert unknown.value.code == "TXNONE"
    with pytest.raises(TypeError, match="checker"):
        TransactionProducer(url, "orders-tx", None)  # type: ignore[arg-type]


def test_exceptions_and_none_are_unknown_and_the_check_back_commits(url: str) -> None:
    make_topic(url)
    answers = [RuntimeError("db down"), None, COMMIT]
    seen: list[int] = []

    def check(message: HalfMessage) -> TransactionState | None:
        seen.append(message.check_times)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def execute(message: HalfMessage, arg: Any) -> None:
        raise RuntimeError("local transaction crashed")

    with TransactionProducer(url, "orders-tx", check, **FAST) as producer:
        result = producer.send_in_transaction(Message("orders", {"n": 1}), execute)
        assert result.state is UNKNOWN and visible(url) == []
        reports = []
        until(lambda: reports.append(producer.check_once()) is None and visible(url) != [])
    assert seen == [1, 2, 3]
    assert sum(r.unknown for r in reports) == 2 and sum(r.committed for r in reports) == 1
    assert [v[:2] for v in visible(url)] == [(0, {"n": 1})]


def test_a_check_during_the_local_transaction_is_deferred(url: str) -> None:
    make_topic(url)
    checks: list[str] = []
    with TransactionProducer(url, "orders-tx", lambda m: checks.append(m.msg_id), **FAST) as producer:

        def execute(message: HalfMessage, arg: Any) -> TransactionState:
            report = producer.check_once()  # the half message is due (timeout 0), its transaction runs
            assert (report.deferred, report.checked) == (1, 0)
            return COMMIT

        result = producer.send_in_transaction(Message("orders", {"n": 1}), execute)
    # the deferral did not count as a check: the producer's own commit is accepted
    assert checks == [] and result.send_result is not None and not result.checked
    assert [v[:2] for v in visible(url)] == [(0, {"n": 1})]


def test_the_producers_end_is_accepted_while_its_own_instance_holds_a_deferred_check(url: str) -> None:
    make_topic(url)
    with TransactionProducer(url, "orders-tx", lambda m: ROLLBACK, **FAST) as producer:
        claims: list[Any] = []

        def execute(message: HalfMessage, arg: Any) -> TransactionState:
            # this instance's check loop has leased the message, and not yet said it defers
            claims.extend(producer._drive(producer._core.claim_flow()))
            return COMMIT

        result = producer.send_in_transaction(Message("orders", {"n": 1}), execute)
        assert result.send_result is not None and not result.checked
        (claim,) = claims
        assert claim.message.msg_id == result.msg_id
        producer._drive(producer._core.answer_flow(claim, UNKNOWN, defer=True))  # finds it committed
    assert [v[:2] for v in visible(url)] == [(0, {"n": 1})]


def test_two_instances_never_check_the_same_message_at_once(url: str) -> None:
    make_topic(url)
    entered, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow_check(message: HalfMessage) -> TransactionState:
        calls.append("a")
        entered.set()
        assert release.wait(10)
        return COMMIT

    def other_check(message: HalfMessage) -> TransactionState:
        calls.append("b")
        return ROLLBACK

    with (
        TransactionProducer(url, "orders-tx", slow_check, **FAST) as a,
        TransactionProducer(url, "orders-tx", other_check, **FAST) as b,
    ):
        b.begin().send(Message("orders", {"n": 1}))  # b "dies" before the end: left to the check
        reports: list[Any] = []
        worker = threading.Thread(target=lambda: reports.append(a.check_once()))
        worker.start()
        assert entered.wait(10)
        assert b.check_once().checked == 0  # leased by a: b does not check it
        release.set()
        worker.join(10)
    assert calls == ["a"] and reports[0].committed == 1
    assert [v[:2] for v in visible(url)] == [(0, {"n": 1})]


def test_after_check_max_unknowns_the_message_is_discarded_then_resumed(url: str) -> None:
    make_topic(url)
    answer = [UNKNOWN]
    with TransactionProducer(url, "orders-tx", lambda m: answer[0], **FAST) as producer:
        half = producer.begin().send(Message("orders", {"n": 1}))
        checked = 0
        with Admin(url) as admin:
            deadline = time.monotonic() + 10
            while admin.pending_transactions("orders-tx"):
                assert time.monotonic() < deadline
                checked += producer.check_once().checked
            assert checked == 15  # RocketMQ's transactionCheckMax
            (dead,) = admin.discarded_transactions("orders-tx")
            assert (dead.msg_id, dead.check_times, dead.message.value()) == (half.msg_id, 15, {"n": 1})
            with pytest.raises(TransactionStateError) as refused:  # the producer's late commit
                producer._end(half.queue, half.msg_id, COMMIT, "client")
            assert refused.value.code == "TXDISCARDED"
            assert producer.check_once().checked == 0  # not delivered, not checked
            admin.resume_transaction("orders-tx", half.msg_id)
            assert admin.discarded_transactions("orders-tx") == []
            answer[0] = COMMIT
            report = producer.check_once()
        assert (report.checked, report.committed) == (1, 1)
    assert [v[:2] for v in visible(url)] == [(0, {"n": 1})]


def test_operators_commit_or_roll_back_discarded_messages(url: str) -> None:
    make_topic(url)
    with TransactionProducer(url, "orders-tx", lambda m: UNKNOWN, check_max=1, **FAST) as producer:
        first = producer.begin().send(Message("orders", {"n": 1}))
        second = producer.begin().send(Message("orders", {"n": 2}))
        with Admin(url) as admin:
            pending = admin.pending_transactions("orders-tx")
            assert {p.msg_id for p in pending} == {first.msg_id, second.msg_id}
            assert all(p.check_times == 0 and p.age_ms >= 0 for p in pending)
            until(lambda: producer.check_once() and len(admin.discarded_transactions("orders-tx")) == 2)
            assert admin.commit_transaction("orders-tx", first.msg_id).queue_offset == 0
            admin.rollback_transaction("orders-tx", second.msg_id)
            assert admin.discarded_transactions("orders-tx") == []
    assert [v[:2] for v in visible(url)] == [(0, {"n": 1})]


@pytest.mark.real_only
@pytest.mark.parametrize("decision", [COMMIT, ROLLBACK])
def test_a_producer_killed_before_its_commit_is_resolved_by_another_instance(
    real_url: str, decision: TransactionState
) -> None:
    make_topic(real_url)
    child = subprocess.Popen(  # stores a half message, then hangs before its commit
        [sys.executable, "-c", _KILLED_PRODUCER, real_url],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert child.stdout is not None
        msg_id = child.stdout.readline().strip()
        assert len(msg_id) == 32
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    asked: list[tuple[str, Any]] = []

    def check(message: HalfMessage) -> TransactionState:
        asked.append((message.msg_id, message.value()))
        return decision

    with TransactionProducer(real_url, "orders-tx", check, check_poll_ms=20), Admin(real_url) as admin:
        until(lambda: not admin.pending_transactions("orders-tx"))
    assert asked == [(msg_id, {"order": 7})]
    expected = [(0, {"order": 7}, msg_id)] if decision is COMMIT else []
    assert visible(real_url) == expected


_KILLED_PRODUCER = """
import sys, time
from rmq_style import Message, TransactionProducer
producer = TransactionProducer(
    sys.argv[1], "orders-tx", lambda m: None, transaction_timeout_ms=100, check_in_background=False
)
half = producer.begin().send(Message("orders", {"order": 7}))
print(half.msg_id, flush=True)
time.sleep(60)
"""


def test_async_transaction_producer(url: str) -> None:
    async def main() -> tuple[Any, ...]:
        async with AsyncAdmin(url) as admin:
            await admin.create_topic("orders", queues=1)

        async def execute(message: HalfMessage, arg: Any) -> TransactionState:
            await asyncio.sleep(0)
            return arg  # type: ignore[no-any-return]

        async def check(message: HalfMessage) -> TransactionState:
            return COMMIT

        async with AsyncTransactionProducer(url, "orders-tx", check, **FAST) as producer:
            committed = await producer.send_in_transaction(Message("orders", 1), execute, COMMIT)
            rolled = await producer.send_in_transaction(Message("orders", 2), execute, ROLLBACK)
            tx = await producer.begin()
            await tx.send(Message("orders", 3))
            report = await producer.check_once()
            return committed.send_result.queue_offset, rolled.send_result, report.committed  # type: ignore[union-attr]

    assert asyncio.run(main()) == (0, None, 1)
    assert [v[:2] for v in visible(url)] == [(0, 1), (1, 3)]


def test_members_and_topics_are_recorded(url: str) -> None:
    make_topic(url)
    with TransactionProducer(url, "orders-tx", lambda m: UNKNOWN, **FAST) as producer:
        producer.check_once()
        r = open_client(url)
        try:
            members = r.zrange(Keys().producers("orders-tx"), 0, -1)
            assert members == [producer.member.encode()]
        finally:
            r.close()


def test_the_producers_end_after_another_instance_checked_is_refused_and_the_check_decides(url: str) -> None:
    make_topic(url)
    answer = [UNKNOWN]
    with (
        TransactionProducer(url, "orders-tx", lambda m: UNKNOWN, **FAST) as slow,
        TransactionProducer(url, "orders-tx", lambda m: answer[0], **FAST) as other,
    ):

        def execute(message: HalfMessage, arg: Any) -> TransactionState:
            assert other.check_once().unknown == 1  # another process checks while this one still runs
            return COMMIT

        result = slow.send_in_transaction(Message("orders", {"n": 1}), execute)
        assert (result.state, result.checked, result.send_result) == (COMMIT, True, None)
        assert visible(url) == []
        answer[0] = COMMIT  # the next check (1 ms later) commits
        until(lambda: other.check_once().committed == 1)
    assert [v[:2] for v in visible(url)] == [(0, {"n": 1})]


def test_a_check_whose_lease_ran_out_before_it_began_is_skipped(url: str) -> None:
    make_topic(url)
    entered, release = threading.Event(), threading.Event()
    checked: list[int] = []

    def check(message: HalfMessage) -> TransactionState:
        checked.append(message.value())
        if len(checked) == 1:  # the first check is slow: longer than the lease of the second
            entered.set()
            assert release.wait(10)
        return COMMIT

    options = {**FAST, "check_lease_ms": 200}
    with (
        TransactionProducer(url, "orders-tx", check, **options) as slow,
        TransactionProducer(url, "orders-tx", lambda m: COMMIT, **options) as other,
    ):
        for n in range(2):
            slow.begin().send(Message("orders", n), queue_id=0)
        reports: list[Any] = []
        worker = threading.Thread(target=lambda: reports.append(slow.check_once()))
        worker.start()
        assert entered.wait(10)
        # both leases ran out (the slow check outlived its own: check_lease_ms is its time limit)
        until(lambda: other.check_once().committed == 2)
        release.set()
        worker.join(10)
    # the slow instance never began the second check; its late COMMIT of the first is idempotent
    assert len(checked) == 1 and (reports[0].committed, reports[0].expired) == (1, 1)
    assert sorted(v[1] for v in visible(url)) == [0, 1]


def test_check_immunity_delays_the_first_check_of_one_message(url: str) -> None:
    make_topic(url)
    with TransactionProducer(url, "orders-tx", lambda m: COMMIT, **FAST) as producer:
        immune = producer.begin().send(Message("orders", 1), check_immunity=timedelta(minutes=5))
        due = producer.begin().send(Message("orders", 2))  # transaction_timeout_ms 0: due at once
        report = producer.check_once()
        assert (report.checked, report.committed) == (1, 1)
        with Admin(url) as admin:
            (waiting,) = admin.pending_transactions("orders-tx")
        assert waiting.msg_id == immune.msg_id and waiting.check_times == 0
        assert waiting.next_check_ms == immune.store_timestamp + 300_000
    assert [v[2] for v in visible(url)] == [due.msg_id]


def test_an_async_producers_plain_checker_runs_off_the_event_loop(url: str) -> None:
    threads: list[int] = []

    def check(message: HalfMessage) -> TransactionState:  # blocking I/O would stall the loop
        threads.append(threading.get_ident())
        return COMMIT

    async def main() -> int:
        async with AsyncAdmin(url) as admin:
            await admin.create_topic("orders", queues=1)
        async with AsyncTransactionProducer(url, "orders-tx", check, **FAST) as producer:
            tx = await producer.begin()
            await tx.send(Message("orders", 1))
            return (await producer.check_once()).committed

    assert asyncio.run(main()) == 1
    assert threads and threads[0] != threading.get_ident()
