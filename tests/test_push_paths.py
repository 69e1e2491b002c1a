"""Paths of docs/push.md no other test reached, on both backends: where a new group starts
(consume_from='timestamp'), PushSettings validation, flow control, the shutdown deadline.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from rmq_style import ConfigurationError, Message, PushConsumer, PushSettings, ReceivedMessage
from rmq_style._async._io import open_client
from rmq_style._membership import MembershipSettings
from rmq_style._names import Keys
from tests.pushkit import create_topic, fast_settings, send, until

QK = Keys().queue("orders", 0)


async def _server_ms(url: str) -> int:
    client = open_client(url)
    seconds, micros = await client.time()
    await client.aclose()
    return int(seconds) * 1000 + int(micros) // 1000


def test_consume_from_timestamp_starts_a_new_group_exactly_at_that_time(url: str) -> None:
    async def main() -> tuple[list[int], list[int]]:
        await create_topic(url, queues=2)
        await send(url, [Message("orders", {"n": n}) for n in range(4)])
        cut = await _server_ms(url) + 1
        while await _server_ms(url) <= cut:  # the next entries get a later server-clock ms
            await asyncio.sleep(0.001)
        await send(url, [Message("orders", {"n": n}) for n in range(4, 10)])
        at = datetime.fromtimestamp(cut / 1000, UTC)
        got: dict[str, list[int]] = {"billing": [], "audit": []}

        async def consume(group: str, settings: PushSettings, before: int, extra: int) -> None:
            async def listener(msg: ReceivedMessage) -> None:
                got[group].append(msg.value()["n"])

            consumer = PushConsumer(url, group, settings)
            consumer.subscribe("orders", "*", listener)
            async with consumer:
                await until(lambda: len(got[group]) == before and consumer.in_flight == 0, what=group)
                await send(url, [Message("orders", {"n": extra})])  # the group goes on after its start
                await until(lambda: extra in got[group], what=f"{group}: a new message")

        await consume("billing", fast_settings(consume_from="timestamp", consume_timestamp=at), 6, 10)
        # no consume_timestamp: 30 min ago, so every message here
        await consume("audit", fast_settings(consume_from="timestamp"), 11, 11)
        return sorted(got["billing"]), sorted(got["audit"])

    billing, audit = asyncio.run(main())
    assert billing == list(range(4, 11))  # none sent before the timestamp
    assert audit == list(range(12))


def test_push_settings_are_validated() -> None:
    PushSettings(consume_message_batch_max_size=10, pull_threshold_for_queue=10)  # equal: allowed
    with pytest.raises(ConfigurationError, match="cannot exceed pull_threshold_for_queue"):
        PushSettings(consume_message_batch_max_size=11, pull_threshold_for_queue=10)
    with pytest.raises(ConfigurationError, match="retry_delays_ms must not be negative"):
        PushSettings(retry_delays_ms=(10, -1))
    with pytest.raises(ConfigurationError, match="member_expiry_ms must be longer"):
        PushSettings(membership=MembershipSettings(heartbeat_interval_ms=500, member_expiry_ms=500))
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        PushSettings(consume_from="timestamp", consume_timestamp=datetime(2024, 1, 1))
    for field, value in [
        ("concurrency", 0),
        ("pull_batch_size", 0),
        ("pull_threshold_for_all", 0),
        ("max_reconsume_times", -2),
        ("orderly_lease_ms", 29),
        ("shutdown_timeout_ms", -1),
        ("consume_from", "middle"),
        ("retry_delays_ms", ()),
        ("no_such_setting", 1),
    ]:
        with pytest.raises(ValidationError, match=field):
            PushSettings(**{field: value})
    with pytest.raises(ValidationError, match="frozen"):
        PushSettings().concurrency = 2  # type: ignore[misc]
    assert PushSettings(max_reconsume_times=-1).concurrent_max_reconsume_times == 16


class Gate:
    """A listener that holds every call until opened; counts the calls running at once."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.running = self.peak = 0
        self.started: list[int] = []

    async def __call__(self, msg: ReceivedMessage) -> None:
        self.started.append(msg.value()["n"])
        self.running += 1
        self.peak = max(self.peak, self.running)
        await self.open.wait()
        self.running -= 1


