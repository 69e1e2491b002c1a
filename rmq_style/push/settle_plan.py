"""Settling delivered entries in Redis (no I/O): the calls of one coalesced round and what their replies mean.

Acks are coalesced per stream (one XACK with many ids); a retry or a dead
letter is one script each, since it writes more than the ack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._call_values import Call
from .._replies import ReplyCode, classify
from .outcomes import Ack, DeadLetterIt, RetryLater
from .redis_calls import ack_calls, dead_letter_call, packed_record, retry_call
from .state import Delivery

__all__ = ["SettleRound", "Settled", "plan_round"]


@dataclass(frozen=True, slots=True)
class Settled:
    delivery: Delivery
    outcome: str  # "acked" | "retried" | "dead_lettered" | "already_settled" | "group_lost"
    detail: Any = None


@dataclass(slots=True)
class SettleRound:
    calls: list[Call]
    # per call: the deliveries it settles, and how many calls follow it that belong to it (XDEL);
    # -1: deliveries settled without a call
    owners: list[tuple[list[Delivery], int]]

    def read(self, replies: Sequence[Any]) -> tuple[list[Settled], list[tuple[Delivery, Exception]]]:
        """What happened to each delivery; deliveries whose call failed come back with the error."""
        acked, done, failed = self.read_grouped(replies)
        for deliveries in acked:
            done.extend(Settled(d, "acked") for d in deliveries)
        return done, failed

    def read_grouped(
        self, replies: Sequence[Any]
    ) -> tuple[list[list[Delivery]], list[Settled], list[tuple[Delivery, Exception]]]:
        """As ``read``, but the acked deliveries come as one list per stream (the common case, in bulk)."""
        acked: list[list[Delivery]] = []
        done: list[Settled] = []
        failed: list[tuple[Delivery, Exception]] = []
        index = 0
        for deliveries, extra in self.owners:
            if extra < 0:  # acked without a call: a broadcasting member's position moves later
                acked.append(deliveries)
                continue
            reply = replies[index]
            index += 1 + extra
            if classify(reply) is ReplyCode.NOGROUP:
                done.extend(Settled(d, "group_lost") for d in deliveries)
            elif isinstance(reply, Exception):
                failed.extend((d, reply) for d in deliveries)
            elif isinstance(deliveries[0].decision, Ack):
                acked.append(deliveries)
            elif reply in (0, b"0"):
                done.append(Settled(deliveries[0], "already_settled"))
            elif isinstance(deliveries[0].decision, RetryLater):
                done.append(Settled(deliveries[0], "retried", reply))
            else:
                done.append(Settled(deliveries[0], "dead_lettered", reply))
        return acked, done, failed


def plan_round(group: str, deliveries: Sequence[Delivery]) -> SettleRound:
    calls: list[Call] = []
    owners: list[tuple[list[Delivery], int]] = []
    acks: dict[str, list[Delivery]] = {}
    for d in deliveries:
        decision = d.decision
        stream = d.stream
        if isinstance(decision, Ack):
            same_stream = acks.get(stream.key)
            if same_stream is None:
                acks[stream.key] = [d]
            else:
                same_stream.append(d)
            continue
        msg_id = d.fields.get(b"i", b"")
        if isinstance(decision, RetryLater):
            record = packed_record(d.fields, d.origin_offset, decision.reconsume_times)
            call = retry_call(
                stream.queue.keys,
                group,
                stream.key,
                d.entry_id,
                delete=stream.retry,
                msg_id=msg_id,
                delay_ms=decision.delay_ms,
                record=record,
            )
        elif isinstance(decision, DeadLetterIt):
            record = packed_record(d.fields, d.origin_offset, None)
            call = dead_letter_call(
                stream.queue.keys,
                group,
                stream.key,
                d.entry_id,
                delete=stream.retry,
                msg_id=msg_id,
                record=record,
                reason=decision.reason,
            )
        else:
            raise AssertionError(f"delivery without a decision: {d}")
        calls.append(call)
        owners.append(([d], 0))
    for key, group_deliveries in acks.items():
        retry = group_deliveries[0].stream.retry
        new = ack_calls(group, key, [d.entry_id for d in group_deliveries], delete=retry)
        calls.extend(new)
        owners.append((group_deliveries, len(new) - 1))
    return SettleRound(calls, owners)
