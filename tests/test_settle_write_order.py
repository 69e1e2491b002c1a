"""A retry or a dead letter whose write fails leaves the entry pending: never acknowledged and lost.

retry.lua and dead_letter.lua write first (the retry record, the dead-letter entry) and
acknowledge last. A key of the wrong type (written by another client, or by a bug) makes
the write fail inside the script; the entry must then still be pending at its consumer,
to be read again, and nothing half-done may remain. Both tests fail when the scripts
acknowledge before they write.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ResponseError

from rmq_style import Keys, Message
from rmq_style._async._io import execute, open_client
from rmq_style.push.redis_calls import dead_letter_call, packed_record, retry_call
from tests.pushkit import create_topic, send

QK = Keys().queue("orders", 0)


def _run(url: str, spoil: str, call_of: Any) -> None:
    async def main() -> None:
        await create_topic(url, queues=1)
        await send(url, [Message("orders", {"n": 1})])
        client = open_client(url)
        try:
            await client.xgroup_create(QK.stream, "billing", "0")
            reply = await client.xreadgroup("billing", "a", {QK.stream: ">"}, count=1)
            entry_id, fields = reply[0][1][0]
            await client.set(spoil, "not a zset, hash or stream")
            (outcome,) = await execute(client, [call_of(entry_id, fields)])
            assert isinstance(outcome, ResponseError) and "WRONGTYPE" in str(outcome), outcome
            pending = await client.xpending_range(QK.stream, "billing", "-", "+", 10)
            assert [(p["message_id"], p["consumer"]) for p in pending] == [(entry_id, b"a")]
            if spoil != QK.retry("billing"):  # no retry due without its record
                assert await client.zcard(QK.retry("billing")) == 0
        finally:
            await client.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("spoiled", ["retry", "retry_body"])
def test_a_retry_whose_write_fails_leaves_the_entry_pending(url: str, spoiled: str) -> None:
    spoil = QK.retry("billing") if spoiled == "retry" else QK.retry_body("billing")

    def call_of(entry_id: bytes, fields: dict[bytes, bytes]) -> Any:
        record = packed_record(fields, entry_id, 1)
        return retry_call(
            QK, "billing", QK.stream, entry_id, delete=False, msg_id=fields[b"i"], delay_ms=10, record=record
        )

    _run(url, spoil, call_of)


def test_a_dead_letter_whose_write_fails_leaves_the_entry_pending(url: str) -> None:
    def call_of(entry_id: bytes, fields: dict[bytes, bytes]) -> Any:
        record = packed_record(fields, entry_id, 0)
        return dead_letter_call(
            QK, "billing", QK.stream, entry_id, delete=False, msg_id=fields[b"i"], record=record, reason="x"
        )

    _run(url, QK.dlq("billing"), call_of)