async def _held_at(
    consumer: PushConsumer, gate: Gate, url: str, queues: int, expected: int, total: int
) -> None:
    """The consumer stops reading with *expected* calls running; opened, it handles all *total*."""
    await until(lambda: gate.running == expected, what=f"{expected} calls running")
    client = open_client(url)
    deadline = time.monotonic() + 0.5  # several fetch rounds (poll_timeout_ms=100): nothing more is read
    while time.monotonic() < deadline:
        pending = 0
        for q in range(queues):
            pending += (await client.xpending(Keys().queue("orders", q).stream, "billing"))["pending"]
        assert (gate.running, consumer.in_flight, pending) == (expected, expected, expected)
        await asyncio.sleep(0.05)
    gate.open.set()
    try:
        await until(lambda: len(gate.started) == total and consumer.in_flight == 0, what="every message")
    except AssertionError as exc:
        raise AssertionError(f"{consumer!r} {sorted(gate.started)}") from exc
    assert gate.peak == expected and sorted(gate.started) == list(range(total))
    await client.aclose()


@pytest.mark.parametrize(
    ("limits", "queues", "expected"),
    [
        # a queue is not read while a read could take it over pull_threshold_for_queue
        ({"pull_threshold_for_queue": 5}, 1, 4),
        # nor once its bodies in flight reach pull_threshold_size_for_queue (20 bytes each here)
        ({"pull_threshold_size_for_queue": 50}, 1, 4),
        # nor while a read could take the consumer over pull_threshold_for_all, whatever the queue
        ({"pull_threshold_for_all": 7}, 4, 6),
    ],
)
def test_flow_control_thresholds_bound_the_messages_in_flight(
    url: str, limits: dict[str, int], queues: int, expected: int
) -> None:
    async def main() -> None:
        await create_topic(url, queues=queues)
        total = 24
        await send(url, [Message("orders", {"n": n, "pad": "x" * 4}) for n in range(total)])
        gate = Gate()
        consumer = PushConsumer(url, "billing", fast_settings(concurrency=50, pull_batch_size=2, **limits))
        consumer.subscribe("orders", "*", gate)
        async with consumer:
            await _held_at(consumer, gate, url, queues, expected, total)

    asyncio.run(main())


def test_the_shutdown_deadline_leaves_messages_pending_for_the_next_owner(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        sent = await send(url, [Message("orders", {"n": n}) for n in range(3)])
        stuck: list[str] = []
        forever = asyncio.Event()

        async def hangs(msg: ReceivedMessage) -> None:
            stuck.append(msg.msg_id)
            await forever.wait()

        a = PushConsumer(url, "billing", fast_settings(concurrency=1, shutdown_timeout_ms=100))
        a.subscribe("orders", "*", hangs)
        async with a:
            await until(lambda: a.in_flight == 3, what="three read, one started")
        assert stuck == [sent[0]] and a.stats.consumed == 0
        client = open_client(url)
        assert (await client.xpending(QK.stream, "billing"))["pending"] == 3  # cut off or never started

        again: list[tuple[str, int]] = []

        async def handles(msg: ReceivedMessage) -> None:
            again.append((msg.msg_id, msg.value()["n"]))

        b = PushConsumer(url, "billing", fast_settings())
        b.subscribe("orders", "*", handles)
        async with b:
            await until(lambda: len(again) == 3 and b.in_flight == 0, what="re-delivered by the next owner")
        assert sorted(again, key=lambda x: x[1]) == [(sent[n], n) for n in range(3)]
        assert (await client.xpending(QK.stream, "billing"))["pending"] == 0
        await client.aclose()

    with capture_logs() as events:
        asyncio.run(main())
    (stopped,) = [e for e in events if e["event"] == "consumer.stopped" and e["unfinished"]]
    assert (stopped["unfinished"], stopped["unsettled"]) == (1, 3)
    assert any(e["event"] == "entries.adopted" and e["count"] == 3 for e in events)
