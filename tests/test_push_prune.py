"""Stream consumers of dead members are deleted once they own nothing (prune_consumers.lua)."""

from __future__ import annotations

import asyncio
from typing import Any

from structlog.testing import capture_logs

from rmq_style import Message, PushConsumer, ReceivedMessage
from rmq_style._async._io import AsyncClient, execute, open_client
from rmq_style._names import Keys
from rmq_style.push.redis_calls import prune_consumers_call
from tests.pushkit import create_topic, fast_settings, send, until

STREAM = "rmq:{orders:0}:s"


def run(coro: Any) -> list[dict[str, Any]]:
    with capture_logs() as events:
        asyncio.run(coro)
    return events


async def consumer_names(client: AsyncClient, stream: str, group: str = "billing") -> list[str]:
    rows = await client.xinfo_consumers(stream, group)
    return sorted(r["name"].decode() if isinstance(r["name"], bytes) else r["name"] for r in rows)


async def read_one(client: AsyncClient, consumer: str, *, ack: bool, stream: str = STREAM) -> None:
    reply = await client.xreadgroup("billing", consumer, {stream: ">"}, count=1)
    if ack:
        await client.xack(stream, "billing", *[entry_id for entry_id, _ in reply[0][1]])


async def prune(client: AsyncClient, min_idle_ms: int, live: list[str], stream: str = STREAM) -> int:
    (reply,) = await execute(client, [prune_consumers_call(stream, "billing", min_idle_ms, live)])
    return int(reply)


def test_script_deletes_only_dead_idle_consumers_without_pending_entries(url: str) -> None:
    async def main() -> None:
        client = open_client(url)
        for i in range(4):
            await client.xadd(STREAM, {"i": str(i)})
        await client.xgroup_create(STREAM, "billing", "0")
        await read_one(client, "live", ack=True)
        await read_one(client, "dead-done", ack=True)
        await read_one(client, "dead-busy", ack=False)
        everyone = ["dead-busy", "dead-done", "live"]

        assert await prune(client, 60_000, ["live"]) == 0  # nobody idle that long
        assert await consumer_names(client, STREAM) == everyone
        assert await prune(client, 0, ["live"]) == 1
        assert await consumer_names(client, STREAM) == ["dead-busy", "live"]

        # what adoption does: the live member claims the dead one's entry, which frees it
        (busy,) = await client.xpending_range(STREAM, "billing", "-", "+", 10, consumername="dead-busy")
        await client.xclaim(STREAM, "billing", "live", 0, [busy["message_id"]], justid=True)
        assert await prune(client, 0, ["live"]) == 1
        assert await consumer_names(client, STREAM) == ["live"]
        assert (await client.xpending(STREAM, "billing"))["pending"] == 1  # the claimed entry survived
        await client.aclose()

    run(main())


def test_script_answers_zero_without_stream_or_group(url: str) -> None:
    async def main() -> None:
        client = open_client(url)
        assert await prune(client, 0, [], stream="rmq:{orders:1}:s") == 0  # no stream
        await client.xadd(STREAM, {"i": "0"})
        assert await prune(client, 0, []) == 0  # a stream without the group
        await client.aclose()

    run(main())


def test_consumer_deletes_dead_members_stream_consumers_and_handles_every_message_once(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=2)
        await send(url, [Message("orders", {"i": i}, keys=[str(i)]) for i in range(8)])
        client = open_client(url)
        keys = Keys().queue("orders", 0), Keys().queue("orders", 1)
        streams = [k for qk in keys for k in (qk.stream, qk.retry_stream("billing"))]
        handled_by_ghosts: set[str] = set()
        for qk in keys:
            await client.xgroup_create(qk.stream, "billing", "0")
            await client.xgroup_create(qk.retry_stream("billing"), "billing", "0", mkstream=True)
            for ghost in ("ghost-1", "ghost-2"):
                (_, entries), *_ = await client.xreadgroup("billing", ghost, {qk.stream: ">"}, count=1)
                await client.xack(qk.stream, "billing", entries[0][0])
                handled_by_ghosts.add(entries[0][1][b"i"].decode())
            await read_one(client, "ghost-3", ack=False, stream=qk.stream)  # died holding one
            # an empty read creates no consumer on Redis 7.0
            await client.xgroup_createconsumer(qk.retry_stream("billing"), "billing", "ghost-4")
        seen: list[str] = []

        async def listener(msg: ReceivedMessage) -> None:
            seen.append(msg.msg_id)

        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("orders", "*", listener)
        async with consumer:
            await until(lambda: len(seen) == 4, what="every message the ghosts did not ack")
            names: dict[str, list[str]] = {}

            async def only_the_member_left() -> bool:
                for s in streams:
                    names[s] = await consumer_names(client, s)
                return all(n == [consumer.member] for n in names.values())

            await until_async(only_the_member_left, what="dead consumers pruned")
            await until(lambda: consumer.in_flight == 0, what="acks")
        assert len(seen) == len(set(seen)) == 4
        assert not handled_by_ghosts & set(seen)
        for s in streams:
            assert (await client.xpending(s, "billing"))["pending"] == 0
        await client.aclose()

    events = run(main())
    pruned = [e for e in events if e["event"] == "consumers.pruned"]
    assert sum(e["count"] for e in pruned) == 8  # ghost-1..3 on each queue, ghost-4 on each retry stream


def test_orderly_queues_are_pruned_too(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        await send(url, [Message("orders", {"i": i}) for i in range(3)])
        client = open_client(url)
        await client.xgroup_create(STREAM, "billing", "0")
        await read_one(client, "ghost-1", ack=True)
        await read_one(client, "ghost-2", ack=False)  # taken over by the new owner first
        order: list[int] = []

        async def listener(msg: ReceivedMessage) -> None:
            order.append(msg.value()["i"])

        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("orders", "*", listener, orderly=True)
        async with consumer:
            await until(lambda: len(order) == 2, what="the two messages ghost-1 did not ack")

            async def only_the_member_left() -> bool:
                return await consumer_names(client, STREAM) == [consumer.member]

            await until_async(only_the_member_left, what="dead consumers pruned")
        assert order == [1, 2]
        await client.aclose()

    run(main())


async def until_async(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll an async *predicate* (bounded); fail the test if it stays false."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)
