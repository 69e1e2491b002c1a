"""What happens to a delivered message after its listener ran: pure decisions, no I/O.

Everything that decides a message's fate in push consumption lives here, the
concurrent table and the orderly one side by side; the runtime
(rmq_style.push) only carries the decisions out.

Concurrent (``decide``):

    listener outcome                      reconsume_times r      decision
    ------------------------------------  ---------------------  ------------------------------------
    returns SUCCESS or anything else      any                    Ack
    raises DeadLetter / returns DEAD_LETTER  any                 DeadLetterIt(reason)
    bad input (undecodable, invalid)      any                    DeadLetterIt(reason)   (never retried)
    raises / RECONSUME_LATER / timeout    r < max_reconsume      RetryLater(delay(r), r + 1)
    raises / RECONSUME_LATER / timeout    r >= max_reconsume     DeadLetterIt(reason)

>>> from rmq_style._delay import RetrySchedule
>>> policy = RetryPolicy(RetrySchedule.of_ms([10, 20]), max_reconsume_times=2)
>>> decide(ConsumeResult.SUCCESS, 0, policy)
Ack()
>>> decide(ValueError("boom"), 1, policy)
RetryLater(delay_ms=20, reconsume_times=2, reason='ValueError: boom')
>>> decide(ValueError("boom"), 2, policy).reason
'ValueError: boom (after 2 retries)'
>>> decide(DeadLetter("bad order"), 0, policy)
DeadLetterIt(reason='DeadLetter: bad order')

Orderly (``decide_orderly``): a queue is handled by the holder of its lease, one
message (or batch) at a time, in offset order; a failure holds the queue:

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
"""

from __future__ import annotations

import enum
import traceback
from dataclasses import dataclass

from pydantic import ValidationError

from .._delay import RetrySchedule
from .._errors import SerializationError

__all__ = [
    "Ack",
    "ConsumeResult",
    "ConsumeTimeout",
    "DeadLetter",
    "DeadLetterIt",
    "Decision",
    "OrderlyDecision",
    "Proceed",
    "RetryLater",
    "RetryPolicy",
    "Suspend",
    "decide",
    "decide_orderly",
    "describe_error",
]

MAX_REASON_LENGTH = 1000


class ConsumeResult(enum.Enum):
    """What a listener may return (returning None means SUCCESS).

    RECONSUME_LATER and SUSPEND_CURRENT_QUEUE_A_MOMENT both mean "failed":
    a concurrent listener's message is retried later, an orderly listener's
    queue is suspended and the same message tried again.
    """

    SUCCESS = "success"
    RECONSUME_LATER = "reconsume_later"
    SUSPEND_CURRENT_QUEUE_A_MOMENT = "suspend"
    DEAD_LETTER = "dead_letter"


class DeadLetter(Exception):
    """Raise from a listener to send the message straight to the dead-letter queue."""


class ConsumeTimeout(Exception):
    """The listener ran longer than consume_timeout; the message is retried as a failure."""


@dataclass(frozen=True, slots=True)
class Ack:
    pass


@dataclass(frozen=True, slots=True)
class RetryLater:
    delay_ms: int
    reconsume_times: int  # of the retried message
    reason: str


@dataclass(frozen=True, slots=True)
class DeadLetterIt:
    reason: str


Decision = Ack | RetryLater | DeadLetterIt


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    schedule: RetrySchedule
    max_reconsume_times: int


def describe_error(exc: BaseException) -> str:
    """``Type: message`` and, when there is a traceback, its last frame (where it was raised)."""
    text = f"{type(exc).__name__}: {exc}".strip()
    if exc.__traceback__ is not None:
        last = traceback.extract_tb(exc.__traceback__)[-1]
        text += f" [{last.filename}:{last.lineno} in {last.name}]"
    return text[:MAX_REASON_LENGTH]


def is_bad_input(exc: BaseException) -> bool:
    """A body that cannot be decoded or validated: retrying would only fail again."""
    return isinstance(exc, SerializationError | ValidationError | UnicodeDecodeError)


def decide(outcome: object, reconsume_times: int, policy: RetryPolicy) -> Decision:
    """The decision for one message whose listener returned or raised *outcome*."""
    if outcome is ConsumeResult.SUCCESS or not isinstance(outcome, ConsumeResult | BaseException):
        return Ack()  # a plain return value (None or anything else) is success
    if outcome is ConsumeResult.DEAD_LETTER:
        return DeadLetterIt("DeadLetter: the listener returned DEAD_LETTER")
    if isinstance(outcome, DeadLetter) or (isinstance(outcome, BaseException) and is_bad_input(outcome)):
        return DeadLetterIt(describe_error(outcome) if outcome.__traceback__ else _plain(outcome))
    if isinstance(outcome, BaseException):
        reason = describe_error(outcome) if outcome.__traceback__ else _plain(outcome)
    else:
        reason = "RECONSUME_LATER"
    if reconsume_times >= policy.max_reconsume_times:
        return DeadLetterIt(f"{reason} (after {reconsume_times} retries)")
    return RetryLater(policy.schedule.delay_ms(reconsume_times), reconsume_times + 1, reason)


def _plain(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_REASON_LENGTH]


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
