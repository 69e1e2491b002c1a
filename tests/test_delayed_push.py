"""Delayed messages reach push consumers: concurrent, orderly and App workers, on both backends.

A delayed message (``delay``, ``deliver_at``, ``delay_level``) is released into
its queue by the push consumers owning that queue, by the server clock, about
when it is due; of several groups owning the queue the first one moves it, and
every group gets it exactly once. ``AppTester.drain`` fast-forwards them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from structlog.testing import capture_logs

from rmq_style import App, AsyncProducer, Keys, Message, PushConsumer, ReceivedMessage
from rmq_style._async._io import open_client
from rmq_style.testing import AppTester
from tests.pushkit import create_topic, fast_settings, until

QUEUES = 2


def _offset_ms(msg: ReceivedMessage) -> int:
    return int(msg.offset.split("-")[0])


async def _server_ms(url: str) -> int:
    client = open_client(url)
    seconds, micros = await client.time()
    await client.aclose()
    return int(seconds) * 1000 + int(micros) // 1000


async def _entries_of(url: str, topic: str) -> Counter[str]:
    """msg id -> how many entries of the topic's queue streams hold it; and nothing left held."""
    client = open_client(url)
    found: Counter[str] = Counter()
    for q in range(QUEUES):
        qk = Keys().queue(topic, q)
        for _, fields in await client.xrange(qk.stream):
            found[fields[b"i"].decode()] += 1
        assert await client.zcard(qk.delay) == 0
        assert await client.hlen(qk.delayed) == 0
    await client.aclose()
    return found


def test_delayed_messages_reach_concurrent_and_orderly_push_consumers_once(url: str) -> None:
    async def main() -> None:
        await create_topic(url, "orders", QUEUES)
        got: dict[str, list[ReceivedMessage]] = {"billing": [], "audit": []}

        def listener(group: str) -> Any:
            async def on(msg: ReceivedMessage) -> None:
                got[group].append(msg)

            return on

        # retry_poll_ms bounds the wait of a loop that has nothing held in view (default 1 s)
        settings = fast_settings(retry_poll_ms=1000)
        concurrent = PushConsumer(url, "billing", settings)
        concurrent.subscribe("orders", "*", listener("billing"))
        orderly = PushConsumer(url, "audit", fast_settings(retry_poll_ms=1000, orderly_lease_ms=1000))
        orderly.subscribe("orders", "*", listener("audit"), orderly=True)
        async with concurrent, orderly:
            await until(lambda: len(orderly.queues) == QUEUES, what="orderly queues locked")
            now_ms = await _server_ms(url)
            async with AsyncProducer(url) as producer:
                results = [
                    await producer.send(Message("orders", {"n": 0}), delay=timedelta(milliseconds=300)),
                    await producer.send(
                        Message("orders", {"n": 1}),
                        deliver_at=datetime.fromtimestamp((now_ms + 400) / 1000, UTC),
                    ),
                    await producer.send(Message("orders", {"n": 2}), delay_level=1),  # 1 s
                ]
            due = {r.msg_id: r.deliver_at_ms for r in results}
            assert all(d is not None for d in due.values())
            for group in got:
                await until(lambda g=group: len(got[g]) >= 3, timeout=15, what=f"{group}: 3 delayed")  # type: ignore[misc]
            await until(lambda: concurrent.in_flight == 0, what="acks")
            await asyncio.sleep(0.3)  # a second delivery would come within a poll
        for group, messages in got.items():
            assert Counter(m.msg_id for m in messages) == Counter(dict.fromkeys(due, 1)), group
            for m in messages:
                due_ms = due[m.msg_id]
                assert due_ms is not None
                # released by the server clock: not before it is due, and about when (a poll: 1 s)
                assert due_ms <= _offset_ms(m) < due_ms + 2000, (group, m.msg_id, due_ms, m.offset)
        assert await _entries_of(url, "orders") == Counter(dict.fromkeys(due, 1))  # released once

    with capture_logs():
        asyncio.run(main())


def test_a_push_consumer_wakes_when_the_first_held_message_is_due(url: str) -> None:
    """Held before start, with a long poll: released at its due time, not a poll interval later."""

    async def main() -> None:
        await create_topic(url, "orders", QUEUES)
        async with AsyncProducer(url) as producer:
            result = await producer.send(Message("orders", {"n": 0}), delay=timedelta(milliseconds=800))
        assert result.deliver_at_ms is not None
        got: list[ReceivedMessage] = []

        async def on(msg: ReceivedMessage) -> None:
            got.append(msg)

        consumer = PushConsumer(url, "billing", fast_settings(retry_poll_ms=10_000))
        consumer.subscribe("orders", "*", on)
        async with consumer:
            await until(lambda: len(got) == 1, timeout=15, what="the delayed message")
        assert result.deliver_at_ms <= _offset_ms(got[0]) < result.deliver_at_ms + 1000  # not 10 s

    with capture_logs():
        asyncio.run(main())


def _app(url: str, got: dict[str, list[ReceivedMessage]]) -> App:
    app = App(url, auto_create_topics=True)

    @app.subscribe("orders", group="billing")
    def bill(msg: ReceivedMessage) -> None:
        got["billing"].append(msg)

    @app.subscribe("orders", group="audit", orderly=True)
    def audit(msg: ReceivedMessage) -> None:
        got["audit"].append(msg)

    return app


def test_app_workers_get_delayed_messages_when_due(url: str) -> None:
    asyncio.run(create_topic(url, "orders", QUEUES))
    got: dict[str, list[ReceivedMessage]] = {"billing": [], "audit": []}
    with capture_logs(), AppTester(_app(url, got)) as tester:
        sent = [
            tester.send("orders", {"n": 0}, delay=timedelta(milliseconds=200)),
            tester.send("orders", {"n": 1}, delay_level=1),
        ]
        deadline = time.monotonic() + 15
        while any(len(m) < 2 for m in got.values()):  # not drain: that would fast-forward them
            assert time.monotonic() < deadline, got
            time.sleep(0.01)
    for group, messages in got.items():
        assert sorted(m.msg_id for m in messages) == sorted(r.msg_id for r in sent), group
        for m in messages:
            due_ms = next(r.deliver_at_ms for r in sent if r.msg_id == m.msg_id)
            assert due_ms <= _offset_ms(m), (group, m.offset, due_ms)


def test_app_tester_drain_fast_forwards_delayed_messages(url: str) -> None:
    asyncio.run(create_topic(url, "orders", QUEUES))
    got: dict[str, list[ReceivedMessage]] = {"billing": [], "audit": []}
    with capture_logs(), AppTester(_app(url, got)) as tester:
        sent = [
            tester.send("orders", {"n": 0}, delay=timedelta(hours=1)),
            tester.send("orders", {"n": 1}, deliver_at=datetime.now(UTC) + timedelta(days=1)),
            tester.send("orders", {"n": 2}, delay_level=18),
            tester.send("orders", {"n": 3}),
        ]
        tester.drain()
        for group, messages in got.items():
            assert Counter(m.msg_id for m in messages) == Counter(r.msg_id for r in sent), group
        tester.drain()  # nothing more to do, nothing handled twice
        for group, messages in got.items():
            assert len(messages) == 4, group
    assert asyncio.run(_entries_of(url, "orders")) == Counter(r.msg_id for r in sent)
