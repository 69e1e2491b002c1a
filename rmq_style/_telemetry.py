"""The telemetry switch: None unless ``rmq_style.otel.instrument()`` turned OpenTelemetry on.

This module imports nothing (OpenTelemetry is an optional extra): producers and
consumers read ``active()`` once when they are made and keep what it gives,
so with telemetry off their per-message path pays one ``is None`` check. The
hooks they call are described by the protocols below; ``rmq_style._otel``
implements them with OpenTelemetry (docs/tracing.md).

A consumer of another kind (pull, lite pull, simple) reports what it received
with ``Telemetry.receiving``::

    telemetry = active()                      # in __init__
    ...
    if telemetry is None:
        return read()
    with telemetry.receiving(group) as receiving:
        messages = read()
        receiving.got(messages)                # one "receive {topic}" span per topic read
    return messages

A simple consumer's ack is a settle operation (``Telemetry.settling``): one
``ack {topic}`` span around it, its failure (a stale receipt handle) recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

__all__ = ["ConsumerHooks", "Receiving", "Sending", "Telemetry", "active", "set_active"]


class Sending(Protocol):
    """One send (``Telemetry.sending``): the messages to write (their trace context added)."""

    messages: list[Any]  # Message

    def sent(self, results: Sequence[Any]) -> None:
        """Where they landed (SendResult per message)."""


class Receiving(Protocol):
    def got(self, messages: Sequence[Any]) -> None:
        """The messages the receive returned (ReceivedMessage); none: no span."""


class ConsumerHooks(Protocol):
    """What one push consumer (one group) reports: listener calls and settlements."""

    def begin(self, token: Any) -> Any:
        """A listener call starts (in its worker task); *token*: a Delivery, a list of them, or a list
        of ReceivedMessage (orderly). Returns what ``end`` is given."""

    def end(self, begun: Any, outcome: object) -> None:
        """The call ended with *outcome* (None, the return value, or the exception)."""

    def settled(
        self,
        started_ns: int,
        acked: Sequence[Sequence[Any]],
        done: Sequence[Any],
        failed: Sequence[tuple[Any, Exception]] = (),
    ) -> None:
        """A settle round that began at *started_ns* (time_ns): per stream, the deliveries acked; the
        other outcomes (Settled); the deliveries whose call failed, with the error."""


class Telemetry(Protocol):
    parent: bool  # process spans take the message's creation context as parent (single messages)

    def sending(self, messages: Sequence[Any], kind: str = "normal") -> AbstractContextManager[Sending]: ...

    def receiving(
        self, group: str, topic: str | None = None, queue_id: int | None = None
    ) -> AbstractContextManager[Receiving]: ...

    def settling(self, group: str, operation: str, message: Any) -> AbstractContextManager[None]:
        """One settle call of a simple consumer (*operation* "ack") on *message* (a SimpleMessage or a
        receipt handle text)."""

    def consumer(self, group: str) -> ConsumerHooks: ...


_active: Telemetry | None = None


def active() -> Telemetry | None:
    """The telemetry to report to, or None (the default: OpenTelemetry off)."""
    return _active


def set_active(telemetry: Telemetry | None) -> None:
    global _active
    _active = telemetry
