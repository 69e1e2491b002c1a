"""An orderly push consumer process for the fault tests.

Usage: python -m tests.orderly_worker URL GROUP HANDLER_MS [ORDER]

ORDER is ``queue`` (orderly, the default) or ``key`` (key-ordered, the key being
the body's ``key``: tests/test_key_order_faults.py).

Prints ``ready MEMBER`` once consuming. Each handled message is appended to the
Redis list ``test:handled`` as ``msg_id key seq`` at the end of its handler
(a message cut off by a kill is not recorded). A message whose body has
``"pause": true`` announces itself once on ``test:in_handler`` and then takes
0.5 s, so a test can SIGSTOP its owner in the middle of a handler. The
consumer's ``fenced`` count is kept in the hash ``test:fenced`` (field: member).
SIGTERM stops the consumer gracefully (exit code 0).
"""

from __future__ import annotations

import asyncio
import signal
import sys

import redis.asyncio as redis_asyncio
import structlog

from rmq_style import PushConsumer, ReceivedMessage
from tests.pushkit import fast_settings


async def main(url: str, group: str, handler_ms: int, order: str) -> None:
    client = redis_asyncio.Redis.from_url(url)
    consumer = PushConsumer(
        url, group, fast_settings(concurrency=8, orderly_lease_ms=1000, suspend_current_queue_time_ms=20)
    )

    async def listener(msg: ReceivedMessage) -> None:
        body = msg.value()
        if body.get("pause") and await client.set("test:pause-once", consumer.member, nx=True):
            await client.rpush("test:in_handler", consumer.member)
            await asyncio.sleep(0.5)
        elif handler_ms:
            await asyncio.sleep(handler_ms / 1000)
        await client.rpush("test:handled", f"{msg.msg_id} {body['key']} {body['seq']}")

    if order == "key":
        consumer.subscribe("orders", "*", listener, order="key", order_key=lambda m: m.value()["key"])
    else:
        consumer.subscribe("orders", "*", listener, orderly=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await consumer.start()
    print("ready", consumer.member, flush=True)
    while not stop.is_set():
        await client.hset("test:fenced", consumer.member, consumer.stats.fenced)
        try:
            await asyncio.wait_for(stop.wait(), 0.05)
        except TimeoutError:
            continue
    await consumer.stop()
    await client.hset("test:fenced", consumer.member, consumer.stats.fenced)
    await client.aclose()


if __name__ == "__main__":
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout says "ready"
    asyncio.run(
        main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "queue")
    )
