"""The App layer: declarations, checks at start, and handlers running on both backends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from rmq_style import Admin, App, ConfigurationError, DeadLetter, Message, ReceivedMessage
from rmq_style.testing import AppTester


class Order(BaseModel):
    order_id: int
    user: str


def test_declarations_are_checked_when_made() -> None:
    app = App("memory://app-decl")

    @app.subscribe("orders", group="g")
    def ok(order: Order) -> None: ...

    assert ok.__name__ == "ok"
    with pytest.raises(ConfigurationError, match="two handlers for topic 'orders' in group 'g'"):
        app.subscribe("orders", group="g")(ok)
    with pytest.raises(ConfigurationError, match=r"unknown subscribe option\(s\) \['retries'\]"):
        app.subscribe("orders", group="h", retries=3)
    with pytest.raises(ConfigurationError, match="a batch handler"):
        app.subscribe("orders", group="h", batch=10)(ok)

    def unannotated(x):  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(ConfigurationError, match="has no annotation"):
        app.subscribe("orders", group="h")(unannotated)


def test_handlers_of_a_group_must_agree_on_group_options() -> None:
    app = App("memory://app-agree")

    def handler(msg: ReceivedMessage) -> None: ...

    app.subscribe("a", group="g", max_reconsume_times=3)(handler)
    app.subscribe("b", group="g", max_reconsume_times=5)(handler)
    with pytest.raises(ConfigurationError, match="disagree on max_reconsume_times"):
        app.push_settings("g")


def test_lambda_handlers_need_annotations() -> None:
    app = App("memory://app-lambda")
    with pytest.raises(ConfigurationError, match="no annotation"):
        app.subscribe("a", group="g")(lambda m: None)


def test_start_fails_on_unknown_topic_and_unknown_group(url: str) -> None:
    app = App(url)

    @app.subscribe("missing", group="g")
    def handler(msg: ReceivedMessage) -> None: ...

    with pytest.raises(ConfigurationError, match="topic 'missing', which does not exist"):
        asyncio.run(app.run(asyncio.Event()))
    with Admin(url) as admin:
        admin.create_topic("missing")
    with pytest.raises(ConfigurationError, match=r"no handlers for group\(s\) \['other'\]"):
        asyncio.run(app.run(asyncio.Event(), only_groups=["other"]))
    with pytest.raises(ConfigurationError, match="no handlers"):
        asyncio.run(App(url).check())


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RMQ_URL", "memory://from-env")
    monkeypatch.setenv("RMQ_CONCURRENCY", "7")
    app = App()
    assert (app.url, app.settings.concurrency) == ("memory://from-env", 7)
    monkeypatch.setenv("RMQ_CONCURRENCY", "0")
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        App()


def test_handlers_get_what_they_annotate_and_outcomes_are_settled(url: str) -> None:
    app = App(url, auto_create_topics=True)
    seen: list[Any] = []

    @app.subscribe("orders", group="billing", tags="created", max_reconsume_times=1)
    async def bill(msg: ReceivedMessage, order: Order) -> None:
        if order.user == "poison":
            raise RuntimeError("cannot bill")
        if order.user == "fraud":
            raise DeadLetter("fraud")
        seen.append(("bill", order.order_id, msg.tag))

    @app.subscribe("orders", group="audit")
    def audit(body: dict[str, Any]) -> None:
        seen.append(("audit", body["order_id"]))

    with AppTester(app) as tester:
        tester.send("orders", {"order_id": 1, "user": "ann"}, tag="created", sharding_key="ann")
        tester.send("orders", {"order_id": 2, "user": "poison"}, tag="created")
        tester.send("orders", {"order_id": 3, "user": "fraud"}, tag="created")
        tester.send("orders", {"order_id": 4}, tag="created")  # invalid for Order
        tester.send("orders", {"order_id": 5, "user": "bob"}, tag="paid")  # billing skips it
        tester.drain()
        dead = {d.message.value()["order_id"]: d for d in tester.dead_letters("billing")}
    assert sorted(s for s in seen if s[0] == "bill") == [("bill", 1, "created")]
    assert sorted(s for s in seen if s[0] == "audit") == [("audit", n) for n in range(1, 6)]
    assert sorted(dead) == [2, 3, 4]
    assert dead[2].reason.startswith("RuntimeError: cannot bill") and dead[2].message.reconsume_times == 1
    assert dead[3].reason.startswith("DeadLetter: fraud") and dead[3].message.reconsume_times == 0
    assert dead[4].reason.startswith("SerializationError") and dead[4].message.reconsume_times == 0


def test_batch_handler_receives_lists(url: str) -> None:
    app = App(url, auto_create_topics=True)
    batches: list[list[int]] = []

    @app.subscribe("orders", group="g", batch=50)
    def handle(orders: list[Order], msgs: list[ReceivedMessage]) -> None:
        assert len(orders) == len(msgs)
        batches.append([o.order_id for o in orders])

    with app.admin() as admin:
        admin.create_topic("orders", queues=1)
    with app.producer() as producer:
        producer.send_batch([Message("orders", {"order_id": n, "user": "u"}) for n in range(120)])
    with AppTester(app) as tester:
        tester.drain()
    assert sorted(n for b in batches for n in b) == list(range(120))
    assert max(len(b) for b in batches) > 1


def test_tester_dead_letter_assertion_fails_with_the_reasons(url: str) -> None:
    app = App(url, auto_create_topics=True)

    @app.subscribe("orders", group="g", max_reconsume_times=0)
    def handle(msg: ReceivedMessage) -> None:
        raise RuntimeError("boom")

    with AppTester(app) as tester:
        tester.send("orders", b"x")
        tester.drain()
        assert len(tester.assert_dead_lettered("g", count=1, reason="RuntimeError: boom")) == 1
        with pytest.raises(
            AssertionError, match=r"expected 2 dead letters in 'g', found .*RuntimeError: boom"
        ):
            tester.assert_dead_lettered("g", count=2)
        with pytest.raises(AssertionError, match="without 'ValueError'"):
            tester.assert_dead_lettered("g", count=1, reason="ValueError")
