"""A FastAPI service: publishes from an endpoint, consumes in-process, reports health.

    RMQ_URL=redis://localhost:6379/0 uvicorn examples.fastapi_app:web

The consumer runs inside the web process (started and drained by the
lifespan); for real loads, run it in workers: rmq-style worker examples.fastapi_app:app
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from rmq_style import App, Message, ReceivedMessage


class OrderCreated(BaseModel):
    order_id: int
    user_id: str
    amount_cents: int


app = App(auto_create_topics=True)  # RMQ_URL and other RMQ_ variables configure it
confirmed: list[int] = []


@app.subscribe("orders", group="confirmations", tags="created")
async def confirm(order: OrderCreated, msg: ReceivedMessage) -> None:
    confirmed.append(order.order_id)


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    stop, ready = asyncio.Event(), asyncio.Event()
    async with app.async_producer() as producer:
        web.state.producer = producer
        consumer = asyncio.create_task(app.run(stop, ready=ready))
        await asyncio.wait(
            [asyncio.ensure_future(ready.wait()), consumer], return_when=asyncio.FIRST_COMPLETED
        )
        if consumer.done():
            consumer.result()  # start-up failed: raise it
        try:
            yield
        finally:
            stop.set()
            await consumer


web = FastAPI(lifespan=lifespan)


@web.post("/orders")
async def create_order(order: OrderCreated) -> dict[str, Any]:
    result = await web.state.producer.send(
        Message("orders", order, tag="created", keys=[f"order-{order.order_id}"]), sharding_key=order.user_id
    )
    return {"msg_id": result.msg_id, "queue": result.queue.queue_id, "offset": result.offset}


@web.get("/health")
async def health() -> dict[str, Any]:
    return app.health()
