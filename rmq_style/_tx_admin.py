"""Operators' view of transactional messages: pending and discarded half messages; resume, commit, roll back.

Free of I/O (flows): the Admin fronts and the ``rmq-style tx`` commands run them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import structlog

from ._call_values import Call, Flow, command, run_script, single
from ._errors import TopicNotFoundError
from ._message import MessageQueue, SendResult, unpack_fields
from ._names import Keys, check_group
from ._topics import TopicRoute, route_flow
from ._transaction import HalfMessage, TransactionState, TransactionStateError, half_keys, tx_error

log = structlog.get_logger("rmq_style.transaction")

__all__ = ["HalfRecord", "TxQueueReport", "instances_flow"]

# how long an operator's resolution is remembered (a producer answering later gets the same outcome)
_ADMIN_MEMORY_MS = 60_000


@dataclass(frozen=True, slots=True)
class HalfRecord:
    """A pending or discarded half message as operators see it (times are server ms)."""

    msg_id: str
    queue: MessageQueue
    status: Literal["pending", "discarded"]
    check_times: int
    stored_ms: int
    age_ms: int
    changed_ms: int  # last check lease, answer or discard
    next_check_ms: int | None  # when it is checked next (pending only)
    checking: bool  # a check holds its lease now
    message: HalfMessage


@dataclass(frozen=True, slots=True)
class TxQueueReport:
    """Per queue of a producer group: pending half messages, the oldest age, the most checks, discarded."""

    queue: MessageQueue
    pending: int
    oldest_age_ms: int | None
    max_check_times: int
    discarded: int


def _group_queues_flow(keys: Keys, group: str, topic: str | None) -> Flow[list[tuple[TopicRoute, int]]]:
    (topics,) = yield [command("SMEMBERS", keys.tx_topics(check_group(group)))]
    names = sorted(t.decode() for t in single(topics))
    out: list[tuple[TopicRoute, int]] = []
    for name in names:
        if topic is not None and name != topic:
            continue
        try:
            route = yield from route_flow(keys, name)
        except TopicNotFoundError:
            continue
        out += [(route, q) for q in range(route.queue_count)]
    return out


def records_flow(keys: Keys, group: str, topic: str | None = None) -> Flow[list[HalfRecord]]:
    """Every pending and discarded half message of *group* (of *topic*), oldest first."""
    queues = yield from _group_queues_flow(keys, group, topic)
    calls: list[Call] = [command("TIME")]
    for route, q in queues:
        half, due, dead = half_keys(keys.queue(route.topic, q), group)
        calls += [
            command("HGETALL", half),
            command("ZRANGE", due, 0, -1, "WITHSCORES"),
            command("HGETALL", dead),
        ]
    replies = yield calls
    seconds, micros = single(replies[0])
    now = int(seconds) * 1000 + int(micros) // 1000
    records: list[HalfRecord] = []
    for n, (route, q) in enumerate(queues):
        half, due, dead = (single(r) for r in replies[1 + 3 * n : 4 + 3 * n])
        scores = (
            {m: int(s) for m, s in zip(due[::2], due[1::2], strict=True)}
            if isinstance(due, list)
            else {m: int(s) for m, s in dict(due).items()}
        )
        mq = MessageQueue(route.topic, q)
        for packed_map, status in ((half, "pending"), (dead, "discarded")):
            for msg_id, packed in packed_map.items():
                try:
                    rec = unpack_fields(packed)
                    if rec[0] not in (b"h", b"d"):
                        continue  # resolved, remembered for idempotent answers only
                    stored, checks, lease = int(rec[3]), int(rec[1]), rec[4]
                    record = HalfRecord(
                        msg_id=msg_id.decode(),
                        queue=mq,
                        status=status,  # type: ignore[arg-type]
                        check_times=checks,
                        stored_ms=stored,
                        age_ms=max(0, now - stored),
                        changed_ms=int(rec[5]),
                        next_check_ms=scores.get(msg_id) if status == "pending" else None,
                        checking=bool(lease),
                        message=HalfMessage(mq, msg_id.decode(), stored, rec[6:13], checks),
                    )
                except (ValueError, TypeError, IndexError) as exc:
                    # not a record this store wrote: the next check look discards it with the reason
                    log.warning("transaction.bad_record", queue=str(mq), status=status, error=repr(exc))
                    continue
                records.append(record)
    records.sort(key=lambda r: (r.stored_ms, r.msg_id))
    return records


def report_flow(keys: Keys, group: str, topic: str | None = None) -> Flow[list[TxQueueReport]]:
    """The ``tx`` view: per queue of the group's topics, pending half messages and their age and checks."""
    queues = yield from _group_queues_flow(keys, group, topic)
    records = yield from records_flow(keys, group, topic)
    out = []
    for route, q in queues:
        mq = MessageQueue(route.topic, q)
        mine = [r for r in records if r.queue == mq and r.status == "pending"]
        out.append(
            TxQueueReport(
                queue=mq,
                pending=len(mine),
                oldest_age_ms=max((r.age_ms for r in mine), default=None),
                max_check_times=max((r.check_times for r in mine), default=0),
                discarded=sum(1 for r in records if r.queue == mq and r.status == "discarded"),
            )
        )
    return out


