"""Message trace (docs/trace.md): the journey of one message, recorded by producers and consumers."""

from __future__ import annotations

import pytest

from rmq_style import Admin, App, Message, Producer, ReceivedMessage
from rmq_style._names import Keys
from rmq_style._sync._io import open_client
from rmq_style.testing import AppTester


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
