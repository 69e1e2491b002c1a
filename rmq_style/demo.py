"""The embedded demo: a topic of orders produced with sharding keys, then its queues shown."""

from __future__ import annotations

import time
from datetime import timedelta

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from ._message import Message
from ._sync.admin import Admin
from ._sync.producer import Producer


class Order(BaseModel):
    order_id: int
    user_id: str
    amount_cents: int


def run_demo(url: str, count: int, console: Console) -> None:
    started = time.monotonic()
    console.rule(f"rmq_style demo on {url}")
    with Admin(url) as admin, Producer(url) as producer:
        if "orders" in {t.topic for t in admin.list_topics()}:
            admin.delete_topic("orders")
        admin.create_topic("orders", queues=4)
        console.print("created topic [bold]orders[/] with 4 queues")
        orders = [Order(order_id=n, user_id=f"user-{n % 20}", amount_cents=100 + n) for n in range(count)]
        results = producer.send_batch(
            [Message("orders", o, tag="created", keys=[f"order-{o.order_id}"]) for o in orders],
            sharding_key=lambda m: m.body.user_id,
        )
        console.print(f"sent {len(results)} orders in one batch, routed by user id (same user, same queue)")
        delayed = producer.send(Message("orders", Order(order_id=-1, user_id="late", amount_cents=0)),
                                delay=timedelta(milliseconds=200))  # fmt: skip
        console.print(f"sent one delayed order, held until server time {delayed.deliver_at_ms}")
        while admin.release_due("orders") == 0:
            time.sleep(0.05)  # the demo waits for the server clock to pass the due time
        info = admin.describe_topic("orders")
    table = Table(title="topic orders")
    for column in ("queue", "messages", "queue offsets", "first offset", "last offset"):
        table.add_column(column)
    for q in info.queues:
        table.add_row(str(q.queue_id), str(q.length), f"{q.min_queue_offset}..{q.max_queue_offset}",
                      q.first_offset or "", q.last_offset or "")  # fmt: skip
    console.print(table)
    console.print(f"done in {time.monotonic() - started:.2f} s")
