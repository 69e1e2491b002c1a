"""maxlen retention: what a trim removes before a group read it is counted, and logged once.

DESIGN.md: "a hard cap (MAXLEN) is the user's explicit choice and its loss is
visible (OFFSET_ILLEGAL for pullers, a warning for groups)".
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

from structlog.testing import capture_logs
from typer.testing import CliRunner

from rmq_style import Admin, Message, Producer, PushConsumer, ReceivedMessage, Retention
from rmq_style._names import Keys
from rmq_style._sync._io import open_client
from rmq_style.cli import app
from tests.pushkit import fast_settings, until

QK = Keys().queue("capped", 0)


def create_capped_topic(url: str, cap: int = 100) -> None:
    with Admin(url) as admin:
        admin.create_topic("capped", queues=1, retention=Retention.max_entries(cap))


def read_qs(client: Any, group: str, count: int) -> list[int]:
    """Queue offsets of the entries XREADGROUP hands to *group* (acked at once)."""
    reply = client.xreadgroup(group, "reader-1", {QK.stream: ">"}, count=count) or []
    qs = []
    for _, entries in reply:
        for entry_id, fields in entries:
            qs.append(int(fields[b"q"]))
            client.xack(QK.stream, group, entry_id)
    return qs


def first_queue_offset(client: Any) -> int:
    (_, fields), *_ = client.xrange(QK.stream, count=1)
    return int(fields[b"q"])


def test_every_entry_is_delivered_to_a_group_or_counted_as_trimmed(url: str) -> None:
    create_capped_topic(url)
    client = open_client(url)
    for group in ("idle", "reader", "late"):
        client.xgroup_create(QK.stream, group, "0", mkstream=True)
    delivered: dict[str, list[int]] = {"idle": [], "reader": [], "late": []}
    with Producer(url) as producer:
        for batch in range(20):
            producer.send_batch([Message("capped", {"batch": batch, "i": i}) for i in range(50)])
            delivered["reader"] += read_qs(client, "reader", 1000)  # keeps up: loses nothing
            if batch == 9:
                delivered["late"] += read_qs(client, "late", 200)  # reads once, then falls behind
    first = first_queue_offset(client)
    assert first > 500 and client.xlen(QK.stream) < 100 + 128 + 100  # the cap held (node slack)
    counts = {k.decode(): int(v) for k, v in client.hgetall(QK.trimmed).items()}
    for group, qs in delivered.items():
        before_first = [q for q in qs if q < first]
        assert len(set(before_first)) == len(before_first)
        # exact: each entry below the first retained one was delivered or counted, never both
        assert counts.get(group, 0) + len(before_first) == first, group
    assert "reader" not in counts
    assert counts["idle"] == first
    assert 0 < counts["late"] < first


def test_a_delayed_release_into_a_capped_queue_counts_too(url: str) -> None:
    create_capped_topic(url, cap=10)
    client = open_client(url)
    client.xgroup_create(QK.stream, "idle", "0", mkstream=True)
    with Producer(url) as producer:
        producer.send_batch([Message("capped", i) for i in range(100)])
        held = [Message("capped", i) for i in range(200)]
        producer.send_batch(held, queue_id=0, delay=timedelta(milliseconds=1))
    assert client.zcard(QK.delay) == 200
    with Admin(url) as admin:
        deadline = time.monotonic() + 5
        while client.zcard(QK.delay) and time.monotonic() < deadline:  # due by the server clock
            admin.release_due("capped")
    assert client.zcard(QK.delay) == 0 and int(client.get(QK.seq)) == 300
    assert int(client.hget(QK.trimmed, "idle")) == first_queue_offset(client) > 0


def test_a_push_group_warns_once_about_entries_trimmed_before_it_read_them(url: str) -> None:
    create_capped_topic(url)
    handled: list[int] = []

    async def listener(msg: ReceivedMessage) -> None:
        handled.append(msg.queue_offset)

    async def consume(expected: int) -> PushConsumer:
        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("capped", "*", listener)
        async with consumer:
            await until(lambda: len(handled) == expected, what=f"{expected} handled")
            await until(lambda: consumer.in_flight == 0, what="acks")
        return consumer

    with capture_logs() as joined:
        asyncio.run(consume(0))  # the group exists; then its consumers are down while 1000 arrive
    assert not [e for e in joined if e["event"] == "entries.trimmed_unread"]
    with Producer(url) as producer:
        for _ in range(10):
            producer.send_batch([Message("capped", {"n": 1}) for _ in range(100)])
    client = open_client(url)
    first = first_queue_offset(client)
    assert first > 0

    with capture_logs() as events:
        consumer = asyncio.run(consume(1000 - first))
    assert sorted(handled) == list(range(first, 1000))
    warnings = [e for e in events if e["event"] == "entries.trimmed_unread"]
    assert [(w["topic"], w["queue"], w["count"], w["total"]) for w in warnings] == [
        ("capped", 0, first, first)
    ]
    assert warnings[0]["log_level"] == "warning"
    assert consumer.stats.trimmed == first
    with Admin(url) as admin:
        (row,) = admin.progress("billing", "capped")
    assert row.trimmed == first and row.progress.lag == 0
    cli = CliRunner().invoke(app, ["progress", "--group", "billing", "--url", url], catch_exceptions=False)
    assert cli.exit_code == 0 and f"{first} entries were trimmed" in cli.output

    with capture_logs() as again:  # a restart does not warn about the same loss twice
        consumer = asyncio.run(consume(1000 - first))
    assert not [e for e in again if e["event"] == "entries.trimmed_unread"]
    assert consumer.stats.trimmed == 0


def test_entries_trimmed_while_pending_at_a_dead_member_are_acked_logged_and_counted(url: str) -> None:
    create_capped_topic(url, cap=10)
    client = open_client(url)
    client.xgroup_create(QK.stream, "billing", "0", mkstream=True)
    with Producer(url) as producer:
        producer.send_batch([Message("capped", {"n": n}) for n in range(5)])
        # a member that read the first five and died: they stay pending at it
        ((_, read),) = client.xreadgroup("billing", "ghost", {QK.stream: ">"})
        producer.send_batch([Message("capped", {"n": n}) for n in range(5, 300)])
    first = first_queue_offset(client)
    assert first > 5  # the cap trimmed the ghost's entries and some the group never read
    handled: list[int] = []

    async def listener(msg: ReceivedMessage) -> None:
        handled.append(msg.queue_offset)

    async def main() -> PushConsumer:
        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("capped", "*", listener)
        async with consumer:
            await until(lambda: len(handled) == 300 - first, what="the retained entries handled")
            await until(lambda: client.xpending(QK.stream, "billing")["pending"] == 0, what="all acked")
        return consumer

    with capture_logs() as events:
        consumer = asyncio.run(main())
    assert sorted(handled) == list(range(first, 300))
    lost = [e["offset"] for e in events if e["event"] == "entry.lost_to_trim"]
    assert lost == [entry_id.decode() for entry_id, _ in read]
    with Admin(url) as admin:
        (row,) = admin.progress("billing", "capped")
    assert row.trimmed == first - 5  # trimmed before the group read them
    assert consumer.stats.trimmed == first  # and the five lost while pending
