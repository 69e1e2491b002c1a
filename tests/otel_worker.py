"""A worker process with tracing on, for tests/test_otel.py.

Usage: python -m tests.otel_worker URL SPANS_FILE

``App(URL, tracing=True, tracing_parent=True)`` with a global TracerProvider that
writes each finished span as one JSON line to SPANS_FILE. Its handler of
"orders" fails the first delivery of a message (a retry) and opens its own span.
Prints "ready" once consuming; stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from rmq_style import App, ReceivedMessage


def one_line(span: ReadableSpan) -> str:
    return span.to_json(indent=None) + "\n"


async def main(url: str, spans_path: str) -> None:
    out = open(spans_path, "a", buffering=1)  # noqa: SIM115 - open for the life of the process
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=out, formatter=one_line)))
    trace.set_tracer_provider(provider)
    app = App(url, tracing=True, tracing_parent=True, concurrency=2)
    tracer = trace.get_tracer("billing")

    @app.subscribe("orders", group="billing", retry_delays_ms=(20,))
    async def handle(msg: ReceivedMessage) -> None:
        if msg.reconsume_times == 0:
            raise ValueError("first delivery fails")
        with tracer.start_as_current_span("handle order"):
            pass

    stop, ready = asyncio.Event(), asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    task = asyncio.create_task(
        app.run(stop, ready=ready, consume_from="first", poll_timeout_ms=100, retry_poll_ms=50)
    )
    await ready.wait()
    print("ready", flush=True)
    await task


if __name__ == "__main__":
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout says "ready"
    asyncio.run(main(sys.argv[1], sys.argv[2]))
