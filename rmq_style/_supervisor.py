"""The worker supervisor: N worker processes, a crashed one restarted, SIGTERM drains them all.

The supervisor does no messaging itself; each child is ``python -m
rmq_style._worker`` and shuts down gracefully on SIGTERM (stop fetching,
finish or hand back in-flight messages, release locks). A child that exits on
its own with an error is restarted after a growing pause.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import structlog

from .push.broadcast_positions import WORKER_SLOT_ENV

log = structlog.get_logger("rmq_style.supervisor")

_RESTART_BACKOFF_S = (0.5, 1, 2, 5, 10, 30)


@dataclass
class _Child:
    slot: int
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    failures: int = 0


class Supervisor:
    def __init__(
        self,
        app_path: str,
        processes: int,
        *,
        only_groups: list[str] | None = None,
        concurrency: int | None = None,
        shutdown_timeout_s: float = 30.0,
        metrics_port: int | None = None,
        app_dir: str = ".",
    ) -> None:
        self.app_path = app_path
        self.processes = processes
        self.shutdown_timeout_s = shutdown_timeout_s
        self._args = [sys.executable, "-m", "rmq_style._worker", app_path, "--app-dir", app_dir]
        for group in only_groups or []:
            self._args += ["--only", group]
        if concurrency is not None:
            self._args += ["--concurrency", str(concurrency)]
        self.metrics_port = metrics_port
        self._stop = threading.Event()
        self._children: dict[int, _Child] = {}

    def __repr__(self) -> str:
        alive = sum(1 for c in self._children.values() if c.process.poll() is None)
        return f"<Supervisor app={self.app_path!r} processes={alive}/{self.processes}>"

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def _spawn(self, slot: int, failures: int = 0) -> None:
        args = list(self._args)
        if self.metrics_port is not None:
            # one port per process; the first one also serves the groups' progress (the same for all)
            args += ["--metrics-port", str(self.metrics_port + slot)]
            if slot == 0:
                args.append("--metrics-progress")
        # the slot names the process' broadcasting positions: stable across its restarts
        process = subprocess.Popen(args, env={**os.environ, WORKER_SLOT_ENV: str(slot)})
        self._children[slot] = _Child(slot, process, failures=failures)
        log.info("worker_spawned", slot=slot, pid=process.pid)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        for slot in range(self.processes):
            self._spawn(slot)
        restart_at: dict[int, float] = {}
        while not self._stop.wait(0.2):  # the wait is the supervisor's tick, woken at once by a signal
            now = time.monotonic()
            for slot, child in list(self._children.items()):
                code = child.process.poll()
                if code is None or slot in restart_at:
                    continue
                # a child alive for a minute earns a fresh backoff
                failures = 0 if now - child.started > 60 else child.failures + 1
                child.failures = failures
                pause = _RESTART_BACKOFF_S[min(failures, len(_RESTART_BACKOFF_S) - 1)]
                log.warning("worker_exited", slot=slot, pid=child.process.pid, code=code, restart_in_s=pause)
                restart_at[slot] = now + pause
            for slot, when in list(restart_at.items()):
                if now >= when:
                    del restart_at[slot]
                    self._spawn(slot, self._children[slot].failures)
        return self._shutdown()

    def _shutdown(self) -> int:
        log.info("supervisor_stopping", processes=len(self._children))
        for child in self._children.values():
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout_s
        clean = True
        for child in self._children.values():
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker_killed_after_deadline", slot=child.slot, pid=child.process.pid)
                child.process.kill()
                child.process.wait()
                clean = False
        log.info("supervisor_stopped", clean=clean)
        return 0 if clean else 1
