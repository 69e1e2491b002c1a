"""Orderly consumption, the pure part: decisions, lease arithmetic, the calls and their replies (no I/O).

An orderly queue is handled by the holder of its lease lock only, one
message (or one batch) at a time, in offset order. What happens to a message
after its listener ran:

    listener outcome                                 failed attempts a   decision
    -----------------------------------------------  ------------------  ------------------------
    returns SUCCESS or anything else                 any                 Proceed
    raises DeadLetter / returns DEAD_LETTER          any                 DeadLetterIt(reason)
    bad input (undecodable, invalid)                 any                 DeadLetterIt(reason)
    raises / SUSPEND_... / RECONSUME_LATER / timeout  a < max (or max -1) Suspend(a + 1)
    raises / SUSPEND_... / RECONSUME_LATER / timeout  a >= max            DeadLetterIt(reason)

So a poison message is handled exactly ``max_reconsume_times + 1`` times.

>>> decide_orderly(None, 0, 2)
Proceed()
>>> decide_orderly(ValueError("boom"), 1, 2)
Suspend(attempts=2, reason='ValueError: boom')
>>> decide_orderly(ConsumeResult.SUSPEND_CURRENT_QUEUE_A_MOMENT, 2, 2).reason
'SUSPEND_CURRENT_QUEUE_A_MOMENT (after 3 attempts)'
>>> decide_orderly(ValueError("boom"), 10**6, -1).attempts
1000001
>>> lock_value("host@1-ab", 7)
'host@1-ab/7'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._calls import Call, Flow, command, run_script, single
from .._message import MessageQueue
from .._names import Keys, QueueKeys
from .._replies import ReplyCode, classify
from .outcomes import ConsumeResult, DeadLetter, DeadLetterIt, _plain, describe_error, is_bad_input

__all__ = [
    "HeldQueue",
    "OrderlyRead",
    "Proceed",
    "Suspend",
    "decide_orderly",
    "held_flow",
    "is_fenced",
    "lease_deadline",
    "lock_value",
    "parse_read",
]


@dataclass(frozen=True, slots=True)
class Proceed:
    """The message succeeded: acknowledge it, go on with the next one."""


@dataclass(frozen=True, slots=True)
class Suspend:
    """The message failed: hold the queue, try it again after the suspend time."""

    attempts: int  # failed attempts so far, this one included (= reconsume_times of the next try)
    reason: str


OrderlyDecision = Proceed | Suspend | DeadLetterIt


def decide_orderly(outcome: object, failed_before: int, max_reconsume_times: int) -> OrderlyDecision:
    """The decision for a message that failed *failed_before* times and now returned or raised *outcome*."""
    if outcome is ConsumeResult.SUCCESS or not isinstance(outcome, ConsumeResult | BaseException):
        return Proceed()
    if outcome is ConsumeResult.DEAD_LETTER:
        return DeadLetterIt("DeadLetter: the listener returned DEAD_LETTER")
    if isinstance(outcome, BaseException):
        reason = describe_error(outcome) if outcome.__traceback__ else _plain(outcome)
        if isinstance(outcome, DeadLetter) or is_bad_input(outcome):
            return DeadLetterIt(reason)
    else:
        reason = outcome.name
    attempts = failed_before + 1
    if 0 <= max_reconsume_times <= failed_before:
        return DeadLetterIt(f"{reason} (after {attempts} attempts)")
    return Suspend(attempts, reason)


def lock_value(member: str, token: int) -> str:
    """The lock's value: the owner and a fencing token unique to this acquisition."""
    return f"{member}/{token}"


def lease_deadline(sent_at: float, lease_ms: int) -> float:
    """Until when (monotonic seconds) an owner may start handlers after a lease write sent at *sent_at*.

    Redis counts the lease from when it ran the command, later than *sent_at*;
    a tenth of the lease is kept as margin for clock drift.
    """
    return sent_at + lease_ms * 0.9 / 1000


def is_fenced(reply: object) -> bool:
    return classify(reply) is ReplyCode.FENCED


@dataclass(frozen=True, slots=True)
class OrderlyRead:
    pending: bool  # claimed from the group's pending entries (a takeover or a lost ack)
    retry: bool  # entries of the group's retry stream (replayed dead letters)
    entries: list[tuple[bytes, dict[bytes, bytes]]]
    held_offset: bytes | None
    held_attempts: int
    last: bytes | None  # nothing new: the stream's last entry id, to wait after it


