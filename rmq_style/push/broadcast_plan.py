"""Settling for a broadcasting member (no I/O): the calls of one round, read as ``settle_plan`` reads them.

A broadcasting member reads its queues with XREAD from its own position: an
entry of a queue stream has no pending list to acknowledge, so a success
needs no call (the member's position moves past it later, see
``broadcast.Positions``). A failure writes the member's own retry record
(``bcast_retry.lua``) or a dead letter naming the member
(``bcast_dead_letter.lua``). Entries of the member's retry stream are copies,
deleted once settled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .._call_values import Call, command, run_script
from .outcomes import Ack, DeadLetterIt, RetryLater
from .redis_calls import packed_record
from .settle_plan import SettleRound
from .state import Delivery

__all__ = ["BroadcastPlanner"]


@dataclass(frozen=True, slots=True)
class BroadcastPlanner:
    """``plan_round`` of a broadcasting member named *instance*."""

    instance: str

    def __call__(self, group: str, deliveries: Sequence[Delivery]) -> SettleRound:
        calls: list[Call] = []
        owners: list[tuple[list[Delivery], int]] = []
        quiet: dict[str, list[Delivery]] = {}  # queue entries that succeeded: no call
        deletes: dict[str, list[Delivery]] = {}  # retry stream entries that succeeded
        for d in deliveries:
            decision, stream = d.decision, d.stream
            if isinstance(decision, Ack):
                if stream.retry:
                    deletes.setdefault(stream.key, []).append(d)
                else:
                    quiet.setdefault(stream.key, []).append(d)
                continue
            qk = stream.queue.keys
            msg_id = d.fields.get(b"i", b"")
            flag = "1" if stream.retry else "0"
            if isinstance(decision, RetryLater):
                record = packed_record(d.fields, d.origin_offset, decision.reconsume_times)
                call = run_script(
                    "bcast_retry",
                    (
                        stream.key,
                        qk.member_retry(group, self.instance),
                        qk.member_retry_body(group, self.instance),
                    ),
                    (d.entry_id, flag, msg_id, decision.delay_ms, record),
                )
            elif isinstance(decision, DeadLetterIt):
                record = packed_record(d.fields, d.origin_offset, None)
                call = run_script(
                    "bcast_dead_letter",
                    (stream.key, qk.dlq(group)),
                    (group, d.entry_id, flag, msg_id, record, qk.topic, qk.queue_id, decision.reason,
                     self.instance),
                )  # fmt: skip
            else:
                raise AssertionError(f"delivery without a decision: {d}")
            calls.append(call)
            owners.append(([d], 0))
        for key, group_deliveries in deletes.items():
            calls.append(command("XDEL", key, *[d.entry_id for d in group_deliveries]))
            owners.append((group_deliveries, 0))
        owners += [(same_stream, -1) for same_stream in quiet.values()]
        return SettleRound(calls, owners)
