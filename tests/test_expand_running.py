"""expand_topic while a group runs (or is stopped) skips nothing, on both backends.

Groups that exist when a topic is expanded read its new queues from their
first entry, even with ``consume_from="last"``; running push (concurrent,
orderly) and lite pull consumers take the new queues within a rebalance
interval. Every message sent after the groups existed is handled exactly
once, and the progress (lag) of every queue ends at 0.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import Counter
from typing import Any

from structlog.testing import capture_logs

from rmq_style import AsyncAdmin, AsyncLitePullConsumer, AsyncProducer, Message, PushConsumer, ReceivedMessage
from rmq_style._membership import MembershipSettings
from tests.pushkit import create_topic, fast_settings, until

OLD, NEW = 2, 4
GROUPS = ("billing", "audit", "report")  # concurrent push, orderly push, lite pull


def _key_for(queue: int, n: int) -> str:
    """A sharding key of *queue* among NEW queues (distinct per n)."""
    i = 0
    while True:
        key = f"k{queue}-{n}-{i}"
        if zlib.crc32(key.encode()) % NEW == queue:
            return key
        i += 1


async def _send_everywhere(url: str, round_: int) -> list[str]:
    """One message per queue of the expanded topic (a fresh producer: no cached queue count)."""
    async with AsyncProducer(url) as producer:
        ids = []
        for q in range(NEW):
            result = await producer.send(
                Message("orders", {"q": q, "r": round_}), sharding_key=_key_for(q, round_)
            )
            assert result.queue.queue_id == q
            ids.append(result.msg_id)
    return ids


class _Groups:
    """The three consumers of the topic, each in its group, all from the last offset."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.got: dict[str, list[str]] = {g: [] for g in GROUPS}
        membership = MembershipSettings(heartbeat_interval_ms=1000, member_expiry_ms=4000)
        settings = fast_settings(consume_from="last", membership=membership, orderly_lease_ms=1500)
        self.push = PushConsumer(url, "billing", settings)
        self.push.subscribe("orders", "*", self._on("billing"))
        self.orderly = PushConsumer(url, "audit", settings)
        self.orderly.subscribe("orders", "*", self._on("audit"), orderly=True)
        self.lite = AsyncLitePullConsumer(
            url, "report", consume_from="last", heartbeat_interval_ms=1000, auto_commit_interval_ms=100
        )
        self._polling: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def _on(self, group: str) -> Any:
        async def listener(msg: ReceivedMessage) -> None:
            self.got[group].append(msg.msg_id)

        return listener

    async def _poll(self) -> None:
        while not self._stop.is_set():
            for msg in await self.lite.poll(0.1):
                self.got["report"].append(msg.msg_id)

    async def start(self, queues: int = OLD) -> None:
        await self.push.start()
        await self.orderly.start()
        await self.lite.subscribe("orders")
        self._polling = asyncio.create_task(self._poll())
        await until(lambda: len(self.orderly.queues) == queues, what="orderly queues locked")

    def queues(self) -> dict[str, int]:
        return {
            "billing": len(self.push.queues),
            "audit": len(self.orderly.queues),
            "report": len(self.lite.assignment()),
        }

    async def wait_for(self, ids: list[str]) -> None:
        for group in GROUPS:
            await until(
                lambda g=group: Counter(self.got[g]) >= Counter(ids),  # type: ignore[misc]
                timeout=20,
                what=f"{group}: every message",
            )

    async def stop(self) -> None:
        self._stop.set()
        assert self._polling is not None
        await self._polling
        await self.lite.commit_sync()
        await self.lite.close()
        await self.orderly.stop()
        await self.push.stop()


async def _lags(url: str) -> dict[str, list[int]]:
    async with AsyncAdmin(url) as admin:
        return {g: [r.progress.lag for r in await admin.progress(g, "orders")] for g in GROUPS}


async def _check_exactly_once(groups: _Groups, ids: list[str]) -> None:
    await until(lambda: groups.push.in_flight == 0, what="acks")
    await asyncio.sleep(0.3)  # a second delivery would come within a poll
    for group in GROUPS:
        assert Counter(groups.got[group]) == Counter(ids), group


def test_a_running_group_takes_new_queues_and_skips_nothing(url: str) -> None:
    async def main() -> None:
        await create_topic(url, "orders", OLD)
        groups = _Groups(url)
        await groups.start()
        async with AsyncAdmin(url) as admin:
            await admin.expand_topic("orders", NEW)
        before = await _send_everywhere(url, 0)  # most likely before the consumers noticed
        await until(
            lambda: groups.queues() == dict.fromkeys(GROUPS, NEW), timeout=10, what="new queues taken"
        )
        after = await _send_everywhere(url, 1)
        await groups.wait_for(before + after)
        await _check_exactly_once(groups, before + after)
        await groups.stop()
        assert await _lags(url) == {g: [0] * NEW for g in GROUPS}

    with capture_logs():
        asyncio.run(main())


def test_expanding_a_stopped_group_then_restarting_skips_nothing(url: str) -> None:
    async def main() -> None:
        await create_topic(url, "orders", OLD)
        groups = _Groups(url)
        await groups.start()
        await groups.stop()
        async with AsyncAdmin(url) as admin:
            await admin.expand_topic("orders", NEW)
        sent = await _send_everywhere(url, 0)
        assert await _lags(url) == {g: [1] * NEW for g in GROUPS}  # each queue holds one for each group
        groups = _Groups(url)
        await groups.start(NEW)
        await groups.wait_for(sent)
        await _check_exactly_once(groups, sent)
        await groups.stop()
        assert await _lags(url) == {g: [0] * NEW for g in GROUPS}

    with capture_logs():
        asyncio.run(main())


def test_a_group_created_after_the_expansion_honours_consume_from_last(url: str) -> None:
    async def main() -> None:
        await create_topic(url, "orders", OLD)
        async with AsyncAdmin(url) as admin:
            await admin.expand_topic("orders", NEW)
        history = await _send_everywhere(url, 0)
        groups = _Groups(url)
        await groups.start(NEW)
        sent = await _send_everywhere(url, 1)
        await groups.wait_for(sent)
        await _check_exactly_once(groups, sent)  # not the history
        await groups.stop()
        assert not set(history) & {i for g in GROUPS for i in groups.got[g]}

    with capture_logs():
        asyncio.run(main())


def test_a_broadcasting_lite_consumer_reads_new_queues_from_their_first_entry(
    url: str,
) -> None:
    async def main() -> None:
        await create_topic(url, "orders", OLD)
        lite = AsyncLitePullConsumer(
            url, "bcast", message_model="broadcasting", consume_from="last", instance_name="one"
        )
        await lite.subscribe("orders")
        assert len(lite.assignment()) == OLD
        async with AsyncAdmin(url) as admin:
            await admin.expand_topic("orders", NEW)
        sent = await _send_everywhere(url, 0)  # before it noticed: it rebalances inside poll only
        got: list[str] = []
        for _ in range(50):
            got += [m.msg_id for m in await lite.poll(0.1)]
            if len(got) >= len(sent):
                break
        await lite.close()
        assert Counter(got) == Counter(sent)

    with capture_logs():
        asyncio.run(main())