def parse_read(reply: Sequence[Any]) -> OrderlyRead:
    source, raw, held_offset, held_attempts, last = reply
    entries = []
    for entry_id, flat in raw or ():
        if flat is None:
            continue  # trimmed while pending: XCLAIM dropped it
        entries.append((entry_id, dict(zip(flat[::2], flat[1::2], strict=True))))
    return OrderlyRead(
        source == b"pending",
        source == b"retry",
        entries,
        held_offset or None,
        int(held_attempts or 0),
        last or None,
    )


def read_call(
    qk: QueueKeys,
    group: str,
    member: str,
    value: str,
    count: int,
    acks: Sequence[bytes],
    *,
    retry: bool = False,
) -> Call:
    """The next entries; *acks* are entries of the retry stream when *retry*, of the queue otherwise."""
    return run_script(
        "orderly_read",
        (qk.stream, qk.lock(group), qk.held(group), qk.retry_stream(group)),
        (group, member, value, count, _flag(retry), *acks),
    )


def _flag(retry: bool) -> str:
    return "1" if retry else "0"


def settle_call(
    qk: QueueKeys,
    group: str,
    value: str,
    acks: Sequence[bytes],
    *,
    blocked: bytes = b"",
    attempts: int = 0,
    owner: str = "",
    reason: str = "",
    retry: bool = False,
) -> Call:
    """Acknowledge *acks* (entries of the retry stream when *retry*) and record a blocked message."""
    return run_script(
        "orderly_settle",
        (qk.retry_stream(group) if retry else qk.stream, qk.lock(group), qk.held(group)),
        (group, value, blocked, attempts, owner, reason, _flag(retry), *acks),
    )


def dead_letter_call(
    qk: QueueKeys,
    group: str,
    value: str,
    entry_id: bytes,
    msg_id: bytes,
    record: bytes,
    reason: str,
    acks: Sequence[bytes],
    *,
    retry: bool = False,
) -> Call:
    """Dead-letter *entry_id* (an entry of the retry stream when *retry*, as *acks* are)."""
    return run_script(
        "orderly_dead_letter",
        (qk.retry_stream(group) if retry else qk.stream, qk.dlq(group), qk.lock(group), qk.held(group)),
        (group, entry_id, msg_id, record, qk.topic, qk.queue_id, reason, value, _flag(retry), *acks),
    )


def acquire_call(qk: QueueKeys, group: str, value: str, lease_ms: int) -> Call:
    return command("SET", qk.lock(group), value, "NX", "PX", lease_ms)


def renew_call(qk: QueueKeys, group: str, value: str, lease_ms: int) -> Call:
    return run_script("lock_renew", (qk.lock(group),), (value, lease_ms))


def release_call(qk: QueueKeys, group: str, value: str) -> Call:
    return run_script("lock_release", (qk.lock(group),), (value,))


@dataclass(frozen=True, slots=True)
class HeldQueue:
    """An orderly queue held by a failing message (what ``progress`` shows)."""

    queue: MessageQueue
    owner: str  # member that recorded the last failure
    offset: str  # entry id of the blocked message
    attempts: int  # failed attempts so far
    since_ms: int  # Redis server time of its first failure
    reason: str  # of the last failure
    lock_owner: str | None  # member holding the lease now (None: nobody)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def held_flow(keys: Keys, group: str, queue: MessageQueue) -> Flow[HeldQueue | None]:
    """Whether a failing message holds (group, queue), and since when; None when the queue flows."""
    qk = keys.queue(queue.topic, queue.queue_id)
    held, lock = yield [command("HGETALL", qk.held(group)), command("GET", qk.lock(group))]
    return parse_held(queue, held, lock)


def lock_owner(lock_reply: Any) -> str | None:
    """The member holding a lease, from the lock key's value (``member/token``); None when free."""
    value = single(lock_reply)
    return _text(value).rpartition("/")[0] if value else None


def parse_held(queue: MessageQueue, held_reply: Any, lock_reply: Any) -> HeldQueue | None:
    """HeldQueue from the replies of HGETALL held and GET lock (None when the queue flows)."""
    fields = {_text(k): _text(v) for k, v in (single(held_reply) or {}).items()}
    if "offset" not in fields:
        return None
    return HeldQueue(
        queue,
        fields.get("owner", ""),
        fields["offset"],
        int(fields.get("attempts") or 0),
        int(fields.get("since") or 0),
        fields.get("reason", ""),
        lock_owner(lock_reply),
    )
