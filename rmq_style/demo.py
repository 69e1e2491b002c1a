"""The embedded demo: orders flow through a concurrent group, an orderly group and a pull consumer.

Runs on memory:// (in-process fakeredis) unless a Redis URL is given, and ends
with a summary within about ten seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from typing import Any

from pydantic import BaseModel
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from ._async.admin import AsyncAdmin
from ._async.producer import AsyncProducer
from ._async.pull import AsyncPullConsumer
from ._membership import MembershipSettings
from ._message import Message, MessageQueue, ReceivedMessage
from .app import App

TOPIC, QUEUES = "demo-orders", 4


class Order(BaseModel):
    order_id: int
    user_id: str
    step: int  # per user: 0, 1, 2 ... (the orderly group checks they come in order)
    amount_cents: int


class _Stats:
    def __init__(self) -> None:
        self.billed: set[int] = set()
        self.attempts: Counter[int] = Counter()
        self.shipped: dict[str, list[int]] = defaultdict(list)
        self.pulled = 0


def build_app(url: str, stats: _Stats) -> App:
    app = App(url)

    @app.subscribe(TOPIC, group="billing", tags="created", max_reconsume_times=2, retry_delays_ms=(150,))
    async def bill(order: Order, msg: ReceivedMessage) -> None:
        stats.attempts[order.order_id] += 1
        if order.amount_cents < 0:
            raise ValueError(f"negative amount {order.amount_cents}")  # poison: retried, then dead-lettered
        if order.order_id % 25 == 0 and msg.reconsume_times == 0:
            raise ConnectionError("payment gateway timeout")  # transient: the retry succeeds
        stats.billed.add(order.order_id)

    @app.subscribe(TOPIC, group="shipping", tags="created", orderly=True)
    async def ship(order: Order) -> None:
        stats.shipped[order.user_id].append(order.step)

    return app


def _table(rows: list[Any], stats: _Stats, sent: int, elapsed: float) -> Group:
    table = Table(title=f"{TOPIC}: progress after {elapsed:.1f} s")
    for column in ("group", "queue", "max offset", "consumed", "lag", "pending", "retrying", "dead"):
        table.add_column(column, justify="right")
    for group, row in rows:
        p = row.progress
        table.add_row(
            group,
            str(p.queue.queue_id),
            str(p.max_queue_offset),
            str(p.consumed_queue_offset),
            str(p.lag),
            str(p.pending),
            str(row.retrying),
            str(row.dead_letters),
        )
    summary = Table.grid()
    summary.add_row(
        f"sent {sent}, billed {len(stats.billed)}, shipped {sum(map(len, stats.shipped.values()))}, "
        f"pulled by analytics {stats.pulled}"
    )
    return Group(table, summary)


async def _pull_all(url: str, stats: _Stats, stop: asyncio.Event) -> None:
    """The analytics pull consumer: reads every queue from the start, commits as it goes."""
    async with AsyncPullConsumer(url, "analytics") as consumer:
        positions = {MessageQueue(TOPIC, q): "0-0" for q in range(QUEUES)}
        while not stop.is_set():
            got = 0
            for queue, offset in positions.items():
                result = await consumer.pull(queue, offset, max_nums=64)
                positions[queue] = result.next_offset
                got += len(result.messages)
                if result.messages:
                    await consumer.commit(queue, result.next_offset)
            stats.pulled += got
            if not got:
                await asyncio.sleep(0.05)  # the demo's polling pace when all queues are read


async def demo(url: str, count: int, console: Console) -> dict[str, Any]:
    started = time.monotonic()
    stats = _Stats()
    async with AsyncAdmin(url) as admin:
        if TOPIC in {t.topic for t in await admin.list_topics()}:
            await admin.delete_topic(TOPIC)
        await admin.create_topic(TOPIC, queues=QUEUES)
    app = build_app(url, stats)
    stop, ready = asyncio.Event(), asyncio.Event()
    fast: dict[str, Any] = {
        "consume_from": "first",
        "poll_timeout_ms": 100,
        "retry_poll_ms": 50,
        "membership": MembershipSettings(heartbeat_interval_ms=200, member_expiry_ms=3000),
    }
    running = asyncio.ensure_future(app.run(stop, ready=ready, **fast))
    puller = asyncio.ensure_future(_pull_all(url, stats, stop))
    await asyncio.wait([asyncio.ensure_future(ready.wait()), running], return_when=asyncio.FIRST_COMPLETED)
    if running.done():
        running.result()
    orders = [
        Order(order_id=n, user_id=f"user-{n % 20}", step=n // 20, amount_cents=100 + n) for n in range(count)
    ]
    orders.append(Order(order_id=count, user_id="user-poison", step=0, amount_cents=-1))
    async with AsyncProducer(url) as producer:
        for start in range(0, len(orders), 50):
            chunk = orders[start : start + 50]
            await producer.send_batch(
                [Message(TOPIC, o, tag="created", keys=[f"order-{o.order_id}"]) for o in chunk],
                sharding_key=lambda m: m.body.user_id,
            )
    rows: list[Any] = []
    with Live(console=console, refresh_per_second=8, transient=False) as live:
        async with AsyncAdmin(url) as admin:
            deadline = started + 25
            while time.monotonic() < deadline:
                rows = [(g, r) for g in ("billing", "shipping") for r in await admin.progress(g, TOPIC)]
                live.update(_table(rows, stats, len(orders), time.monotonic() - started))
                settled = all(
                    r.progress.lag == 0 and r.progress.pending == 0 and r.retrying == 0 for _, r in rows
                )
                if settled and stats.pulled >= len(orders) and rows:
                    break
                await asyncio.sleep(0.1)  # the table's refresh pace
            dead = await admin.dead_letters("billing", TOPIC)
    console.print()
    stop.set()
    await running
    await puller
    in_order = all(steps == sorted(steps) for steps in stats.shipped.values())
    summary: dict[str, Any] = {
        "sent": len(orders),
        "billed": len(stats.billed),
        "retried": sum(1 for n, a in stats.attempts.items() if a > 1 and n in stats.billed),
        "dead_letters": [(d.message.msg_id, d.reason) for d in dead],
        "shipped": sum(map(len, stats.shipped.values())),
        "shipped_in_order_per_user": in_order,
        "pulled": stats.pulled,
        "seconds": round(time.monotonic() - started, 2),
    }
    console.print(
        f"billed {summary['billed']} of {summary['sent']} orders; {summary['retried']} succeeded on a retry; "
        f"{len(dead)} dead letter(s):"
    )
    for msg_id, reason in summary["dead_letters"]:
        console.print(f"  {msg_id}: {reason}", markup=False)
    console.print(f"shipping handled {summary['shipped']} orders, per user in order: {in_order}")
    console.print(f"analytics pulled {summary['pulled']} messages; done in {summary['seconds']} s")
    return summary


def run_demo(url: str, count: int, console: Console) -> dict[str, Any]:
    console.rule(f"rmq_style demo on {url}")
    return asyncio.run(demo(url, count, console))
