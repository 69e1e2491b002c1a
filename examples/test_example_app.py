"""How to test handlers with rmq_style's pytest plugin (no Redis server needed)."""

from __future__ import annotations

from examples.billing_app import app, billed
from rmq_style.testing import AppTester


def test_orders_are_billed_and_bad_ones_dead_lettered(rmq_tester) -> None:  # type: ignore[no-untyped-def]
    billed.clear()
    tester: AppTester = rmq_tester(app)
    tester.send("orders", {"order_id": 1, "amount_cents": 500}, tag="created")
    tester.send("orders", {"order_id": 2, "amount_cents": -5}, tag="created")
    tester.send("orders", {"order_id": 3, "amount_cents": 0}, tag="created")
    tester.send("orders", {"order_id": "not a number"}, tag="created")
    tester.send("orders", {"order_id": 4, "amount_cents": 1}, tag="refunded")  # not subscribed: skipped
    tester.drain()
    assert billed == [1]
    tester.assert_dead_lettered("billing", count=3)
    reasons = sorted(d.reason.split(":")[0] for d in tester.dead_letters("billing"))
    assert reasons == ["DeadLetter", "SerializationError", "ValueError"]
    retried = next(d for d in tester.dead_letters("billing") if d.reason.startswith("ValueError"))
    assert retried.message.reconsume_times == 2  # max_reconsume_times retries, then the DLQ


def test_wsgi_publish(rmq_url: str) -> None:
    import io
    import json

    from examples import wsgi_publish
    from rmq_style import Producer

    wsgi_publish.producer.close()
    wsgi_publish.producer = Producer(rmq_url, auto_create_topics=True)
    payload = json.dumps({"order_id": 1, "user_id": "ann"}).encode()
    environ = {"CONTENT_LENGTH": str(len(payload)), "wsgi.input": io.BytesIO(payload)}
    statuses: list[str] = []
    body = b"".join(wsgi_publish.application(environ, lambda status, headers: statuses.append(status)))
    assert statuses == ["200 OK"] and len(json.loads(body)["msg_id"]) == 32
    wsgi_publish.producer.close()
