"""compose.yaml's worker command, run as written by the `rmq-style` console script from the repo root.

A console script's sys.path[0] is its bin directory: the worker must make the working directory
(or --app-dir) importable itself, in the parent as in the worker processes.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rmq_style import Admin, Message, Producer

ROOT = Path(__file__).resolve().parent.parent
CONSOLE_SCRIPT = str(Path(sys.executable).parent / "rmq-style")


def compose_worker_command() -> list[str]:
    """The `rmq-style ...` part of the worker service's command in compose.yaml."""
    text = (ROOT / "compose.yaml").read_text()
    service = text.split("\n  worker:\n", 1)[1].split("\n\n", 1)[0]
    (line,) = [s for s in service.splitlines() if s.strip().startswith("command:")]
    command = json.loads(line.split("command:", 1)[1])  # a YAML flow sequence of "strings" is JSON
    assert command[:2] == ["sh", "-c"], command
    (run,) = [part for part in command[2].split("&&") if part.strip().startswith("rmq-style ")]
    return shlex.split(run)


def two_free_ports() -> int:
    """A port P with P and P + 1 free (one metrics port per worker process)."""
    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return int(port)
    raise AssertionError("no two consecutive free ports")


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)  # bounded poll of Redis state


def run_until_handled(args: list[str], url: str, cwd: Path, workers: int) -> str:
    """Start the worker, send orders, wait until billed by *workers* processes, SIGTERM: its stderr."""
    with Admin(url) as admin:
        admin.create_topic("orders", queues=4)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"RMQ_URL": url}
    worker = subprocess.Popen(args, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        with Producer(url) as producer:
            producer.send_batch(
                [Message("orders", {"order_id": n, "amount_cents": 5}, tag="created") for n in range(20)]
            )
        with Admin(url) as admin:

            def billed() -> bool:
                assert worker.poll() is None, f"the worker exited with {worker.returncode}"
                rows = admin.progress("billing")
                return sum(r.progress.consumed_queue_offset for r in rows) == 20 and not any(
                    r.progress.pending for r in rows
                )

            wait_for(billed)
            wait_for(lambda: len({r.owner for r in admin.progress("billing")}) == workers)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    return worker.stderr.read() if worker.stderr else ""


def test_compose_worker_command_runs_from_the_repo_root(real_url: str) -> None:
    command = compose_worker_command()
    assert command[:3] == ["rmq-style", "worker", "examples.billing_app:app"], command
    processes = int(command[command.index("--processes") + 1])
    # the metrics ports of compose.yaml may be taken on a shared machine: only their value changes
    command[command.index("--metrics-port") + 1] = str(two_free_ports())
    logs = run_until_handled([CONSOLE_SCRIPT, *command[1:]], real_url, ROOT, processes)
    assert logs.count('"event": "worker_stopped"') == processes


def test_app_dir_imports_the_app_from_another_directory(real_url: str, tmp_path: Path) -> None:
    args = [CONSOLE_SCRIPT, "worker", "billing_app:app", "--app-dir", str(ROOT / "examples")]
    logs = run_until_handled(args, real_url, tmp_path, 1)
    assert logs.count('"event": "worker_stopped"') == 1
