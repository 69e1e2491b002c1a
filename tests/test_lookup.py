"""Finding messages by key, msg id or tag (queryMsgByKey), on both backends and through the CLI."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from rmq_style import Admin, Message, Producer, UsageError
from rmq_style.cli import app


def setup(url: str) -> list[tuple[str, int, str]]:
    """300 messages over 4 queues, keys order-N and user-(N % 7), tag paid on every tenth."""
    with Admin(url) as admin:
        admin.create_topic("orders", queues=4)
    messages = [
        Message(
            "orders", {"n": n}, keys=[f"order-{n}", f"user-{n % 7}"], tag="paid" if n % 10 == 0 else "created"
        )
        for n in range(300)
    ]
    with Producer(url) as producer:
        results = [
            r for start in range(0, 300, 50) for r in producer.send_batch(messages[start : start + 50])
        ]
    return [(r.msg_id, r.queue.queue_id, r.offset or "") for r in results]


def test_find_by_key_msg_id_and_tag(front: Any, url: str) -> None:
    sent = setup(url)
    with front.Admin(url) as admin:
        (hit,) = admin.find_messages("orders", key="order-42")
        assert (hit.msg_id, hit.queue_id, hit.offset) == sent[42] and hit.value() == {"n": 42}
        (by_id,) = admin.find_messages("orders", msg_id=sent[123][0])
        assert by_id.value() == {"n": 123}
        user3 = admin.find_messages("orders", key="user-3")
        assert sorted(m.value()["n"] for m in user3) == [n for n in range(300) if n % 7 == 3]
        # newest first by store time, then queue offset
        assert [(m.store_timestamp, m.queue_offset) for m in user3] == sorted(
            ((m.store_timestamp, m.queue_offset) for m in user3), reverse=True
        )
        paid = admin.find_messages("orders", tag="paid", limit=5)
        assert len(paid) == 5 and all(m.tag == "paid" for m in paid)
        assert admin.find_messages("orders", key="user-3", tag="paid") == [
            m for m in user3 if m.tag == "paid"
        ]
        assert admin.find_messages("orders", key="order-999") == []


def test_the_scan_is_bounded_per_queue(front: Any, url: str) -> None:
    sent = setup(url)
    with front.Admin(url) as admin:
        # order-0 is the oldest message of its queue: out of reach of a short scan, found by a long one
        assert admin.find_messages("orders", key="order-0", scan=10) == []
        assert [m.msg_id for m in admin.find_messages("orders", key="order-0", scan=75)] == [sent[0][0]]
        assert [m.msg_id for m in admin.find_messages("orders", key="order-299", scan=1)] == [sent[299][0]]
        with pytest.raises(UsageError, match="a key, a msg id or a tag"):
            admin.find_messages("orders")


def test_find_through_the_cli(url: str) -> None:
    sent = setup(url)
    result = CliRunner().invoke(app, ["find", "orders", "--key", "order-7", "--url", url, "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert (row["msg_id"], row["queue"], row["offset"], row["body"]) == (*sent[7], {"n": 7})
    table = CliRunner().invoke(app, ["find", "orders", "--tag", "paid", "--limit", "3", "--url", url])
    assert table.exit_code == 0 and "3 message(s) of orders" in table.output
