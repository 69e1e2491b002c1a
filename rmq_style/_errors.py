"""The exceptions rmq_style raises.

One root, families by cause::

    RmqError
    ├── UsageError                  the caller asked for something that cannot be done
    │   ├── InvalidNameError        topic or group name outside [A-Za-z0-9_.-]{1,128}
    │   ├── InvalidUrlError         URL scheme or form not understood
    │   ├── MessageTooLargeError    encoded body over the size limit
    │   ├── SerializationError      body cannot be encoded, or decoded into the model
    │   ├── InvalidOffsetError      an offset that is not a stream entry id
    │   ├── QueueNotFoundError      queue id outside the topic's queues
    │   ├── SubscriptionConflictError  members of one group disagree on a subscription
    │   └── ConfigurationError      settings that contradict each other
    ├── TopicError
    │   ├── TopicNotFoundError      topic not created (and auto-create is off)
    │   └── TopicExistsError        create of a topic that exists
    ├── FencedError                 the caller lost its lease; its write was refused
    ├── BrokerUnavailableError      Redis could not be reached after the retries
    ├── ConsumerFailedError         a push consumer stopped itself: an internal task kept crashing
    └── BrokerRefusedError          Redis answered and refused: out of memory, read-only replica,
                                    not enough replicas, ACL, authentication (``code`` says which)

Redis' own errors are translated where they cross into rmq_style, so callers
never need to import redis to catch what this library raises.
"""

from __future__ import annotations

__all__ = [
    "BrokerRefusedError",
    "BrokerUnavailableError",
    "ConfigurationError",
    "ConsumerFailedError",
    "FencedError",
    "InvalidNameError",
    "InvalidOffsetError",
    "InvalidReceiptHandleError",
    "InvalidUrlError",
    "MessageTooLargeError",
    "QueueNotFoundError",
    "RmqError",
    "SerializationError",
    "StaleReceiptHandleError",
    "SubscriptionConflictError",
    "TopicError",
    "TopicExistsError",
    "TopicNotFoundError",
    "UsageError",
]


class RmqError(Exception):
    """Root of every error rmq_style raises on purpose."""


class UsageError(RmqError):
    """The caller asked for something that cannot be done; nothing was written."""


class InvalidNameError(UsageError):
    pass


class InvalidUrlError(UsageError):
    pass


class MessageTooLargeError(UsageError):
    pass


class SerializationError(UsageError):
    pass


class InvalidOffsetError(UsageError):
    pass


class QueueNotFoundError(UsageError):
    pass


class SubscriptionConflictError(UsageError):
    pass


class ConfigurationError(UsageError):
    pass


class TopicError(RmqError):
    pass


class TopicNotFoundError(TopicError):
    def __init__(self, topic: str) -> None:
        super().__init__(
            f"topic {topic!r} does not exist: create it first "
            f"(`rmq-style topic create {topic}` or admin.create_topic), "
            "or enable auto_create_topics on the producer"
        )
        self.topic = topic


class TopicExistsError(TopicError):
    def __init__(self, topic: str) -> None:
        super().__init__(f"topic {topic!r} already exists; use expand_topic to add queues")
        self.topic = topic


class FencedError(RmqError):
    """A write was refused because the caller no longer holds the queue's lease."""


class InvalidReceiptHandleError(UsageError):
    """A receipt handle that no simple consumer issued (malformed); nothing was written."""


class StaleReceiptHandleError(RmqError):
    """A simple consumer's ack or change named a lease that is over (received again, changed, acked,
    dead-lettered, or its invisible duration ended); nothing was written."""


class BrokerUnavailableError(RmqError):
    """Redis could not be reached; the operation may or may not have taken effect."""


class ConsumerFailedError(RmqError):
    """A push consumer stopped on its own: one of its tasks kept crashing (a bug; the cause is
    chained and logged as ``consumer.loop_crashed``). It drained and left its group first, so its
    queues went to the other members; start a new consumer (a worker process exits non-zero)."""


class BrokerRefusedError(RmqError):
    """Redis answered and refused the command; retrying at once would not help.

    ``code`` is Redis' error code: ``OOM`` (maxmemory reached), ``READONLY`` (a
    replica), ``NOREPLICAS`` (min-replicas-to-write), ``NOPERM`` (ACL),
    ``MISCONF`` (persistence failing), ``MASTERDOWN``, or ``AUTH`` (wrong or
    missing credentials). A refused write wrote nothing.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"Redis refused the command ({code}): {detail}")
        self.code = code
