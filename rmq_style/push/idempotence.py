"""Idempotent consumption, the pure part: which key a message is deduplicated by, where its mark
lives, and what a mark's state means for a delivery (no I/O; the wiring is ``push.dedup``).

The state machine (RocketMQDedupListener's, docs/idempotence.md), one script per transition:

    idem_claim.lua  SET mark "consuming:<owner>" NX PX lease, else by the mark's value:
        "consumed"          -> skip: acked without a call, counted as a duplicate
        "consuming:..."     -> in progress elsewhere: retry later (never two calls at once)
        junk                -> replaced by our claim, run the listener (a bad mark never blocks)
    idem_renew.lua  a call queued or running longer than a lease: our marks' leases extended
    idem_done.lua   listener succeeded -> SET mark "consumed" PX retention
    idem_release.lua listener failed   -> DEL mark if still ours, so the retry runs again

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
>>> [v.value for v in verdicts(b"rdpj", 4)]
['run', 'duplicate', 'in_progress', 'replaced']
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from operator import attrgetter
from typing import TYPE_CHECKING

from .._call_values import Call, run_script
from .._errors import UsageError
from .._message import field_map
from .outcomes import ConsumeResult

if TYPE_CHECKING:
    from .._message import ReceivedMessage

__all__ = [
    "CONSUMED",
    "DuplicateInProgress",
    "Idempotent",
    "MarkReplyError",
    "Verdict",
    "claim_call",
    "dedup_key",
    "done_call",
    "key_getter",
    "lease_ms",
    "mark_key",
    "mark_prefix",
    "raw_msg_id",
    "release_call",
    "renew_call",
    "shown",
    "succeeded",
    "verdicts",
]

CONSUMED = b"consumed"
CONSUMING = b"consuming:"
# a "consuming" mark with more lease left than this many of ours is junk (no member sets such a
# lease): replaced, so a hostile or corrupted mark never blocks its key for long
LIVE_LEASE_FACTOR = 10

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
    RUN = "run"  # claimed: run the listener
    DUPLICATE = "duplicate"  # "consumed": acked without a call
    IN_PROGRESS = "in_progress"  # "consuming" elsewhere (or earlier in the same claim): later
    REPLACED = "replaced"  # a junk mark, replaced by our claim: run the listener


class MarkReplyError(Exception):
    """A mark script's reply that does not say one verdict per key (a proxy or a bug)."""


_LETTERS = {
    ord("r"): Verdict.RUN,
    ord("d"): Verdict.DUPLICATE,
    ord("p"): Verdict.IN_PROGRESS,
    ord("j"): Verdict.REPLACED,
}


def verdicts(reply: object, count: int) -> list[Verdict]:
    """The verdicts of idem_claim.lua's reply for *count* keys; MarkReplyError if it is not that.

    >>> verdicts(b"rx", 2)
    Traceback (most recent call last):
    ...
    rmq_style.push.idempotence.MarkReplyError: unexpected claim reply b'rx' for 2 keys
    """
    if isinstance(reply, str):
        reply = reply.encode()
    if isinstance(reply, bytes) and len(reply) == count:
        out = [_LETTERS.get(letter) for letter in reply]
        if None not in out:
            return out  # type: ignore[return-value]
    raise MarkReplyError(f"unexpected claim reply {reply!r:.80} for {count} keys")


def key_getter(spec: Idempotent) -> Callable[[ReceivedMessage], str]:
    """``dedup_key`` for *spec* as one function (the default, the msg id, is an attribute read).

    >>> from rmq_style._message import ReceivedMessage
    >>> key_getter(Idempotent())(ReceivedMessage("orders", 2, b"5-0", {b"i": b"ID1"}))
    'ID1'
    """
    if spec.key == "msg_id":
        return attrgetter("msg_id")
    return partial(dedup_key, spec=spec)


def raw_msg_id(raw: Mapping[bytes, bytes] | list[bytes]) -> bytes:
    """The msg id of an entry's fields as read, not decoded (the default dedup key, as the mark's
    name takes it: the entry check admits only ASCII msg ids, so it names the same mark as
    ``dedup_key``). In the producers' layout it is the second item of the flat fields.

    >>> raw_msg_id([b"i", b"ID1", b"d", b"{}"]), raw_msg_id({b"i": b"ID2"}), raw_msg_id([b"d", b"x"])
    (b'ID1', b'ID2', b'')
    """
    if type(raw) is list:
        if raw and raw[0] == b"i":
            return raw[1]
        raw = field_map(raw)
    return raw.get(b"i") or b""  # type: ignore[union-attr]


def shown(key: str | bytes) -> str:
    """A dedup key for a log line."""
    return key.decode(errors="replace") if isinstance(key, bytes) else key


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


def mark_prefix(prefix: str, topic: str, group: str) -> str:
    """What every mark of *group* on *topic* starts with: one slot per topic and group.

    Not the queue's slot: the same business key sent twice may land in two queues (a redelivery
    stays in its queue, a second send need not), and both copies must find the one mark.
    """
    return f"{prefix}:{{{topic}:idem:{group}}}:"


def mark_key(prefix: str, topic: str, group: str, key: str) -> str:
    """The mark of *key* for *group* on *topic*."""
    return mark_prefix(prefix, topic, group) + key


def claim_call(marks: str, owner: bytes, lease: int, keys: Sequence[str | bytes]) -> Call:
    """Claim *keys* (idem_claim.lua): one verdict letter per key.

    >>> claim_call("rmq:{t:idem:g}:", b"consuming:m1", 500, ["a", "b"]).args
    (b'consuming:m1', 500, 5000, 'a', 'b')
    """
    return run_script("idem_claim", [marks], [owner, lease, lease * LIVE_LEASE_FACTOR, *keys])


def done_call(marks: str, retention: int, keys: Sequence[str | bytes]) -> Call:
    """Mark *keys* consumed for *retention* ms (idem_done.lua)."""
    return run_script("idem_done", [marks], [retention, *keys])


def release_call(marks: str, owner: bytes, keys: Sequence[str | bytes]) -> Call:
    """Delete the marks of *keys* still claimed by *owner* (idem_release.lua)."""
    return run_script("idem_release", [marks], [owner, *keys])


def renew_call(marks: str, owner: bytes, lease: int, keys: Sequence[str | bytes]) -> Call:
    """Extend the leases of *keys* still claimed by *owner* (idem_renew.lua): k kept, l lost."""
    return run_script("idem_renew", [marks], [owner, lease, *keys])


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
