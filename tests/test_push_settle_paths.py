"""A concurrent consumer's settle round going wrong, by real means (docs/push.md): the group lost
while a message is being handled, an ack refused, own pending entries trimmed away.
"""

from __future__ import annotations

import asyncio

import pytest
import redis
from structlog.testing import capture_logs

from rmq_style import Message, PushConsumer, ReceivedMessage, Retention
from rmq_style._async._io import open_client
from rmq_style._names import Keys
from rmq_style.testing import RedisServer
from tests.pushkit import create_topic, fast_settings, send, until

QK = Keys().queue("orders", 0)


def test_a_group_lost_while_a_message_is_handled_is_recreated_and_consumption_goes_on(url: str) -> None:
    """The failed message's retry meets NOGROUP (retry.lua asks XPENDING before it writes): logged
    as message.group_lost, nothing scheduled, the message let go; the group is re-created."""

    async def main() -> PushConsumer:
        await create_topic(url, queues=1)
        client = open_client(url)
        seen: list[int] = []
        release = asyncio.Event()

        async def listener(msg: ReceivedMessage) -> None:
            seen.append(msg.value()["n"])
            if msg.value()["n"] == 0:
                await release.wait()
                raise RuntimeError("fails after its group is gone")

        # one message in flight at most: the fetch loop does not read (and meet NOGROUP) meanwhile
        consumer = PushConsumer(url, "billing", fast_settings(pull_batch_size=1, pull_threshold_for_queue=1))
        consumer.subscribe("orders", "*", listener)
        async with consumer:
            await send(url, [Message("orders", {"n": 0})])
            await until(lambda: seen == [0], what="the first message being handled")
            await client.xgroup_destroy(QK.stream, "billing")  # as after a restart without persistence
            release.set()  # its retry meets the lost group
            await until(lambda: consumer.stats.failed == 1 and consumer.in_flight == 0, what="let go")
            await send(url, [Message("orders", {"n": n}) for n in (1, 2)])
            await until(lambda: len(seen) == 3 and consumer.in_flight == 0, what="the next ones")
            assert (await client.xpending(QK.stream, "billing"))["pending"] == 0
            assert await client.zcard(QK.retry("billing")) == 0  # nothing scheduled for the lost group
        assert seen == [0, 1, 2]  # the first is not handled again
        await client.aclose()
        return consumer

    with capture_logs() as events:
        consumer = asyncio.run(main())
    assert (consumer.stats.consumed, consumer.stats.failed, consumer.stats.retried) == (2, 1, 0)
    recreated = [e for e in events if e["event"] == "group.recreated"]
    assert recreated and all(e["where"] == "after" for e in recreated)
    assert not [e for e in events if e["event"] == "message.retry_scheduled"]
    assert [e["event"] for e in events if e["event"] == "message.group_lost"] == ["message.group_lost"]


@pytest.mark.real_only
def test_a_refused_ack_leaves_the_message_pending_and_it_is_handled_again(redis_server: RedisServer) -> None:
    admin = redis.Redis.from_url(redis_server.url)
    admin.flushall()
    admin.acl_setuser("worker", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                      commands=["+@all", "-xack"])  # fmt: skip
    url = f"redis://worker:pw@127.0.0.1:{redis_server.port}/0"

    async def main() -> PushConsumer:
        await create_topic(redis_server.url, queues=1)
        calls: list[tuple[str, int]] = []

        async def listener(msg: ReceivedMessage) -> None:
            calls.append((msg.msg_id, msg.reconsume_times))
            if len(calls) == 2:  # the operator fixes the ACL while the message is handled again
                admin.acl_setuser("worker", commands=["+xack"])

        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("orders", "*", listener)
        async with consumer:
            (msg_id,) = await send(redis_server.url, [Message("orders", {"n": 0})])
            await until(lambda: len(calls) == 2 and consumer.in_flight == 0, what="handled again")
            await until(lambda: admin.xpending(QK.stream, "billing")["pending"] == 0, what="acked")
        assert calls == [(msg_id, 0), (msg_id, 0)]  # read again from its own pending list, not a retry
        return consumer

    try:
        with capture_logs() as events:
            consumer = asyncio.run(main())
    finally:
        admin.acl_deluser("worker")
        admin.close()
    (failed,) = [e for e in events if e["event"] == "message.settle_failed"]
    assert "no permissions to run the 'xack' command" in failed["error"] and failed["queue"] == 0
    assert (consumer.stats.consumed, consumer.stats.retried) == (2, 0)


def test_own_pending_entries_trimmed_away_are_acked_logged_and_counted(url: str) -> None:

    async def main() -> PushConsumer:
        from rmq_style import AsyncAdmin

        async with AsyncAdmin(url) as a:
            await a.create_topic("orders", queues=1, retention=Retention.max_entries(3))
        client = open_client(url)
        handled: list[int] = []

        async def listener(msg: ReceivedMessage) -> None:
            handled.append(msg.value()["n"])

        consumer = PushConsumer(url, "billing", fast_settings())
        consumer.subscribe("orders", "*", listener)
        async with consumer:
            await send(url, [Message("orders", {"n": 0})])
            await until(lambda: handled == [0] and consumer.in_flight == 0, what="the first one")
            # a read whose reply was lost: two entries delivered to this member, never seen by it;
            # then the cap trims them away before the member's own-pending check reads them again
            pipe = client.pipeline(transaction=True)
            for n in (1, 2):
                pipe.xadd(QK.stream, {"i": f"lost{n}", "q": str(n)})
            pipe.xreadgroup("billing", consumer.member, {QK.stream: ">"})
            pipe.xtrim(QK.stream, maxlen=0, approximate=False)
            ((_, read),) = (await pipe.execute())[2]
            await until(lambda: consumer.stats.trimmed == 2 and consumer.in_flight == 0, what="counted")
            assert (await client.xpending(QK.stream, "billing"))["pending"] == 0
            lost = [e["offset"] for e in events if e["event"] == "entry.lost_to_trim"]
            assert lost == [entry_id.decode() for entry_id, _ in read]
        assert handled == [0]
        await client.aclose()
        return consumer

    with capture_logs() as events:
        consumer = asyncio.run(main())
    assert consumer.stats.consumed == 1
