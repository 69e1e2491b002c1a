"""Publish orders from a plain (WSGI-style) program with the sync producer.

python examples/produce.py                      # in-process memory:// backend
RMQ_URL=redis://localhost:6379/0 python examples/produce.py
"""

from __future__ import annotations

import contextlib
import os

from pydantic import BaseModel

from rmq_style import Admin, Message, Producer, TopicExistsError


class OrderCreated(BaseModel):
    order_id: int
    user_id: str


def main(url: str) -> None:
    with Admin(url) as admin, contextlib.suppress(TopicExistsError):  # created by an earlier run
        admin.create_topic("orders", queues=8)
    with Producer(url) as producer:
        for n in range(10):
            order = OrderCreated(order_id=n, user_id=f"user-{n % 3}")
            result = producer.send(Message("orders", order, tag="created"), sharding_key=order.user_id)
            print(result.msg_id, result.queue, result.queue_offset)


if __name__ == "__main__":
    main(os.environ.get("RMQ_URL", "memory://example"))
