"""One worker process: import the app by dotted path, run it until SIGTERM/SIGINT, exit 0.

Run by the supervisor as ``python -m rmq_style._worker module:app [--only GROUP ...]
[--concurrency N] [--metrics-port P [--metrics-progress]] [--app-dir DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import os
import signal
import sys
from typing import Any, Protocol

import structlog

from ._errors import ConfigurationError, ConsumerFailedError

log = structlog.get_logger("rmq_style.worker")


class Runnable(Protocol):
    async def run(self, stop: asyncio.Event, *, only_groups: list[str] | None = None,
                  concurrency: int | None = None) -> None: ...  # fmt: skip


def use_app_dir(app_dir: str) -> str:
    """Put *app_dir* (absolute) first on sys.path, as uvicorn's --app-dir does; returns it.

    A console script's sys.path[0] is its bin directory, not the working directory.
    """
    path = os.path.abspath(app_dir)
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)
    return path


def import_app(path: str) -> Any:
    """``package.module:attribute`` -> the object (the App)."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"app path {path!r} must look like 'package.module:app'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import module {module_name!r} for app {path!r}: {exc}") from exc
    try:
        obj = getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(getattr(obj, "run", None)):
        raise ConfigurationError(f"{path!r} is a {type(obj).__name__}, not an rmq_style App")
    return obj


async def serve(app: Runnable, only_groups: list[str] | None, concurrency: int | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.run(stop, only_groups=only_groups, concurrency=concurrency)


def configure_logging() -> None:
    """JSON log lines on stderr, unless the app configured structlog itself."""
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rmq_style._worker")
    parser.add_argument("app")
    parser.add_argument("--only", action="append", default=None)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--metrics-port", type=int, default=None)
    parser.add_argument("--metrics-progress", action="store_true")
    parser.add_argument("--app-dir", default=".")
    args = parser.parse_args(argv)
    configure_logging()
    use_app_dir(args.app_dir)
    app = import_app(args.app)
    if args.metrics_port is not None:
        from .metrics import serve_metrics  # noqa: PLC0415 - the prometheus extra

        serve_metrics(app, args.metrics_port, progress=args.metrics_progress)
    log.info("worker_started", app=args.app, only_groups=args.only)
    # What the imports made lives as long as the process: out of the collector's way, so the
    # per-message garbage of consumption does not have it walked again and again; and the young
    # generation collected every 20,000 allocations, not 700 (together ~20% of a worker's CPU
    # time per message, bench/scale.py).
    gc.freeze()
    gc.set_threshold(20_000)
    try:
        asyncio.run(serve(app, args.only, args.concurrency))
    except ConsumerFailedError as exc:  # drained and left its group already: a new process takes over
        log.error("worker_failed", app=args.app, error=str(exc))
        return 1
    log.info("worker_stopped", app=args.app)
    return 0


if __name__ == "__main__":
    sys.exit(main())
