"""An orderly owner's failure paths of docs/push.md, by real means, on both backends: its group lost
(XGROUP DESTROY), its lease taken by another holder or lost to expiry while a message is handled,
and a release at stop that must not delete the new holder's lock.
"""

from __future__ import annotations

import asyncio
from typing import Any

from structlog.testing import capture_logs

from rmq_style import Message, PushConsumer, ReceivedMessage
from rmq_style._async._io import open_client
from rmq_style._names import Keys
from tests.pushkit import create_topic, fast_settings, send, until

QK = Keys().queue("orders", 0)
LOCK = QK.lock("billing")
INTRUDER = "intruder/1"


def orderly(**overrides: Any) -> Any:
    base: dict[str, Any] = {"orderly_lease_ms": 60_000, "suspend_current_queue_time_ms": 30}
    base.update(overrides)
    return fast_settings(**base)


class Listener:
    """Records the n of each call; the calls for n in *hold* wait until opened."""

    def __init__(self, *hold: int) -> None:
        self.hold = set(hold)
        self.open = asyncio.Event()
        self.seen: list[int] = []

    async def __call__(self, msg: ReceivedMessage) -> None:
        n = msg.value()["n"]
        self.seen.append(n)
        if n in self.hold:
            self.hold.discard(n)
            await self.open.wait()


async def _consumer(url: str, listener: Listener, **settings: Any) -> PushConsumer:
    consumer = PushConsumer(url, "billing", orderly(**settings))
    consumer.subscribe("orders", "*", listener, orderly=True)  # type: ignore[arg-type]
    return consumer


def test_a_lost_group_of_an_orderly_queue_is_recreated_after_its_last_entry(url: str) -> None:
    async def main(events: list[Any]) -> None:
        await create_topic(url, queues=1)
        client = open_client(url)
        listener = Listener()
        consumer = await _consumer(url, listener)
        async with consumer:
            await send(url, [Message("orders", {"n": n}) for n in range(3)])
            await until(lambda: listener.seen == [0, 1, 2], what="the first three")
            third = (await client.xrange(QK.stream))[2][0].decode()
            await client.xgroup_destroy(QK.stream, "billing")  # as after a restart without persistence
            await send(url, [Message("orders", {"n": n}) for n in range(3, 6)])
            await until(lambda: listener.seen == list(range(6)), what="the next three, once each")
            await until(lambda: consumer.stats.consumed == 6, what="counted")
            (recreated,) = [e for e in events if e["event"] == "group.recreated"]
            assert (recreated["where"], recreated["at"]) == ("after", third)
            assert "NOGROUP" in recreated["error"]
        assert (await client.xpending(QK.stream, "billing"))["pending"] == 0
        await client.aclose()

    with capture_logs() as events:
        asyncio.run(main(events))


def test_a_lease_taken_by_another_holder_fences_the_running_owner(url: str) -> None:
    async def main(events: list[Any]) -> PushConsumer:
        await create_topic(url, queues=1)
        client = open_client(url)
        listener = Listener(0)
        consumer = await _consumer(url, listener)  # a 60 s lease: no renewal comes in between
        async with consumer:
            await send(url, [Message("orders", {"n": n}) for n in range(3)])
            await until(lambda: listener.seen == [0], what="the first message being handled")
            await client.set(LOCK, INTRUDER, px=60_000)  # the lease expired and another member took it
            listener.open.set()
            await until(lambda: consumer.stats.fenced == 1, what="the owner's next write refused")
            # 1 and 2 came in the same read: the owner, sure of its lease for 54 s more, handled them;
            # their acks went with its next write, refused: nothing is acknowledged
            assert listener.seen == [0, 1, 2]
            assert await client.get(LOCK) == INTRUDER.encode()  # not released by the fenced owner
            assert (await client.xpending(QK.stream, "billing"))["pending"] == 3
            await client.delete(LOCK)  # the other holder gives it back: the member takes it again
            await until(lambda: consumer.stats.consumed == 6, what="handled again, in order")
            assert listener.seen == [0, 1, 2, 0, 1, 2]
        await client.aclose()
        return consumer

    with capture_logs() as events:
        consumer = asyncio.run(main(events))
    assert [e["event"] for e in events if e["event"].startswith("queue.")].count("queue.fenced") == 1
    assert consumer.stats.fenced == 1


def test_a_lease_lost_to_expiry_is_noticed_by_the_renewal(url: str) -> None:
    async def main(events: list[Any]) -> PushConsumer:
        await create_topic(url, queues=1)
        client = open_client(url)
        listener = Listener(0)
        consumer = await _consumer(url, listener, orderly_lease_ms=600)  # renewed every 200 ms
        async with consumer:
            await send(url, [Message("orders", {"n": n}) for n in range(3)])
            await until(lambda: listener.seen == [0], what="the first message being handled")
            await client.delete(LOCK)  # expired (a paused process, a clock jump)
            await client.set(LOCK, INTRUDER, px=60_000)
            await until(lambda: any(e["event"] == "queue.lease_lost" for e in events), what="lease_lost")
            listener.open.set()
            # the handled message's ack goes out with the hand-back and is refused
            await until(lambda: consumer.stats.fenced == 1, what="the late ack refused")
            assert listener.seen == [0] and await client.get(LOCK) == INTRUDER.encode()
            await client.delete(LOCK)
            await until(lambda: consumer.stats.consumed == 4, what="handled again, then the rest")
            assert listener.seen == [0, 0, 1, 2]
        await client.aclose()
        return consumer

    with capture_logs() as events:
        consumer = asyncio.run(main(events))
    assert consumer.stats.fenced == 1


def test_a_release_at_stop_leaves_the_new_holders_lock(url: str) -> None:
    async def main(events: list[Any]) -> PushConsumer:
        await create_topic(url, queues=1)
        client = open_client(url)
        listener = Listener(0)
        consumer = await _consumer(url, listener)
        async with consumer:
            await send(url, [Message("orders", {"n": n}) for n in range(3)])
            await until(lambda: listener.seen == [0], what="the first message being handled")
            await client.set(LOCK, INTRUDER, px=60_000)
            stopping = asyncio.ensure_future(consumer.stop())  # hands the queue back after the message
            await until(lambda: not consumer.queues, what="stop began")
            listener.open.set()
            await stopping
        assert listener.seen == [0]
        assert await client.get(LOCK) == INTRUDER.encode()  # compare-and-delete: not ours, kept
        # the ack was refused: 0 stays pending, with 1 and 2 (read with it, never started)
        assert (await client.xpending(QK.stream, "billing"))["pending"] == 3
        await client.aclose()
        return consumer

    with capture_logs() as events:
        consumer = asyncio.run(main(events))
    assert consumer.stats.fenced == 1 and consumer.stats.consumed == 1
    assert [e["lost"] for e in events if e["event"] == "queue.released"] == [False]
