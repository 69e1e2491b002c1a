"""Redis calls as values: what the pure logic asks the I/O fronts to run.

A multi-step operation is a generator that yields a list of calls, receives
the list of replies (an exception instance in place of a failed call's reply)
and finally returns its result; ``drive`` in each front runs it.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.exceptions import (
    AskError,
    AuthenticationError,
    MovedError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)

from ._errors import BrokerRefusedError
from ._scripts import Script, script

__all__ = [
    "Call",
    "Command",
    "Flow",
    "Pause",
    "ScriptCall",
    "WaitAofRefused",
    "command",
    "refusal",
    "run_script",
    "single",
    "unknown_waitaof",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Command:
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class ScriptCall:
    script: Script
    keys: tuple[str, ...]
    args: tuple[Any, ...]
    # *args* already in the wire format (RESP bulk strings, no array header), when the
    # caller can make it cheaper than a generic packer: the fronts may send this instead
    packed: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def evalsha_args(self) -> tuple[Any, ...]:
        return ("EVALSHA", self.script.sha, self.script.numkeys, *self.keys, *self.args)

    @property
    def eval_args(self) -> tuple[Any, ...]:
        return ("EVAL", self.script.source, self.script.numkeys, *self.keys, *self.args)


@dataclass(frozen=True, slots=True)
class Pause:
    """Not a Redis call: the flow asks its driver to wait (a consumer with nothing to read)."""

    seconds: float


Call = Command | ScriptCall


class WaitAofRefused(ResponseError):
    """WAITAOF refused by a server before 7.2, with the reply of the WAIT a cluster driver ran in its
    place on the same connection (a WAIT sent later on another connection would count nothing)."""

    def __init__(self, message: str, wait_reply: Any) -> None:
        super().__init__(message)
        self.wait_reply = wait_reply


def unknown_waitaof(error: ResponseError) -> bool:
    text = str(error).lower()
    return "unknown command" in text and "waitaof" in text


# yields calls (or a Pause), receives their replies ([] after a Pause), returns T
Flow = Generator[Sequence[Call] | Pause, list[Any], T]


def command(*args: Any) -> Command:
    return Command(args)


def run_script(name: str, keys: Sequence[str], args: Sequence[Any]) -> ScriptCall:
    s = script(name)
    if len(keys) != s.numkeys:
        raise ValueError(f"script {name} takes {s.numkeys} keys, got {len(keys)}")
    return ScriptCall(s, tuple(keys), tuple(args))


def single(reply: Any) -> Any:
    """Raise a failed call's exception (a refusal as BrokerRefusedError), else return its reply."""
    if isinstance(reply, BaseException):
        refused = refusal(reply)
        if refused is not None:
            raise refused from reply
        raise reply
    return reply


# error codes by which Redis refuses a command it understood; redis-py strips the code of some
_REFUSALS = frozenset(
    {"OOM", "READONLY", "NOREPLICAS", "NOPERM", "MISCONF", "MASTERDOWN", "NOAUTH", "WRONGPASS"}
)
_SCRIPT_NOPERM = "The user executing the script can't run this command"
_REFUSAL_CLASSES: tuple[tuple[type[Exception], str], ...] = (
    (AuthenticationError, "AUTH"),
    (OutOfMemoryError, "OOM"),
    (ReadOnlyError, "READONLY"),
    (NoPermissionError, "NOPERM"),
)
_CLUSTER_CLASSES: tuple[tuple[type[Exception], str], ...] = ((MovedError, "MOVED"), (AskError, "ASK"))


def refusal(exc: BaseException) -> BrokerRefusedError | None:
    """*exc* as a BrokerRefusedError if Redis refused the command, else None.

    >>> refusal(ResponseError("NOREPLICAS Not enough good replicas to write.")).code
    'NOREPLICAS'
    >>> refusal(OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")).code
    'OOM'
    >>> refusal(MovedError("3999 127.0.0.1:6381")).code
    'MOVED'
    >>> refusal(ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")) is None
    True
    """
    for cls, code in _REFUSAL_CLASSES:
        if isinstance(exc, cls):
            return BrokerRefusedError(code, str(exc))
    for cls, code in _CLUSTER_CLASSES:  # a plain client on a node of a Redis Cluster
        if isinstance(exc, cls):
            return BrokerRefusedError(
                code, f"{exc} (a Redis Cluster: connect with redis+cluster://host:port)"
            )
    if isinstance(exc, ResponseError):
        text = str(exc)
        code = text.split(" ", 1)[0]
        if code in _REFUSALS:
            return BrokerRefusedError("AUTH" if code in ("NOAUTH", "WRONGPASS") else code, text)
        if _SCRIPT_NOPERM in text:  # an ACL refusal inside a script comes back as a plain ERR
            return BrokerRefusedError("NOPERM", text)
    return None
