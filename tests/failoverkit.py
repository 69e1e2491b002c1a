"""Load for failover tests: a producer at about 250/s and two lagging consumers of one group, a fault
in the middle, and the checks every failover must pass (at least once, no offset twice, nothing pending).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rmq_style import (
    Admin,
    AsyncAdmin,
    AsyncProducer,
    Message,
    PushConsumer,
    ReceivedMessage,
    SendResult,
    SendStatus,
)
from tests.pushkit import fast_settings, until

TOPIC = "ha"
QUEUES = 4
TOTAL = 300
FAULT_AT = 100
# what a failover may still lose of plain sends: writes acknowledged and not yet replicated when the
# master died or the replica was promoted (replication lag: far below this on loopback)
LOSS_WINDOW_S = 0.1


@dataclass
class Load:
    results: list[SendResult] = field(default_factory=list)
    returned_at: list[float] = field(default_factory=list)  # monotonic, per send
    keys: list[str | None] = field(default_factory=list)  # the sharding key of each send, if any
    seen: Counter[str] = field(default_factory=Counter)  # msg id: times handled
    fault_at: float = 0.0  # monotonic time the fault started

    def confirmed(self) -> list[int]:
        """Indices of the sends that returned SEND_OK."""
        return [i for i, r in enumerate(self.results) if r.status is SendStatus.SEND_OK]

    def lost(self) -> list[int]:
        """Indices of confirmed sends never handled."""
        return [i for i in self.confirmed() if self.results[i].msg_id not in self.seen]


async def send_under_load(url: str, fault: Callable[[], Any], *, keyed: bool = False, **options: Any) -> Load:
    """Send TOTAL messages while two consumers of group "billing" lag behind; run *fault* in a thread
    once FAULT_AT were sent. With *keyed*, every other send has a sharding key."""
    load = Load()

    async def lagging(msg: ReceivedMessage) -> None:  # 2 x 100/s: behind the producer
        await asyncio.sleep(0.01)
        load.seen[msg.msg_id] += 1

    def timed_fault() -> None:
        load.fault_at = time.monotonic()
        fault()

    consumers = [PushConsumer(url, "billing", fast_settings(concurrency=1)) for _ in range(2)]
    for consumer in consumers:
        consumer.subscribe(TOPIC, "*", lagging)
    async with consumers[0], consumers[1], AsyncProducer(url, **options) as producer:
        faulted: asyncio.Future[None] | None = None
        for n in range(TOTAL):
            if n == FAULT_AT:
                faulted = asyncio.ensure_future(asyncio.to_thread(timed_fault))
            key = f"user-{n % 7}" if keyed and n % 2 else None
            load.results.append(await producer.send(Message(TOPIC, {"n": n}), sharding_key=key))
            load.returned_at.append(time.monotonic())
            load.keys.append(key)
            await asyncio.sleep(0.004)
        assert faulted is not None
        await faulted
        await _handled_or_drained(url, {load.results[i].msg_id for i in load.confirmed()}, load.seen)
        await until(lambda: all(c.in_flight == 0 for c in consumers), what="acks")
        assert all(c.queues for c in consumers)  # both still consuming their share
    return load


async def _handled_or_drained(url: str, wanted: set[str], seen: Counter[str], timeout: float = 30) -> None:
    """Until every wanted msg id was handled, or the group has nothing left to read (some were lost)."""
    deadline = time.monotonic() + timeout
    async with AsyncAdmin(url) as admin:
        while not wanted <= set(seen):
            rows = await admin.progress("billing", TOPIC)
            if sum(r.progress.lag + r.progress.pending for r in rows) == 0:
                return
            assert time.monotonic() < deadline, f"{len(wanted - set(seen))} confirmed sends not handled"
            await asyncio.sleep(0.1)


def assert_outcome(url: str, load: Load, events: list[Any], *, lost: list[int] | None = None) -> None:
    """Every confirmed send handled at least once (but *lost*), no queue offset confirmed for two
    handled sends, no error logged, nothing left pending, and progress answers on the new topology."""
    lost = lost or []
    confirmed = [i for i in load.confirmed() if i not in lost]
    assert {load.results[i].msg_id for i in confirmed} <= set(load.seen)
    offsets = Counter((load.results[i].queue.queue_id, load.results[i].queue_offset) for i in confirmed)
    assert [o for o, count in offsets.items() if count > 1] == []
    errors = [e for e in events if e["log_level"] in ("error", "critical")]
    assert errors == [], errors
    with Admin(url) as admin:
        rows = admin.progress("billing", TOPIC)
    assert len(rows) == QUEUES
    assert sum(r.progress.lag + r.progress.pending for r in rows) == 0
