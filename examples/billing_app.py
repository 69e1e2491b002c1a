"""An example App: billing orders, with a handler that fails for bad amounts.

rmq-style worker examples.billing_app:app --processes 2      (RMQ_URL picks the Redis)
"""

from __future__ import annotations

from pydantic import BaseModel

from rmq_style import App, DeadLetter, ReceivedMessage


class OrderCreated(BaseModel):
    order_id: int
    amount_cents: int


app = App(auto_create_topics=True)  # RMQ_URL and other RMQ_ variables configure it
billed: list[int] = []


@app.subscribe("orders", group="billing", tags="created", max_reconsume_times=2)
def bill(order: OrderCreated, msg: ReceivedMessage) -> None:
    if order.amount_cents < 0:
        raise DeadLetter(f"negative amount in order {order.order_id}")
    if order.amount_cents == 0:
        raise ValueError("amount not yet known")  # retried, then dead-lettered
    billed.append(order.order_id)
