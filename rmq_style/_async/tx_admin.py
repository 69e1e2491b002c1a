"""Transaction administration of AsyncAdmin: pending and discarded half messages of a producer group."""

from __future__ import annotations

from typing import Any, TypeVar

from .._call_values import Flow
from .._message import SendResult
from .._names import Keys
from .._transaction import TransactionState
from .._tx_admin import (
    HalfRecord,
    TxQueueReport,
    instances_flow,
    records_flow,
    report_flow,
    resolve_flow,
    resume_flow,
)

__all__ = ["AsyncTransactionAdmin"]

T = TypeVar("T")


class AsyncTransactionAdmin:
    """Mixed into AsyncAdmin (which provides ``keys`` and ``_drive``)."""

    keys: Keys

    async def _drive(self, flow: Flow[T]) -> T:  # pragma: no cover - AsyncAdmin's
        raise NotImplementedError

    async def pending_transactions(self, group: str, topic: str | None = None) -> list[HalfRecord]:
        """Half messages of producer *group* waiting for their commit, rollback or check, oldest first."""
        return [r for r in await self._drive(records_flow(self.keys, group, topic)) if r.status == "pending"]

    async def discarded_transactions(self, group: str, topic: str | None = None) -> list[HalfRecord]:
        """Half messages of *group* discarded after their last check (not delivered, not lost)."""
        records = await self._drive(records_flow(self.keys, group, topic))
        return [r for r in records if r.status == "discarded"]

    async def transaction(self, group: str, msg_id: str) -> HalfRecord | None:
        """One pending or discarded half message of *group*, or None."""
        for record in await self._drive(records_flow(self.keys, group)):
            if record.msg_id == msg_id:
                return record
        return None

    async def transaction_report(self, group: str, topic: str | None = None) -> list[TxQueueReport]:
        """Per queue: pending half messages, the oldest one's age, the most checks, discarded ones."""
        return await self._drive(report_flow(self.keys, group, topic))

    async def transaction_instances(self, group: str) -> dict[str, int]:
        """Instances of producer *group* that check (heartbeats), with ms since their last heartbeat.

        An instance silent for longer than its ``member_expiry_ms`` (6 s) is gone; with none
        live, half messages wait for their checks.
        """
        return await self._drive(instances_flow(self.keys, group))

    async def resume_transaction(self, group: str, msg_id: str) -> None:
        """Checks of a discarded half message start again (check count 0)."""
        await self._drive(resume_flow(self.keys, group, msg_id))

    async def commit_transaction(self, group: str, msg_id: str) -> SendResult:
        """Commit a pending or discarded half message: it becomes visible in its queue now."""
        result = await self._drive(resolve_flow(self.keys, group, msg_id, TransactionState.COMMIT))
        return _sent(result)

    async def rollback_transaction(self, group: str, msg_id: str) -> None:
        """Roll back a pending or discarded half message for good."""
        await self._drive(resolve_flow(self.keys, group, msg_id, TransactionState.ROLLBACK))


def _sent(result: Any) -> SendResult:
    if not isinstance(result, SendResult):
        raise TypeError("a commit returns where the message landed")
    return result
