"""A push consumer process for the fault tests.

Usage: python -m tests.push_worker URL GROUP HANDLER_MS [INSTANCE]

With INSTANCE, the consumer is a broadcasting member of that instance name.

Each handled message's id goes into the Redis set ``test:handled`` at the end
of the handler, so a message cut off by a kill is not counted; ``test:counts``
counts the handler calls per message id, and ``test:in_flight:PID`` holds the
consumer's in-flight count (refreshed every 20 ms).
"""

from __future__ import annotations

import asyncio
import os
import sys

import redis.asyncio as redis_asyncio
import structlog

from rmq_style import PushConsumer, ReceivedMessage
from tests.pushkit import fast_settings


async def main(url: str, group: str, handler_ms: int, instance: str | None = None) -> None:
    client = redis_asyncio.Redis.from_url(url)

    async def listener(msg: ReceivedMessage) -> None:
        await asyncio.sleep(handler_ms / 1000)
        await client.sadd("test:handled", msg.msg_id)
        await client.hincrby("test:counts", msg.msg_id, 1)

    model = {"message_model": "broadcasting", "instance_name": instance} if instance else {}
    consumer = PushConsumer(url, group, fast_settings(concurrency=8, **model))
    consumer.subscribe("orders", "*", listener)
    await consumer.start()
    print("ready", flush=True)
    while True:
        await client.set(f"test:in_flight:{os.getpid()}", consumer.in_flight)
        await asyncio.sleep(0.02)


if __name__ == "__main__":
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout says "ready"
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:5]))
