"""The push fetch reads XREADGROUP replies without redis-py's callback where the client packs calls.

A plain or lane client hands an entry's fields back as Redis sent them (a flat
list, mapped only when read); fakeredis gives redis-py's dicts. The consumer
reads both shapes: each message below reaches the listener with the same view.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from rmq_style import Message, PushConsumer, ReceivedMessage
from rmq_style._async._io import execute_unparsed, open_client
from rmq_style._call_values import Command
from rmq_style.testing import RedisServer
from tests.pushkit import create_topic, fast_settings, send, until

STREAM = "rmq:{orders:0}:s"


def test_a_read_keeps_the_fields_as_sent_where_the_client_packs_calls(url: str) -> None:
    async def main() -> object:
        await create_topic(url, "orders", queues=1)
        await send(url, [Message("orders", b"x", tag="paid")])
        client = open_client(url)
        try:
            await client.xgroup_create(STREAM, "g", "0")
            read = Command(("XREADGROUP", "GROUP", "g", "m", "STREAMS", STREAM, ">"))
            reply = await execute_unparsed(client, read)
        finally:
            await client.aclose()
        ((_, ((_, fields),)),) = reply
        return fields

    fields = asyncio.run(main())
    if url.startswith("memory://"):
        assert isinstance(fields, dict) and fields[b"t"] == b"paid"
    else:
        assert isinstance(fields, list) and fields[8:10] == [b"t", b"paid"]


def test_the_listener_sees_the_same_message_from_either_shape(url: str) -> None:
    seen: list[tuple[str | None, tuple[str, ...], bytes, dict[str, str]]] = []

    async def listener(msg: ReceivedMessage) -> None:
        seen.append((msg.tag, msg.keys, msg.body, msg.properties))

    async def main() -> None:
        await create_topic(url, "orders", queues=1)
        await send(url, [Message("orders", b"plain", tag="paid", keys=["k1", "k2"])])
        await send(url, [Message("orders", b"with props", properties={"a": "b"})])  # not plain: mapped first
        consumer = PushConsumer(url, "g", settings=fast_settings())
        consumer.subscribe("orders", "*", listener)
        await consumer.start()
        try:
            await until(lambda: len(seen) == 2)
        finally:
            await consumer.stop()

    asyncio.run(main())
    assert seen == [("paid", ("k1", "k2"), b"plain", {}), (None, (), b"with props", {"a": "b"})]


def test_a_blocking_read_cut_by_a_role_change_is_a_connection_error(private_redis: RedisServer) -> None:
    """UNBLOCKED (the master turned replica under a blocked read) means the server is away for this
    read, as redis-py's path through LaneClient says: the fetch backs off and re-reads its own entries."""

    async def main() -> None:
        client, admin = open_client(private_redis.url), open_client(private_redis.url)
        try:
            await client.xgroup_create(STREAM, "g", "$", mkstream=True)
            read = Command(("XREADGROUP", "GROUP", "g", "m", "BLOCK", 5000, "STREAMS", STREAM, ">"))
            blocked = asyncio.ensure_future(execute_unparsed(client, read))
            while int((await admin.info("clients"))["blocked_clients"]) == 0:
                await asyncio.sleep(0.01)
            await admin.execute_command("REPLICAOF", "127.0.0.1", "1")  # nobody there: the role is enough
            with pytest.raises(RedisConnectionError, match="changed role"):
                await blocked
        finally:
            await admin.execute_command("REPLICAOF", "NO", "ONE")
            await client.aclose()
            await admin.aclose()

    asyncio.run(main())
