"""Every fenced script refuses a caller whose lease is gone, and writes nothing.

The fenced scripts are those that include ``lease`` (orderly_read,
orderly_settle, orderly_dead_letter) and the compare-and-x lock scripts
(lock_renew, lock_release). Each is called here twice over: by a stale token
of the same member (it lost the lease and took it again: a/1 against a/2)
and by another member (b/1), on a real server and on fakeredis. Each test
fails if that script's check is removed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rmq_style import Keys, Message
from rmq_style._async._io import execute, open_client
from rmq_style.push.orderly_leases import (
    acquire_call,
    fenced_dead_letter_call,
    is_fenced,
    read_call,
    release_call,
    renew_call,
    settle_call,
)
from rmq_style.push.redis_calls import packed_record
from tests.pushkit import create_topic, send

QK = Keys().queue("orders", 0)
HOLDER = "a/2"  # the current owner; "a/1" is the same member's lost lease
INTRUDERS = ["a/1", "b/1"]


async def _setup(url: str) -> tuple[Any, list[tuple[bytes, dict[bytes, bytes]]]]:
    """One queue with 3 entries; a/1 read 2 of them, lost its lease, and a/2 holds it now."""
    await create_topic(url, queues=1)
    await send(url, [Message("orders", {"n": n}) for n in range(3)])
    client = open_client(url)
    await client.xgroup_create(QK.stream, "billing", "0")
    assert await execute(client, [acquire_call(QK, "billing", "a/1", 60_000)]) == [True]
    (reply,) = await execute(client, [read_call(QK, "billing", "a", "a/1", 2, [])])
    await client.delete(QK.lock("billing"))  # the lease ran out
    assert await execute(client, [acquire_call(QK, "billing", HOLDER, 60_000)]) == [True]
    entries = [(entry_id, dict(zip(flat[::2], flat[1::2], strict=True))) for entry_id, flat in reply[1]]
    return client, entries


async def _state(client: Any) -> tuple[Any, ...]:
    """Everything a fenced script could change."""
    pending = await client.xpending_range(QK.stream, "billing", "-", "+", 10)
    return (
        [(p["message_id"], p["consumer"]) for p in pending],
        await client.hgetall(QK.held("billing")),
        await client.xlen(QK.dlq("billing")),
        await client.get(QK.lock("billing")),
        await client.pttl(QK.lock("billing")) > 50_000,
        (await client.xinfo_groups(QK.stream))[0]["last-delivered-id"],
    )


def _run(url: str, body: Any) -> None:
    async def main() -> None:
        client, entries = await _setup(url)
        try:
            before = await _state(client)
            await body(client, entries)
            assert await _state(client) == before
        finally:
            await client.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("intruder", INTRUDERS)
def test_orderly_read_is_fenced(url: str, intruder: str) -> None:
    async def body(client: Any, entries: Any) -> None:
        (refused,) = await execute(client, [read_call(QK, "billing", "b", intruder, 10, [entries[0][0]])])
        assert is_fenced(refused), refused

    _run(url, body)


@pytest.mark.parametrize("intruder", INTRUDERS)
def test_orderly_settle_is_fenced(url: str, intruder: str) -> None:
    async def body(client: Any, entries: Any) -> None:
        call = settle_call(
            QK, "billing", intruder, [entries[0][0]], blocked=entries[1][0], attempts=1, owner="b", reason="x"
        )
        (refused,) = await execute(client, [call])
        assert is_fenced(refused), refused

    _run(url, body)


@pytest.mark.parametrize("intruder", INTRUDERS)
def test_orderly_dead_letter_is_fenced(url: str, intruder: str) -> None:
    async def body(client: Any, entries: Any) -> None:
        (first_id, _), (dead_id, fields) = entries
        record = packed_record(fields, dead_id, 3)
        call = fenced_dead_letter_call(
            QK, "billing", intruder, dead_id, fields[b"i"], record, "boom", [first_id]
        )
        (refused,) = await execute(client, [call])
        assert is_fenced(refused), refused

    _run(url, body)


@pytest.mark.parametrize("intruder", INTRUDERS)
def test_lock_renew_is_fenced(url: str, intruder: str) -> None:
    async def body(client: Any, entries: Any) -> None:
        await client.pexpire(QK.lock("billing"), 55_000)
        assert await execute(client, [renew_call(QK, "billing", intruder, 60_000)]) == [0]
        assert await client.pttl(QK.lock("billing")) <= 55_000  # not extended
        await client.pexpire(QK.lock("billing"), 60_000)

    _run(url, body)


@pytest.mark.parametrize("intruder", INTRUDERS)
def test_lock_release_is_fenced(url: str, intruder: str) -> None:
    async def body(client: Any, entries: Any) -> None:
        assert await execute(client, [release_call(QK, "billing", intruder)]) == [0]

    _run(url, body)


def test_the_holder_passes_every_check(url: str) -> None:
    """The same calls by the holder do write: the refusals above are the fence, not a broken call."""

    async def main() -> None:
        client, entries = await _setup(url)
        (first_id, _), (dead_id, fields) = entries
        try:
            assert await execute(client, [renew_call(QK, "billing", HOLDER, 60_000)]) == [1]
            (read,) = await execute(client, [read_call(QK, "billing", "a", HOLDER, 10, [])])
            assert read[0] == b"pending" and [e[0] for e in read[1]] == [first_id, dead_id]
            call = settle_call(QK, "billing", HOLDER, [first_id], blocked=dead_id, attempts=1, owner="a")
            assert await execute(client, [call]) == [1]
            record = packed_record(fields, dead_id, 1)
            call = fenced_dead_letter_call(QK, "billing", HOLDER, dead_id, fields[b"i"], record, "boom", [])
            (dlq_id,) = await execute(client, [call])
            assert dlq_id not in (0, b"0") and await client.xlen(QK.dlq("billing")) == 1
            assert await client.hgetall(QK.held("billing")) == {}
            assert await execute(client, [release_call(QK, "billing", HOLDER)]) == [1]
            assert await client.get(QK.lock("billing")) is None
        finally:
            await client.aclose()

    asyncio.run(main())
