"""Message trace (docs/trace.md): the journey of one message, recorded by producers and consumers."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from typer.testing import CliRunner

from rmq_style import Admin, App, Message, Producer, ReceivedMessage, TransactionProducer, TransactionState
from rmq_style._names import Keys
from rmq_style._sync._io import open_client
from rmq_style.cli import app as cli_app
from rmq_style.testing import AppTester

runner = CliRunner()


def invoke(*args: str) -> str:
    result = runner.invoke(cli_app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _app(url: str, **settings: object) -> tuple[App, list[int]]:
    app = App(url, auto_create_topics=True, max_reconsume_times=1, **settings)  # type: ignore[arg-type]
    fail = [1]  # while set, the handler fails

    @app.subscribe("orders", group="billing")
    def bill(order: dict[str, int], msg: ReceivedMessage) -> None:
        if fail:
            raise RuntimeError(f"card declined for order {order['id']}")

    return app, fail


def test_journey_with_failure_retry_dead_letter_and_replay(url: str) -> None:
    app, fail = _app(url, trace_sample=1.0)
    with AppTester(app) as tester:
        sent = tester.send("orders", {"id": 7}, keys=["order-7"])
        tester.drain()
        [letter] = tester.assert_dead_lettered("billing", count=1, reason="card declined")
        fail.clear()
        with app.admin() as admin:
            assert admin.replay_dead_letters("billing", [letter]) == 1
        tester.drain()
    with Admin(url) as admin:
        [trace] = admin.trace(sent.msg_id)
        by_key = admin.trace_by_key("orders", "order-7")
    assert by_key == [trace]
    steps = [(s.event, s.group, s.attempt, s.outcome) for s in trace.steps]
    assert steps == [
        ("pub", "", 0, "ok"),
        ("sub", "billing", 0, "retry"),
        ("sub", "billing", 1, "dead"),
        ("replay", "billing", 0, "replayed"),
        ("sub", "billing", 0, "ok"),
    ]
    pub, retry, dead, replay, ok = trace.steps
    assert pub.detail["offset"] == sent.offset and pub.detail["queue_offset"] == str(sent.queue_offset)
    assert pub.detail["keys"] == "order-7" and pub.queue_id == sent.queue.queue_id
    assert retry.due_ms is not None and retry.due_ms >= retry.recorded_ms
    assert "card declined for order 7" in dead.detail["reason"]
    assert all(s.host and s.problem is None for s in trace.steps)
    assert ok.start_ms >= dead.start_ms and replay.detail["dlq_id"] == letter.dlq_id
    text = "\n".join(trace.lines())
    assert "group billing:" in text and "retry due" in text and "replayed" in text


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_sampling_none_or_all(url: str, rate: float) -> None:
    app, fail = _app(url, trace_sample=rate)
    fail.clear()
    with AppTester(app) as tester:
        results = [tester.send("orders", {"id": n}) for n in range(20)]
        tester.drain()
    with Admin(url) as admin:
        traces = [admin.trace(res.msg_id, "orders")[0] for res in results]
    if rate == 0.0:
        assert all(t.steps == () for t in traces)
    else:
        assert all([s.event for s in t.steps] == ["pub", "sub"] for t in traces)


def test_consumer_traces_all_and_off(url: str) -> None:
    """A consumer may trace every message (its own opt-in) or none, whatever the producers sampled."""
    for mode, expected in (("all", ["sub"]), ("off", [])):
        app, fail = _app(url, message_trace=mode)
        fail.clear()
        with AppTester(app) as tester:
            sent = tester.send("orders", {"id": 1})
            tester.drain()
        with Admin(url) as admin:
            [trace] = admin.trace(sent.msg_id, "orders")
        assert [s.event for s in trace.steps] == expected


def test_retention_bound(url: str) -> None:
    with Admin(url) as admin:
        admin.create_topic("orders", queues=1)
    with Producer(url, trace_sample=1.0, trace_maxlen=100) as producer:
        for _ in range(10):
            producer.send_batch([Message("orders", {"n": n}) for n in range(100)])
    client = open_client(url)
    length = client.xlen(Keys().queue("orders", 0).trace)
    assert 100 <= length < 300  # MAXLEN ~: at most one node's slack over the bound


def test_retention_by_age(url: str) -> None:
    """trace_max_age_ms: records older than that (server time) go at the next write (MINID ~)."""
    with Admin(url) as admin:
        admin.create_topic("orders", queues=1)
    trace = Keys().queue("orders", 0).trace
    client = open_client(url)
    for n in range(1, 301):  # whole stream nodes (100 entries each) of records from 1970
        client.xadd(trace, {"i": "old", "e": "pub"}, id=f"{n}-0")
    with Producer(url, trace_sample=1.0, trace_max_age_ms=60_000) as producer:
        sent = producer.send(Message("orders", {"n": 1}))
    ids = [entry_id for entry_id, _ in client.xrange(trace)]
    assert len(ids) < 101 and ids[-1] != b"300-0"  # the old nodes are gone, the new record stays
    assert [f[b"i"] for _, f in client.xrange(trace)][-1] == sent.msg_id.encode()


FAST_TX = {"transaction_timeout_ms": 0, "check_interval_ms": 1, "check_in_background": False}


def test_transactional_messages_show_their_state(url: str) -> None:
    """The half store is the send (transaction half); the end says commit or rollback, and who decided."""
    with Admin(url) as admin:
        admin.create_topic("orders", queues=2)
    with TransactionProducer(
        url, "shop", lambda m: TransactionState.COMMIT, trace_sample=1.0, **FAST_TX
    ) as p:
        direct = p.send_in_transaction(Message("orders", {"n": 1}), lambda m, a: TransactionState.COMMIT)
        checked = p.send_in_transaction(Message("orders", {"n": 2}), lambda m, a: TransactionState.UNKNOWN)
        deadline = time.monotonic() + 10
        while not p.check_once().committed:
            assert time.monotonic() < deadline, "the check-back commits the second message"
        rolled = p.begin()
        rolled.send(Message("orders", {"n": 3}))
        rolled.rollback()
        rolled_id = rolled.message.msg_id if rolled.message is not None else ""
    with Admin(url) as admin:
        journeys = {
            name: [(s.event, s.outcome, s.detail.get("tx"), s.detail.get("from_check")) for s in t.steps]
            for name, msg_id in (
                ("direct", direct.msg_id),
                ("checked", checked.msg_id),
                ("rolled", rolled_id),
            )
            for t in admin.trace(msg_id, "orders")
        }
    assert journeys == {
        "direct": [("pub", "ok", "half", None), ("tx", "commit", None, "0")],
        "checked": [("pub", "ok", "half", None), ("tx", "commit", None, "1")],
        "rolled": [("pub", "ok", "half", None), ("tx", "rollback", None, "0")],
    }


def test_cli_trace(url: str) -> None:
    app, _ = _app(url, trace_sample=1.0)
    with AppTester(app) as tester:
        sent = tester.send("orders", {"id": 3}, keys=["order-3"])
        tester.drain()
    u = ("--url", url)
    text = invoke("trace", sent.msg_id, *u)
    assert f"message {sent.msg_id} of topic orders" in text and "group billing:" in text
    assert "delivery 1 to" in text and "retry due" in text and "card declined for order 3" in text
    shown = json.loads(invoke("trace", "--key", "order-3", "--topic", "orders", *u, "--json"))
    assert [s["outcome"] for s in shown[0]["steps"]] == ["ok", "retry", "dead"]
    assert shown[0]["steps"][1]["due_ms"] >= int(shown[0]["steps"][1]["record_id"].split("-")[0])
    assert "no trace of" in invoke("trace", "0" * 32, *u)
    result = runner.invoke(cli_app, ["trace", "--key", "order-3", *u])
    assert result.exit_code != 0 and "--topic" in str(result.exception)  # main() prints it


def test_orderly_journey_suspend_dead_letter_and_replay(url: str) -> None:
    """An orderly queue retries in place: its suspensions are the retries of the journey."""
    app = App(url, auto_create_topics=True, max_reconsume_times=1, trace_sample=1.0)
    fail = [1]

    @app.subscribe("orders", group="shipping", orderly=True)
    def ship(order: dict[str, int]) -> None:
        if fail:
            raise RuntimeError("carrier down")

    with AppTester(app, suspend_current_queue_time_ms=1) as tester:
        sent = tester.send("orders", {"id": 1})
        tester.drain()
        [letter] = tester.assert_dead_lettered("shipping", count=1, reason="carrier down")
        fail.clear()
        with app.admin() as admin:
            assert admin.replay_dead_letters("shipping", [letter]) == 1
        tester.drain()
    with Admin(url) as admin:
        [trace] = admin.trace(sent.msg_id, "orders")
    steps = [(s.event, s.attempt, s.outcome) for s in trace.steps]
    assert steps == [
        ("pub", 0, "ok"),
        ("sub", 0, "suspend"),
        ("sub", 1, "dead"),
        ("replay", 0, "replayed"),
        ("sub", 0, "ok"),
    ]
    assert trace.steps[1].due_ms == trace.steps[1].recorded_ms + 1


def test_simple_consumer_records_acks_expiries_and_dead_letters(url: str) -> None:
    """A simple consumer's `sub` records: the ack (with the ack, only when accepted), a lease that ended
    unacknowledged ('expired', at the receive that takes it again), a dead letter at receive; of the
    flagged messages ("follow"), or of all ("all")."""
    from rmq_style import SimpleConsumer, StaleReceiptHandleError

    with Admin(url) as admin:
        admin.create_topic("orders", queues=1)
    with Producer(url, trace_sample=1.0) as sampling, Producer(url) as producer:
        traced = sampling.send(Message("orders", "a"))
        plain = producer.send(Message("orders", "b"))
    fast = {"consume_from": "first", "await_duration": 1.0, "_min_invisible_s": 0.01}

    def receive(consumer: SimpleConsumer, count: int) -> list[Any]:
        got = consumer.receive(max_messages=8, invisible_duration=0.05)  # waits for the leases to end
        assert len(got) == count, got
        return got

    with SimpleConsumer(url, "workers", {"orders": "*"}, max_attempts=2, **fast) as follow:
        receive(follow, 2)  # neither acknowledged: both leases end
        first = {m.msg_id: m for m in receive(follow, 2)}
        follow.ack(first[traced.msg_id])
        with pytest.raises(StaleReceiptHandleError):
            follow.ack(first[traced.msg_id])  # refused: no second record
    with SimpleConsumer(url, "audit", {"orders": "*"}, max_attempts=1, message_trace="all", **fast) as all_:
        receive(all_, 2)
        assert all_.receive(max_messages=8, invisible_duration=0.05) == []  # both dead-lettered at receive
    with SimpleConsumer(url, "paid", {"orders": "paid"}, consume_from="first", await_duration=0) as tagged:
        assert tagged.receive(max_messages=8, invisible_duration=10) == []  # neither has the tag
    with Admin(url) as admin:
        [a] = admin.trace(traced.msg_id, "orders")
        [b] = admin.trace(plain.msg_id, "orders")
    steps = [(s.event, s.group, s.attempt, s.outcome) for s in a.steps]
    assert steps == [
        ("pub", "", 0, "ok"),
        ("sub", "workers", 0, "expired"),
        ("sub", "workers", 1, "ok"),
        ("sub", "audit", 0, "dead"),
        ("sub", "paid", 0, "skipped"),
    ]
    ok = a.steps[2]
    assert ok.host and ok.start_ms <= ok.recorded_ms and ok.problem is None
    assert "not acknowledged after 1 delivery attempts" in a.steps[3].detail["reason"]
    # the unflagged message: recorded only by the group that traces all; not sampled, so no pub
    assert [(s.event, s.group, s.attempt, s.outcome) for s in b.steps] == [("sub", "audit", 0, "dead")]
