"""Idempotent consumption, the pure part: which key a message is deduplicated by, where its mark
lives, and what a mark's state means for a delivery (no I/O; the wiring is ``push.dedup``).

The state machine (RocketMQDedupListener's, docs/idempotence.md):

    SET mark "consuming:<owner>" NX PX lease   set      -> run the listener
                                               refused  -> read the mark:
        "consumed"          -> skip: acked without a call, counted as a duplicate
        "consuming:..."     -> in progress elsewhere: retry later (never two calls at once)
        gone (expired now)  -> retry later (the next delivery claims it)
    listener succeeded      -> SET mark "consumed" PX retention
    listener failed         -> DEL mark, so the retry runs again

>>> from rmq_style._message import ReceivedMessage
>>> m = ReceivedMessage("orders", 2, b"5-0", {b"i": b"ID1", b"k": b"order-7 x", b"p": b'{"biz": "B9"}'})
>>> dedup_key(m, Idempotent())
'ID1'
>>> dedup_key(m, Idempotent(key="keys"))
'order-7'
>>> dedup_key(m, Idempotent(key="property:biz"))
'B9'
>>> dedup_key(m, Idempotent(key=lambda msg: msg.topic + "/" + msg.msg_id))
'orders/ID1'
>>> mark_key("rmq", "orders", "billing", "order-7")
'rmq:{orders:idem:billing}:order-7'
>>> verdict(b"consumed"), verdict(b"consuming:m1"), verdict(None), verdict(b"junk")
(<Verdict.DUPLICATE: 'duplicate'>, <Verdict.IN_PROGRESS: 'in_progress'>, \
<Verdict.IN_PROGRESS: 'in_progress'>, <Verdict.RUN: 'run'>)
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._errors import UsageError
from .outcomes import ConsumeResult

if TYPE_CHECKING:
    from .._message import ReceivedMessage

__all__ = [
    "CONSUMED",
    "DuplicateInProgress",
    "Idempotent",
    "Verdict",
    "dedup_key",
    "lease_ms",
    "mark_key",
    "succeeded",
    "verdict",
]

CONSUMED = b"consumed"
CONSUMING = b"consuming:"

# The retry ladder of 16 levels spans about 4 h 46 min; a DLQ replay comes hours or days later.
# A "consumed" mark must outlive both, or the late copy runs again (docs/idempotence.md).
DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000
# a "consuming" mark outlives the call it guards by this much (consume_timeout + margin)
LEASE_MARGIN_MS = 30_000


@dataclass(frozen=True, slots=True)
class Idempotent:
    """How a subscription deduplicates its deliveries (``subscribe(..., idempotent=...)``).

    *key*: ``"msg_id"`` (the default), ``"keys"`` (the message's first key, else its msg id),
    ``"property:NAME"`` (that property, else the msg id) or a callable of the message.
    *retention_ms*: how long a "consumed" mark lasts; keep it longer than the retry ladder and any
    DLQ replay. *lease_ms*: how long a "consuming" mark lasts (None: consume_timeout + 30 s).
    """

    key: str | Callable[[ReceivedMessage], str] = "msg_id"
    retention_ms: int = DEFAULT_RETENTION_MS
    lease_ms: int | None = None

    def __post_init__(self) -> None:
        if (
            isinstance(self.key, str)
            and self.key not in ("msg_id", "keys")
            and not (self.key.startswith("property:") and len(self.key) > len("property:"))
        ):
            raise UsageError(
                f"idempotent key must be msg_id, keys, property:NAME or a callable, got {self.key!r}"
            )
        if self.retention_ms < 1 or (self.lease_ms is not None and self.lease_ms < 1):
            raise UsageError("idempotent retention_ms and lease_ms must be positive")

    @classmethod
    def of(cls, option: bool | Idempotent | str | None) -> Idempotent | None:
        """The subscribe option as a config: True is the default, a string is a key choice.

        >>> Idempotent.of(True) == Idempotent(), Idempotent.of(None), Idempotent.of("keys").key
        (True, None, 'keys')
        """
        if option is None or option is False:
            return None
        if option is True:
            return cls()
        if isinstance(option, str):
            return cls(key=option)
        return option


class DuplicateInProgress(Exception):
    """A duplicate of a message another call is consuming right now: tried again later."""


class Verdict(enum.Enum):
    RUN = "run"
    DUPLICATE = "duplicate"
    IN_PROGRESS = "in_progress"


def dedup_key(msg: ReceivedMessage, spec: Idempotent) -> str:
    """The business identity of *msg* under *spec* (falls back to the msg id)."""
    key = spec.key
    if callable(key):
        return str(key(msg))
    if key == "keys":
        return msg.keys[0] if msg.keys else msg.msg_id
    if key.startswith("property:"):
        return msg.properties.get(key[len("property:") :]) or msg.msg_id
    return msg.msg_id


def mark_key(prefix: str, topic: str, group: str, key: str) -> str:
    """The mark of *key* for *group* on *topic*: scoped per group, one slot per topic and group.

    Not the queue's slot: the same business key sent twice may land in two queues (a redelivery
    stays in its queue, a second send need not), and both copies must find the one mark.
    """
    return f"{prefix}:{{{topic}:idem:{group}}}:{key}"


def verdict(existing: bytes | None) -> Verdict:
    """What a delivery whose claim was refused does, by the mark's value (read just after).

    An unknown value is consumed anyway (degrade, as RocketMQDedupListener does).
    """
    if existing == CONSUMED:
        return Verdict.DUPLICATE
    if existing is None or existing.startswith(CONSUMING):
        return Verdict.IN_PROGRESS
    return Verdict.RUN


def succeeded(outcome: object) -> bool:
    """Whether a listener outcome counts as consumed (the decision tables' Ack/Proceed rows).

    >>> from rmq_style.push.outcomes import ConsumeResult
    >>> succeeded(None), succeeded(ConsumeResult.RECONSUME_LATER), succeeded(ValueError())
    (True, False, False)
    """
    return outcome is ConsumeResult.SUCCESS or not isinstance(outcome, ConsumeResult | BaseException)


def lease_ms(spec: Idempotent, consume_timeout_ms: int) -> int:
    """A "consuming" mark outlives the call: the watchdog cuts it at consume_timeout.

    >>> lease_ms(Idempotent(), 1000), lease_ms(Idempotent(lease_ms=5), 1000)
    (31000, 5)
    """
    return spec.lease_ms if spec.lease_ms is not None else consume_timeout_ms + LEASE_MARGIN_MS
