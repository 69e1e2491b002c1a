"""OpenTelemetry tracing and metrics, off unless turned on (the ``otel`` extra; docs/tracing.md).

>>> from rmq_style import otel
>>> otel.instrumented()
False

``instrument()`` turns it on for the producers and consumers made afterwards
(``App(..., tracing=True)`` calls it for you); ``uninstrument()`` turns it
off again. Without ``pip install "rmq_style[otel]"``, importing rmq_style and
consuming work as before, and ``instrument()`` says what to install.
"""

from __future__ import annotations

from typing import Any

from ._errors import ConfigurationError
from ._telemetry import Telemetry, active, set_active

__all__ = ["instrument", "instrumented", "uninstrument"]


def instrument(tracer_provider: Any = None, meter_provider: Any = None, *, parent: bool = False) -> Telemetry:
    """Trace and measure sends, receives, listener calls and settlements from now on.

    *tracer_provider*, *meter_provider*: the OpenTelemetry providers (default: the
    global ones, also when they are set later). *parent*: a process span of a single
    message is the child of the message's creation context (its send span) instead of
    linking to it (the default, as the messaging conventions recommend; batches link).
    Producers and consumers made before this call are not traced.
    """
    try:
        from ._otel import OtelTelemetry  # noqa: PLC0415 - the optional extra, imported when asked for
    except ImportError as exc:
        raise ConfigurationError(
            f'OpenTelemetry is not installed ({exc}): pip install "rmq_style[otel]"'
        ) from exc
    telemetry = OtelTelemetry(tracer_provider, meter_provider, parent=parent)
    set_active(telemetry)
    return telemetry


def uninstrument() -> None:
    """Stop tracing: producers and consumers made from now on report nothing."""
    set_active(None)


def instrumented() -> bool:
    return active() is not None
