"""The SQLite example: an order row and its message are committed together or not at all."""

from __future__ import annotations

from pathlib import Path

from examples.sqlite_orders import OrderCreated, OrderService, main
from rmq_style import Admin, Message, MessageQueue, PullConsumer, TransactionState

FAST = {"transaction_timeout_ms": 0, "check_interval_ms": 1, "check_in_background": False}


def messages(url: str) -> list[tuple[str, int]]:
    with PullConsumer(url, "reader") as consumer:
        found = []
        for q in consumer.fetch_queues("orders"):
            found += consumer.pull(q, "0-0", max_nums=100).messages
    return sorted((m.keys[0], m.queue_offset) for m in found)


def test_orders_and_their_messages_commit_together(rmq_url: str, tmp_path: Path) -> None:
    with Admin(rmq_url) as admin:
        admin.create_topic("orders", queues=1)
    service = OrderService(rmq_url, str(tmp_path / "orders.db"), **FAST)
    try:
        first = service.create_order(OrderCreated(order_id="o-1", user_id="u-1", amount_cents=500))
        assert first.state is TransactionState.COMMIT and first.send_result is not None
        duplicate = service.create_order(OrderCreated(order_id="o-1", user_id="u-1", amount_cents=1))
        assert duplicate.state is TransactionState.ROLLBACK  # no row written, no message
        # the row committed but the process "died" before its commit: the check-back commits
        second = OrderCreated(order_id="o-2", user_id="u-2", amount_cents=7)
        crashed = service.create_order(second, crash_after_insert=True)
        assert crashed.state is TransactionState.UNKNOWN and messages(rmq_url) == [("o-1", 0)]
        report = service.producer.check_once()
        assert (report.checked, report.committed) == (1, 1)
        # a half message whose row never committed: the check-back rolls it back
        third = OrderCreated(order_id="o-3", user_id="u-3", amount_cents=1)
        service.producer.begin().send(Message("orders", third, keys=["o-3"]))
        report = service.producer.check_once()
        assert (report.checked, report.rolled_back) == (1, 1)
    finally:
        service.close()
    assert messages(rmq_url) == [("o-1", 0), ("o-2", 1)]
    with PullConsumer(rmq_url, "reader2") as consumer:
        bodies = [m.value() for m in consumer.pull(MessageQueue("orders", 0), "0-0").messages]
    assert bodies == [{"order_id": "o-1", "user_id": "u-1", "amount_cents": 500},
                      {"order_id": "o-2", "user_id": "u-2", "amount_cents": 7}]  # fmt: skip


def test_the_example_runs(rmq_url: str, capsys) -> None:  # type: ignore[no-untyped-def]
    main(rmq_url)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("o-0 commit") and out[-1] == "o-0 again rollback"
