"""Transactional messages, free of I/O: states, settings, half records, script calls, the check schedule.

A half message lives on its target queue's slot (``QueueKeys.half(G)``, a hash
msg id -> record, and ``QueueKeys.half_checks(G)``, a sorted set msg id -> next
check), so storing, committing, rolling back, leasing a check and discarding are
each one Lua script on one slot (docs/storage.md, "Transactional messages").
The commit appends through the same include as every other way into a queue:
the queue offset is taken at commit time and consumers cannot tell the difference.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from pydantic import Field

from ._call_values import Call, Flow, command, run_script, single
from ._errors import RmqError, TopicNotFoundError, UsageError
from ._membership import new_member_id
from ._message import Message, MessageQueue, ReceivedMessage, SendResult, pack_fields, unpack_fields
from ._names import Keys, QueueKeys, check_group
from ._producing import ProducerCore, ProducerSettings, SendPlan, ShardingKey
from ._replies import ReplyCode, classify
from ._topics import route_flow

__all__ = [
    "HalfMessage",
    "TransactionSettings",
    "TransactionState",
    "TransactionStateError",
    "as_state",
]

log = structlog.get_logger("rmq_style.transaction")
# entry fields after i and q, in the order of docs/storage.md (and of a half record's tail)
ENTRY_FIELDS = (b"r", b"b", b"t", b"k", b"p", b"c", b"d")


class TransactionState(enum.StrEnum):
    """The outcome of a local transaction or of a check (RocketMQ's LocalTransactionState)."""

    COMMIT = "commit"
    ROLLBACK = "rollback"
    UNKNOWN = "unknown"


class TransactionStateError(RmqError):
    """A commit or rollback the half message's state does not allow.

    ``code``: ``TXNONE`` (no such half message), ``TXCOMMITTED``, ``TXROLLEDBACK``,
    ``TXDISCARDED`` (after its last check; an operator resumes or resolves it) or
    ``TXCHECKED`` (a check began: the check-back decides, as RocketMQ's broker does).
    """

    _HINTS = {
        "TXNONE": "no such half message (never stored, or resolved long ago)",
        "TXCOMMITTED": "it was committed already",
        "TXROLLEDBACK": "it was rolled back already",
        "TXDISCARDED": "it was discarded after its last check: `rmq-style tx resume|commit|rollback`",
        "TXCHECKED": "a check-back began: the checker's answer decides now",
    }

    def __init__(self, code: str, msg_id: str, action: str) -> None:
        self.code, self.msg_id = code, msg_id
        super().__init__(f"cannot {action} transaction {msg_id}: {self._HINTS.get(code, code)}")


class TransactionSettings(ProducerSettings):
    """A transactional producer: RocketMQ's broker defaults for the check-back."""

    transaction_timeout_ms: int = Field(6000, ge=0, description="age of a half message at its first check")
    check_interval_ms: int = Field(30_000, gt=0, description="between two checks of one half message")
    check_max: int = Field(15, ge=1, description="checks before the half message is discarded")
    check_lease_ms: int = Field(60_000, gt=0, description="a check must answer within this (its lease)")
    check_poll_ms: int = Field(1000, gt=0, description="how often an instance looks for due checks")
    check_batch: int = Field(32, gt=0, description="half messages leased per queue and look")
    check_in_background: bool = Field(
        True, description="False: no check loop, call check_once() yourself (tests, a scheduler)"
    )
    member_expiry_ms: int = Field(6000, gt=0, description="an instance silent this long is gone")
    resolved_memory_ms: int = Field(
        60_000, gt=0, description="how long a resolution is remembered (a repeated answer is idempotent)"
    )


def as_state(value: object) -> TransactionState:
    """A listener's or checker's return value as a state: None and anything unknown are UNKNOWN.

    >>> as_state("COMMIT"), as_state(None), as_state(TransactionState.ROLLBACK)
    (<TransactionState.COMMIT: 'commit'>, <TransactionState.UNKNOWN: 'unknown'>, \
<TransactionState.ROLLBACK: 'rollback'>)
    """
    if isinstance(value, TransactionState):
        return value
    if isinstance(value, str):
        try:
            return TransactionState(value.lower())
        except ValueError:
            pass
    if value is not None:
        log.warning("transaction.bad_state", returned=repr(value)[:80])
    return TransactionState.UNKNOWN


class HalfMessage(ReceivedMessage):
    """A half message as the local transaction and the checker see it.

    Its queue offset is -1: the offset is taken when it is committed.
    ``check_times`` counts the checks so far (this one included).
    """

    __slots__ = ("check_times",)

    def __init__(self, queue: MessageQueue, msg_id: str, stored_ms: int, entry: Sequence[bytes], checks: int):
        fields = {b"i": msg_id.encode(), b"q": b"-1", **dict(zip(ENTRY_FIELDS, entry, strict=True))}
        super().__init__(queue.topic, queue.queue_id, f"{stored_ms}-0", fields)
        self.check_times = checks


@dataclass(frozen=True, slots=True)
class TransactionSendResult:
    """The outcome of ``send_in_transaction``.

    *state* is what the local transaction answered; *send_result* is set once the
    message is committed (visible, with its queue offset). Without it the check-back
    decides later: the state was UNKNOWN, a check took over first (*checked*), or
    Redis could not be reached for the end (logged).
    """

    msg_id: str
    queue: MessageQueue
    state: TransactionState
    send_result: SendResult | None = None
    checked: bool = False


@dataclass(frozen=True, slots=True)
class Claim:
    """A half message leased for one check."""

    message: HalfMessage
    token: str
    expires: float  # time.monotonic() by which the check must have answered (its lease, with a margin)

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.expires


def half_keys(qk: QueueKeys, group: str) -> tuple[str, str, str]:
    return qk.half(group), qk.half_checks(group), qk.tx_discarded(group)


def tx_error(reply: Any, msg_id: str, action: str, topic: str) -> Any:
    """The reply of a tx script, its error codes raised as named exceptions."""
    code = classify(reply)
    if code is not None and code.is_transaction_state:
        raise TransactionStateError(code.value, msg_id, action) from None
    if code is ReplyCode.NOTOPIC:
        raise TopicNotFoundError(topic) from None
    return single(reply)


def immunity_ms(settings: TransactionSettings, check_immunity: timedelta | None) -> int:
    if check_immunity is None:
        return settings.transaction_timeout_ms
    if check_immunity < timedelta(0):
        raise UsageError("check_immunity must not be negative")
    return int(check_immunity.total_seconds() * 1000)


def refuse_extras(messages: object, delays: Sequence[object]) -> Message:
    """The one message of a transaction; clear errors for a batch or a delay (RocketMQ refuses both)."""
    if any(d is not None for d in delays):
        raise UsageError(
            "a transactional message cannot be delayed: commit it when it should be visible, "
            "or send a delayed message after the commit"
        )
    if not isinstance(messages, Message):
        raise UsageError("one message per transaction: send a batch with a plain producer after the commit")
    return messages


class TransactionCore:
    """Transaction logic shared by TransactionProducer and AsyncTransactionProducer."""

    def __init__(self, group: str, settings: TransactionSettings) -> None:
        self.group = check_group(group)
        self.settings = settings
        self.producer = ProducerCore(settings)
        self.keys = Keys(settings.namespace)
        self.member = new_member_id()
        self._claims = 0
        self._queue_keys: dict[MessageQueue, tuple[str, str, str, str, str, str]] = {}
        self._topics: set[str] = set()  # topics this instance added to the group's set (again every look)

    def half_plan(
        self,
        message: Message,
        sharding_key: ShardingKey | None,
        queue_id: int | None,
        check_immunity: timedelta | None,
    ) -> tuple[SendPlan, int]:
        """Encode and validate before any I/O; a retried store keeps the msg id."""
        immunity = immunity_ms(self.settings, check_immunity)
        return self.producer.plan([message], sharding_key=sharding_key, queue_id=queue_id), immunity

    def queue_keys(self, queue: MessageQueue) -> tuple[str, str, str, str, str, str]:
        """half, half checks, discarded, stream, seq, trimmed of *queue* (tx_commit's keys), made once."""
        found = self._queue_keys.get(queue)
        if found is None:
            if len(self._queue_keys) >= 4096:
                self._queue_keys.clear()
            qk = self.keys.queue(queue.topic, queue.queue_id)
            found = self._queue_keys[queue] = (*half_keys(qk, self.group), qk.stream, qk.seq, qk.trimmed)
        return found

    def half_flow(self, planned: tuple[SendPlan, int]) -> Flow[HalfMessage]:
        """Store the planned message as a half message (a retry with the same msg id stores it once)."""
        plan, immunity = planned
        topic, entry = plan.topics[0], plan.entries[0]
        route = (yield from self.producer.routes_flow([topic]))[topic]
        key = plan.sharding_key if plan.sharding_keys is None else plan.sharding_keys[0]
        queue = MessageQueue(topic, self.producer._queue_for(topic, route.queue_count, key, plan.queue_id))
        qkeys = self.queue_keys(queue)
        msg_id, fields = entry[0], [v if isinstance(v, bytes) else str(v).encode() for v in entry[1:]]
        store = run_script(
            "tx_half",
            (qkeys[0], qkeys[1], qkeys[4]),
            (msg_id, pack_fields(fields), immunity),
        )
        if topic in self._topics:  # the hot path: one script call, one round trip
            (reply,) = yield [store]
        else:  # the first half message to this topic: checkers find the topic's queues by this set
            replies = yield [
                command("SADD", self.keys.producer_groups(), self.group),
                command("SADD", self.keys.tx_topics(self.group), topic),
                store,
            ]
            single(replies[0])
            single(replies[1])
            reply = replies[2]
            self._topics.add(topic)
        stored = tx_error(reply, msg_id, "store", topic)
        return HalfMessage(queue, msg_id, int(stored[0]), fields, 0)

    def end_flow(
        self, queue: MessageQueue, msg_id: str, state: TransactionState, source: str
    ) -> Flow[SendResult | None]:
        """Commit (the SendResult of the visible message) or roll back (None) one half message."""
        route = (yield from self.producer.routes_flow([queue.topic]))[queue.topic]
        qkeys = self.queue_keys(queue)
        memory = self.settings.resolved_memory_ms
        if state is TransactionState.COMMIT:
            call = run_script(
                "tx_commit",
                qkeys,
                (msg_id, source, memory, *route.retention.script_args, self.member),
            )
            (reply,) = yield [call]
            entry_id, q, _again = tx_error(reply, msg_id, "commit", queue.topic)
            return SendResult(msg_id, queue, entry_id.decode(), int(q))
        if state is TransactionState.ROLLBACK:
            (reply,) = yield [run_script("tx_rollback", qkeys[:3], (msg_id, source, memory, self.member))]
            tx_error(reply, msg_id, "roll back", queue.topic)
            return None
        raise UsageError("end a transaction with COMMIT or ROLLBACK")

    def claim_flow(self) -> Flow[list[Claim]]:
        """Heartbeat, then lease the due half messages of every queue of the group's topics."""
        s = self.settings
        members_key, topics_key = self.keys.producers(self.group), self.keys.tx_topics(self.group)
        calls: list[Call] = [run_script("heartbeat", (members_key,), (self.member, s.member_expiry_ms, "1"))]
        if self._topics:  # a Redis that lost the sets (restart without persistence) learns them again
            calls.append(command("SADD", self.keys.producer_groups(), self.group))
            calls.append(command("SADD", topics_key, *sorted(self._topics)))
        calls.append(command("SMEMBERS", topics_key))
        replies = yield calls
        for reply in replies[:-1]:
            single(reply)  # the live instances are for operators (`tx` view); checks need no share
        mine: list[MessageQueue] = []
        for topic in sorted(t.decode() for t in single(replies[-1])):
            try:  # read each look, never created (auto_create_topics): a deleted topic stays deleted
                route = yield from route_flow(self.keys, topic)
            except TopicNotFoundError:
                continue
            # every live instance looks at every queue: the lease of each check makes it exclusive,
            # and no half message waits for a dead instance's share to be given away
            mine += [MessageQueue(topic, q) for q in range(route.queue_count)]
        if not mine:
            return []
        self._claims += 1
        prefix = f"{self.member}/{self._claims}"
        args = (s.check_batch, s.check_lease_ms, s.check_max, prefix)
        calls = [
            run_script("tx_check_claim", half_keys(self.keys.queue(mq.topic, mq.queue_id), self.group), args)
            for mq in mine
        ]
        claims: list[Claim] = []
        replies = yield calls
        # a check not begun by then is skipped: the lease may be another instance's by then
        expires = time.monotonic() + s.check_lease_ms * 0.8 / 1000
        for mq, reply in zip(mine, replies, strict=True):
            got = single(reply)
            if int(got[0]):
                log.error("transaction.discarded", group=self.group, queue=str(mq), count=int(got[0]))
            for j in range(2, len(got), 5):
                msg_id, token, checks, stored, packed = got[j : j + 5]
                try:
                    half = HalfMessage(mq, msg_id.decode(), int(stored), unpack_fields(packed), int(checks))
                    claims.append(Claim(half, token.decode(), expires))
                except (ValueError, TypeError) as exc:  # a hostile msg id: its checks run out unanswered
                    log.warning("transaction.bad_half", group=self.group, queue=str(mq), error=repr(exc))
        return claims

    def unknown_call(self, claim: Claim, *, defer: bool) -> Call:
        """End a check lease without a decision; *defer*: the local transaction still runs (not counted)."""
        m = claim.message
        qk = self.keys.queue(m.topic, m.queue_id)
        return run_script(
            "tx_check_unknown",
            (qk.half(self.group), qk.half_checks(self.group)),
            (m.msg_id, claim.token, self.settings.check_interval_ms, "defer" if defer else "unknown"),
        )

    def answer_flow(self, claim: Claim, state: TransactionState, *, defer: bool = False) -> Flow[None]:
        m = claim.message
        bound = log.bind(group=self.group, msg_id=m.msg_id, queue=str(m.queue), checks=m.check_times)
        if state is TransactionState.UNKNOWN:
            (reply,) = yield [self.unknown_call(claim, defer=defer)]
            event = "transaction.check_deferred" if defer else "transaction.check_unknown"
            bound.info(event, kept=single(reply))
            return
        try:
            yield from self.end_flow(m.queue, m.msg_id, state, "check")
        except TransactionStateError as exc:  # resolved meanwhile (an operator): nothing to do
            bound.warning("transaction.check_answer_refused", state=str(state), code=exc.code)
            return
        bound.info("transaction.checked", state=str(state))

    def leave_call(self) -> Call:
        return run_script("heartbeat", (self.keys.producers(self.group),), (self.member, 1, "0"))
