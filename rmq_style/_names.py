"""Names: validation of topic and group names, and every Redis key rmq_style uses.

All key names come from here (docs/storage.md is the contract). Every key that
belongs to one message queue carries the hash tag ``{topic:queue_id}``, so a
queue's stream, counters, delayed set and per-group structures share one Redis
Cluster slot and each state transition can be one Lua script. Names are
restricted to ``[A-Za-z0-9_.-]`` so they can never inject a brace (hash tag)
or a colon (separator) into a key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._errors import InvalidNameError

__all__ = [
    "LAYOUT_VERSION",
    "MAX_NAME_LENGTH",
    "Keys",
    "QueueKeys",
    "check_group",
    "check_instance",
    "check_topic",
]

LAYOUT_VERSION = 1
MAX_NAME_LENGTH = 128
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


_VALID: set[str] = set()  # names already checked (bounded: cleared when large)


def _check(kind: str, name: object) -> str:
    if type(name) is str and name in _VALID:
        return name
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        shown = repr(name) if not isinstance(name, str) or len(name) <= 40 else repr(name[:40] + "...")
        raise InvalidNameError(
            f"invalid {kind} name {shown}: use 1 to {MAX_NAME_LENGTH} characters "
            "from letters, digits, '_', '.' and '-'"
        )
    if type(name) is str:
        if len(_VALID) >= 4096:
            _VALID.clear()
        _VALID.add(name)
    return name


def check_topic(name: object) -> str:
    """Return *name* if it is a valid topic name, else raise InvalidNameError."""
    return _check("topic", name)


_INSTANCE = re.compile(r"[A-Za-z0-9_.@\-]{1,128}")


def check_instance(name: object) -> str:
    """Return *name* if it is a valid broadcasting instance name (a group name's characters and '@')."""
    if not isinstance(name, str) or _INSTANCE.fullmatch(name) is None:
        raise InvalidNameError(
            f"invalid instance name {name!r}: use 1 to {MAX_NAME_LENGTH} characters "
            "from letters, digits, '_', '.', '@' and '-'"
        )
    return name


def check_group(name: object) -> str:
    """Return *name* if it is a valid consumer group name, else raise InvalidNameError."""
    return _check("group", name)


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The keys of one message queue; all share the hash tag ``{topic:queue_id}``.

    >>> k = Keys().queue("orders", 3)
    >>> k.stream, k.seq
    ('rmq:{orders:3}:s', 'rmq:{orders:3}:seq')
    >>> k.dlq("billing")
    'rmq:{orders:3}:dlq:billing'
    """

    prefix: str
    topic: str
    queue_id: int

    @property
    def tag(self) -> str:
        return f"{self.prefix}:{{{self.topic}:{self.queue_id}}}"

    @property
    def stream(self) -> str:
        """The queue itself: one Redis stream."""
        return f"{self.tag}:s"

    @property
    def seq(self) -> str:
        """Counter of messages ever written (RocketMQ's max offset); its existence marks a live queue."""
        return f"{self.tag}:seq"

    @property
    def trimmed(self) -> str:
        """Hash group -> entries a maxlen trim removed before the group was delivered them."""
        return f"{self.tag}:trimmed"

    @property
    def delay(self) -> str:
        """Sorted set of delayed msg ids scored by due time (server ms)."""
        return f"{self.tag}:delay"

    @property
    def delayed(self) -> str:
        """Hash msg id -> packed entry fields of delayed messages."""
        return f"{self.tag}:delayed"

    @property
    def trace(self) -> str:
        """Stream of the queue's message trace records (docs/trace.md), bounded by MAXLEN ~."""
        return f"{self.tag}:trace"

    def retry(self, group: str) -> str:
        """Sorted set of the group's messages waiting for a retry, scored by due time."""
        return f"{self.tag}:retry:{group}"

    def retry_body(self, group: str) -> str:
        """Hash msg id -> packed fields of the group's messages waiting for a retry."""
        return f"{self.tag}:retrymsg:{group}"

    def retry_stream(self, group: str) -> str:
        """Stream of the group's due retries (RocketMQ's %RETRY%group, per queue)."""
        return f"{self.tag}:rs:{group}"

    def dlq(self, group: str) -> str:
        """The group's dead-letter stream for this queue."""
        return f"{self.tag}:dlq:{group}"

    def lock(self, group: str) -> str:
        """Orderly lease lock of (group, queue)."""
        return f"{self.tag}:lock:{group}"

    def held(self, group: str) -> str:
        """Hash of the orderly message holding (group, queue): owner, offset, attempts, since, reason."""
        return f"{self.tag}:held:{group}"

    def invisible(self, group: str) -> str:
        """Sorted set of the simple consumers' leases ('s:<id>', 'r:<id>') scored by visible-again time."""
        return f"{self.tag}:inv:{group}"

    def receipts(self, group: str) -> str:
        """Hash lease ('s:<id>', 'r:<id>') -> receipt token of the simple consumer holding it."""
        return f"{self.tag}:lease:{group}"

    def key_held(self, group: str) -> str:
        """Hash of the key-ordered messages holding their key: entry id -> failed attempts."""
        return f"{self.tag}:kheld:{group}"

    def broadcast(self, group: str) -> str:
        """Hash instance name -> position of each broadcasting consumer of the group in this queue."""
        return f"{self.tag}:bcast:{group}"

    def member_retry(self, group: str, instance: str) -> str:
        """Sorted set of a broadcasting member's messages waiting for a retry, scored by due time."""
        return f"{self.tag}:bretry:{group}:{instance}"

    def member_retry_body(self, group: str, instance: str) -> str:
        """Hash msg id -> packed fields of a broadcasting member's messages waiting for a retry."""
        return f"{self.tag}:bretrymsg:{group}:{instance}"

    def member_retry_stream(self, group: str, instance: str) -> str:
        """Stream of a broadcasting member's due retries (read by that member only)."""
        return f"{self.tag}:brs:{group}:{instance}"

    def half(self, group: str) -> str:
        """Hash msg id -> half (transactional) message record of producer group *group*."""
        return f"{self.tag}:half:{group}"

    def half_checks(self, group: str) -> str:
        """Sorted set msg id -> next check, lease end or forget time of the group's half messages."""
        return f"{self.tag}:halfdue:{group}"

    def tx_discarded(self, group: str) -> str:
        """Hash msg id -> half message of the group discarded after its last check."""
        return f"{self.tag}:txdead:{group}"


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix (namespace).

    >>> Keys().topic_meta("orders")
    'rmq:topic:{orders}'
    >>> Keys("staging").members("billing", "orders")
    'staging:group:{billing}:members:orders'
    """

    prefix: str = "rmq"

    @property
    def topics(self) -> str:
        """Set of all topic names."""
        return f"{self.prefix}:topics"

    def topic_meta(self, topic: str) -> str:
        """Hash of a topic's settings (queue count, retention, layout version)."""
        return f"{self.prefix}:topic:{{{topic}}}"

    def queue(self, topic: str, queue_id: int) -> QueueKeys:
        return QueueKeys(self.prefix, topic, queue_id)

    def members(self, group: str, topic: str) -> str:
        """Sorted set of the group's members subscribing *topic*, scored by last heartbeat (server ms)."""
        return f"{self.prefix}:group:{{{group}}}:members:{topic}"

    def subscriptions(self, group: str) -> str:
        """Hash topic -> subscription expression of the group (one per topic)."""
        return f"{self.prefix}:group:{{{group}}}:subs"

    def subscription_kinds(self, group: str) -> str:
        """Hash topic -> listener kind of the group's members (concurrent, orderly, lite_pull)."""
        return f"{self.prefix}:group:{{{group}}}:kinds"

    def groups(self) -> str:
        """Set of all consumer group names."""
        return f"{self.prefix}:groups"

    def producer_groups(self) -> str:
        """Set of all producer groups that sent transactional messages."""
        return f"{self.prefix}:pgroups"

    def tx_topics(self, group: str) -> str:
        """Set of the topics producer group *group* sent transactional messages to."""
        return f"{self.prefix}:pgroup:{{{group}}}:topics"

    def producers(self, group: str) -> str:
        """Sorted set of the producer group's checking instances, scored by last heartbeat (server ms)."""
        return f"{self.prefix}:pgroup:{{{group}}}:members"
