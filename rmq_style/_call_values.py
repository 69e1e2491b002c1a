"""Redis calls as values: what the pure logic asks the I/O fronts to run.

A multi-step operation is a generator that yields a list of calls, receives
the list of replies (an exception instance in place of a failed call's reply)
and finally returns its result; ``drive`` in each front runs it.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ._replies import refusal
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


class WaitAofRefused(Exception):
    """WAITAOF refused by a server before 7.2, with the reply of the WAIT a cluster driver ran in its
    place on the same connection (a WAIT sent later on another connection would count nothing)."""

    def __init__(self, message: str, wait_reply: Any) -> None:
        super().__init__(message)
        self.wait_reply = wait_reply


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