def instances_flow(keys: Keys, group: str) -> Flow[dict[str, int]]:
    """The producer group's checking instances -> ms since their last heartbeat (server clock)."""
    replies = yield [
        command("TIME"),
        command("ZRANGE", keys.producers(check_group(group)), 0, -1, "WITHSCORES"),
    ]
    seconds, micros = single(replies[0])
    now = int(seconds) * 1000 + int(micros) // 1000
    flat = single(replies[1])
    pairs = flat.items() if isinstance(flat, dict) else zip(flat[::2], flat[1::2], strict=True)
    return {m.decode(): max(0, now - int(float(score))) for m, score in pairs}


def _find_flow(keys: Keys, group: str, msg_id: str) -> Flow[HalfRecord]:
    for record in (yield from records_flow(keys, group)):
        if record.msg_id == msg_id:
            return record
    raise TransactionStateError("TXNONE", msg_id, f"find in producer group {group!r}")


def resume_flow(keys: Keys, group: str, msg_id: str) -> Flow[None]:
    """Checks of a discarded half message start again, from a check count of 0."""
    record = yield from _find_flow(keys, group, msg_id)
    qk = keys.queue(record.queue.topic, record.queue.queue_id)
    (reply,) = yield [run_script("tx_resume", half_keys(qk, group), (msg_id,))]
    tx_error(reply, msg_id, "resume", record.queue.topic)


def resolve_flow(keys: Keys, group: str, msg_id: str, state: TransactionState) -> Flow[SendResult | None]:
    """An operator commits (the SendResult) or rolls back (None) a pending or discarded half message."""
    record = yield from _find_flow(keys, group, msg_id)
    mq = record.queue
    qk = keys.queue(mq.topic, mq.queue_id)
    if state is TransactionState.COMMIT:
        route = yield from route_flow(keys, mq.topic)
        keys6 = (*half_keys(qk, group), qk.stream, qk.seq, qk.trimmed)
        args = (msg_id, "admin", _ADMIN_MEMORY_MS, *route.retention.script_args, "")
        (reply,) = yield [run_script("tx_commit", keys6, args)]
        entry_id, q, _again = tx_error(reply, msg_id, "commit", mq.topic)
        return SendResult(msg_id, mq, entry_id.decode(), int(q))
    undo = (msg_id, "admin", _ADMIN_MEMORY_MS, "")
    (reply,) = yield [run_script("tx_rollback", half_keys(qk, group), undo)]
    tx_error(reply, msg_id, "roll back", mq.topic)
    return None
