"""Idempotent consumption, the marks' round trips (docs/idempotence.md): a read claimed in one
script, claims held past their lease renewed, claims of calls that never ran released, a
claim refused for one message of a batch holds back that message only, and a Redis Cluster."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from structlog.testing import capture_logs

from rmq_style import Idempotent, Message, PushConsumer, ReceivedMessage
from rmq_style._async._io import open_client
from rmq_style.push.idempotence import mark_key
from rmq_style.testing import ClusterGroup
from tests.pushkit import create_topic, fast_settings, send, until


def run(coro: Any) -> None:
    with capture_logs():
        asyncio.run(coro)


def n_of(msg: ReceivedMessage) -> int:
    return int(json.loads(msg.body)["n"])


def test_a_claim_held_past_its_lease_is_renewed_so_a_duplicate_still_waits(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=2)
        await send(url, [Message("orders", {"n": 0}, keys=("order-7",))], queue_id=0)
        release = asyncio.Event()
        calls: list[int] = []

        async def listener(msg: ReceivedMessage) -> None:
            calls.append(n_of(msg))
            await release.wait()

        consumer = PushConsumer(url, "billing", fast_settings(concurrency=4))
        consumer.subscribe("orders", "*", listener, idempotent=Idempotent("keys", lease_ms=900))
        client = open_client(url)
        mark = mark_key("rmq", "orders", "billing", "order-7")
        async with consumer:
            await until(lambda: calls == [0], what="the first copy running")
            await asyncio.sleep(1.5)  # leases pass while the call runs: time is the subject here
            assert (await client.get(mark) or b"").startswith(b"consuming:")
            assert 0 < await client.pttl(mark) <= 900
            await send(url, [Message("orders", {"n": 1}, keys=("order-7",))], queue_id=1)
            await until(lambda: consumer.stats.failed >= 1, what="the copy told to retry later")
            assert calls == [0]  # never two calls of one key at once
            release.set()
            await until(lambda: consumer.stats.duplicates == 1, what="the copy skipped once consumed")
            await until(lambda: consumer.in_flight == 0, what="acks")
        assert calls == [0] and await client.get(mark) == b"consumed"
        await client.aclose()

    run(main())


def test_a_stop_releases_the_claims_of_calls_cut_or_never_started(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        await send(url, [Message("orders", {"n": n}) for n in range(4)])
        started = asyncio.Event()

        async def listener(msg: ReceivedMessage) -> None:
            started.set()
            await asyncio.Event().wait()  # never ends: cut at the shutdown deadline

        consumer = PushConsumer(url, "billing", fast_settings(concurrency=1, shutdown_timeout_ms=100))
        consumer.subscribe("orders", "*", listener, idempotent=True)
        client = open_client(url)
        async with consumer:
            await asyncio.wait_for(started.wait(), 10)
            marks = [k async for k in client.scan_iter(match="rmq:{orders:idem:billing}:*")]
            assert len(marks) == 4  # the whole read was claimed at once
        # one call cut, three never started: every claim let go, the next owner need not wait
        assert [k async for k in client.scan_iter(match="rmq:{orders:idem:billing}:*")] == []
        await client.aclose()

    run(main())


def test_a_message_in_progress_elsewhere_holds_back_only_itself_in_a_batch(url: str) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        client = open_client(url)
        busy = mark_key("rmq", "orders", "billing", "k1")
        await client.set(busy, b"consuming:other-member", px=60_000)
        await send(url, [Message("orders", {"n": n}, keys=(f"k{n}",)) for n in range(3)])
        batches: list[list[int]] = []
        consumer = PushConsumer(url, "billing", fast_settings(consume_message_batch_max_size=8))
        consumer.subscribe("orders", "*", lambda ms: batches.append([n_of(m) for m in ms]), idempotent="keys")
        async with consumer:
            await until(lambda: consumer.stats.failed >= 1 and batches == [[0, 2]], what="the rest ran")
            await client.delete(busy)  # the other member's call failed: k1 runs on its retry
            await until(lambda: [1] in batches, what="k1 on its retry")
            await until(lambda: consumer.in_flight == 0, what="acks")
        assert batches == [[0, 2], [1]] and consumer.stats.duplicates == 0
        await client.aclose()

    run(main())


@pytest.mark.cluster
@pytest.mark.real_only
def test_idempotent_consumption_on_a_cluster() -> None:
    async def main(url: str) -> None:
        await create_topic(url, queues=8)  # the queues spread over three nodes, the marks on a fourth slot
        await send(url, [Message("orders", {"n": n}, keys=(f"k{n % 10}",)) for n in range(30)])
        seen: list[int] = []
        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("orders", "*", lambda m: seen.append(n_of(m)), idempotent="keys")
        async with consumer:
            await until(lambda: consumer.stats.duplicates == 20 and len(seen) == 10, what="each key once")
            await until(lambda: consumer.in_flight == 0, what="acks")
        assert sorted(n % 10 for n in seen) == list(range(10))
        client = open_client(url)
        for k in range(10):
            assert await client.get(mark_key("rmq", "orders", "billing", f"k{k}")) == b"consumed"
        await client.aclose()

    with ClusterGroup() as cluster:
        run(main(cluster.url))
