"""Typed reply codes: the one place that reads an error reply's code.

A failed call's reply reaches the pure logic as the exception the client
library made of it (see ``rmq_style._call_values``). Everything else asks
``classify`` for its ``ReplyCode`` instead of matching text, so this module
is the only one that knows how error replies look. It imports nothing from
redis: redis-py strips the code off the replies it has an exception class
for (``NOPERM ...`` arrives as ``NoPermissionError("...")``), so those are
recognised by their class name, which is part of redis-py's API.
"""

from __future__ import annotations

from enum import StrEnum

from ._errors import BrokerRefusedError

__all__ = ["ReplyCode", "classify", "is_error_reply", "refusal", "unknown_waitaof"]


class ReplyCode(StrEnum):
    # ours, from the Lua scripts
    NOTOPIC = "NOTOPIC"  # the topic was never created
    FENCED = "FENCED"  # an orderly lease held by someone else: stop owning the queue
    OFFSETRANGE = "OFFSETRANGE"  # a committed offset past the end of the queue
    SUBCONFLICT = "SUBCONFLICT"  # the group subscribes the topic with another expression
    STALEHANDLE = "STALEHANDLE"  # a simple consumer's receipt handle names a lease that is over
    TXCHECKED = "TXCHECKED"
    TXCOMMITTED = "TXCOMMITTED"
    TXDISCARDED = "TXDISCARDED"
    TXNONE = "TXNONE"
    TXROLLEDBACK = "TXROLLEDBACK"
    # Redis's own
    NOGROUP = "NOGROUP"  # the consumer group is gone (deleted, or the stream was)
    BUSYGROUP = "BUSYGROUP"  # the group exists already: a create that is fine
    # refusals: Redis understood the command and will not run it
    OOM = "OOM"
    READONLY = "READONLY"
    NOREPLICAS = "NOREPLICAS"
    NOPERM = "NOPERM"
    MISCONF = "MISCONF"
    MASTERDOWN = "MASTERDOWN"
    AUTH = "AUTH"  # NOAUTH and WRONGPASS
    MOVED = "MOVED"  # a plain client on a node of a Redis Cluster
    ASK = "ASK"

    @property
    def is_transaction_state(self) -> bool:
        return self.value.startswith("TX")


_REFUSALS = frozenset(
    {
        ReplyCode.OOM,
        ReplyCode.READONLY,
        ReplyCode.NOREPLICAS,
        ReplyCode.NOPERM,
        ReplyCode.MISCONF,
        ReplyCode.MASTERDOWN,
        ReplyCode.AUTH,
    }
)
_ALIASES = {"NOAUTH": ReplyCode.AUTH, "WRONGPASS": ReplyCode.AUTH}
# redis-py's exception classes whose message lost its code
_BY_CLASS = {
    "AuthenticationError": ReplyCode.AUTH,
    "OutOfMemoryError": ReplyCode.OOM,
    "ReadOnlyError": ReplyCode.READONLY,
    "NoPermissionError": ReplyCode.NOPERM,
    "MovedError": ReplyCode.MOVED,
    "AskError": ReplyCode.ASK,
}
_SCRIPT_NOPERM = "The user executing the script can't run this command"


def is_error_reply(reply: object) -> bool:
    """Whether *reply* is an error reply of Redis (not a lost connection or a timeout)."""
    return isinstance(reply, Exception) and any(c.__name__ == "ResponseError" for c in type(reply).__mro__)


def classify(reply: object) -> ReplyCode | None:
    """The code of an error reply, None for a reply that is not an error or has no code we know.

    >>> from redis.exceptions import ConnectionError, NoPermissionError, ResponseError
    >>> classify(ResponseError("NOGROUP No such key 'q' or consumer group 'g'"))
    <ReplyCode.NOGROUP: 'NOGROUP'>
    >>> classify(NoPermissionError("this user has no permissions to run the 'xadd' command"))
    <ReplyCode.NOPERM: 'NOPERM'>
    >>> classify(ResponseError("WRONGTYPE Operation against a key")) is None
    True
    >>> classify(ConnectionError("NOGROUP lookalike")) is None, classify(b"NOGROUP") is None
    (True, True)
    """
    if not isinstance(reply, Exception):
        return None
    for cls in type(reply).__mro__:  # (AuthenticationError is a ConnectionError in redis-py)
        by_class = _BY_CLASS.get(cls.__name__)
        if by_class is not None:
            return by_class
    if not is_error_reply(reply):
        return None
    word = str(reply).split(" ", 1)[0]
    if word in _ALIASES:
        return _ALIASES[word]
    try:
        return ReplyCode(word)
    except ValueError:
        return None


def refusal(exc: BaseException) -> BrokerRefusedError | None:
    """*exc* as a BrokerRefusedError if Redis refused the command, else None.

    >>> from redis.exceptions import MovedError, OutOfMemoryError, ResponseError
    >>> refusal(ResponseError("NOREPLICAS Not enough good replicas to write.")).code
    'NOREPLICAS'
    >>> refusal(OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")).code
    'OOM'
    >>> refusal(MovedError("3999 127.0.0.1:6381")).code
    'MOVED'
    >>> refusal(ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")) is None
    True
    """
    code = classify(exc)
    if code in (ReplyCode.MOVED, ReplyCode.ASK):
        return BrokerRefusedError(
            code.value, f"{exc} (a Redis Cluster: connect with redis+cluster://host:port)"
        )
    if code in _REFUSALS:
        return BrokerRefusedError(code.value, str(exc))
    if is_error_reply(exc) and _SCRIPT_NOPERM in str(exc):  # an ACL refusal in a script is a plain ERR
        return BrokerRefusedError("NOPERM", str(exc))
    return None


def unknown_waitaof(reply: object) -> bool:
    """Whether *reply* is a server before 7.2 refusing WAITAOF (it has WAIT only).

    >>> from redis.exceptions import ResponseError
    >>> unknown_waitaof(ResponseError("unknown command 'WAITAOF', with args beginning with: '0' '1' "))
    True
    >>> unknown_waitaof(ResponseError("NOREPLICAS Not enough good replicas to write."))
    False
    """
    text = str(reply).lower()
    return is_error_reply(reply) and "unknown command" in text and "waitaof" in text
