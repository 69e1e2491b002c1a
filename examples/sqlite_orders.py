"""An order row and its "order created" message, committed together or not at all (SQLite + transactions).

python examples/sqlite_orders.py                      # in-process memory:// backend, a temporary database
RMQ_URL=redis://localhost:6379/0 python examples/sqlite_orders.py

The local transaction inserts the order row; the message is committed only if
that insert committed. If the process dies in between, the check-back of the
"order-service" producer group looks the row up and commits or rolls back.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from typing import Any

from pydantic import BaseModel

from rmq_style import (
    Admin,
    HalfMessage,
    Message,
    TopicExistsError,
    TransactionProducer,
    TransactionSendResult,
    TransactionState,
)

GROUP = "order-service"
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY, user_id TEXT, cents INTEGER, msg_id TEXT)"
)


class OrderCreated(BaseModel):
    order_id: str
    user_id: str
    amount_cents: int


class OrderService:
    """Creates orders; one instance per process (each is a live member of the producer group)."""

    def __init__(self, url: str, db_path: str, **tx_options: Any) -> None:
        self.db_path = db_path
        with contextlib.closing(self._connect()) as db, db:
            db.execute(SCHEMA)
        self.producer = TransactionProducer(url, GROUP, self.check, **tx_options)

    def _connect(self) -> sqlite3.Connection:
        # a connection per call: checks run in the producer's background thread
        return sqlite3.connect(self.db_path)

    def create_order(self, order: OrderCreated, *, crash_after_insert: bool = False) -> TransactionSendResult:
        message = Message("orders", order, tag="created", keys=[order.order_id])
        return self.producer.send_in_transaction(
            message, self._insert, crash_after_insert, sharding_key=order.user_id
        )

    def _insert(self, message: HalfMessage, crash_after_insert: bool) -> TransactionState:
        """The local transaction: the row and the half message's msg id, committed by SQLite."""
        order = message.decode(OrderCreated)
        try:
            with contextlib.closing(self._connect()) as db, db:  # `with db`: commit, or roll back on error
                db.execute(
                    "INSERT INTO orders VALUES (?, ?, ?, ?)",
                    (order.order_id, order.user_id, order.amount_cents, message.msg_id),
                )
        except sqlite3.IntegrityError:  # a duplicate order: nothing was written, drop the message
            return TransactionState.ROLLBACK
        if crash_after_insert:  # stands for a process that dies before it says COMMIT
            raise RuntimeError("crashed between the database commit and the message commit")
        return TransactionState.COMMIT

    def check(self, message: HalfMessage) -> TransactionState:
        """The check-back: the message is committed iff its row exists (and was written for it)."""
        with contextlib.closing(self._connect()) as db:
            row = db.execute("SELECT msg_id FROM orders WHERE order_id = ?", (message.keys[0],)).fetchone()
        # the insert is short (far below transaction_timeout_ms): a missing row will not appear later
        if row is not None and row[0] == message.msg_id:
            return TransactionState.COMMIT
        return TransactionState.ROLLBACK

    def close(self) -> None:
        self.producer.close()


def main(url: str) -> None:
    with Admin(url) as admin, contextlib.suppress(TopicExistsError):
        admin.create_topic("orders", queues=4)
    with tempfile.TemporaryDirectory() as tmp:
        service = OrderService(url, os.path.join(tmp, "orders.db"))
        try:
            for n in range(3):
                order = OrderCreated(order_id=f"o-{n}", user_id=f"user-{n % 2}", amount_cents=100 * n)
                result = service.create_order(order)
                print(order.order_id, result.state, result.send_result and result.send_result.queue_offset)
            duplicate = service.create_order(OrderCreated(order_id="o-0", user_id="user-0", amount_cents=1))
            print("o-0 again", duplicate.state)
        finally:
            service.close()


if __name__ == "__main__":
    main(os.environ.get("RMQ_URL", "memory://sqlite-orders"))
