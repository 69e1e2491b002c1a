"""`rmq-style worker` as real processes: start, crash-restart, graceful SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def lines(log: Path, word: str) -> list[str]:
    if not log.exists():
        return []
    return [line for line in log.read_text().splitlines() if line.startswith(word)]


def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


@pytest.fixture
def worker_log(tmp_path: Path) -> Path:
    return tmp_path / "life.log"


def start(worker_log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RMQ_TEST_LOG": str(worker_log), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "rmq_style.cli", "worker", "tests.apps.sleepy:app", *args], cwd=ROOT, env=env
    )


def test_processes_start_and_stop_gracefully_on_sigterm(worker_log: Path) -> None:
    supervisor = start(worker_log, "--processes", "2", "--only", "billing", "--concurrency", "3")
    wait_for(lambda: len(lines(worker_log, "started")) == 2)
    assert all(line.endswith("['billing'] 3") for line in lines(worker_log, "started"))
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=20) == 0
    started = {line.split()[1] for line in lines(worker_log, "started")}
    stopped = {line.split()[1] for line in lines(worker_log, "stopped")}
    assert started == stopped


def test_a_killed_worker_is_restarted(worker_log: Path) -> None:
    supervisor = start(worker_log, "--processes", "2")
    wait_for(lambda: len(lines(worker_log, "started")) == 2)
    victim = int(lines(worker_log, "started")[0].split()[1])
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(lines(worker_log, "started")) == 3)
    supervisor.send_signal(signal.SIGINT)
    assert supervisor.wait(timeout=20) == 0
    assert len(lines(worker_log, "stopped")) == 2  # the two live workers drained; the victim could not


def test_wrong_app_path_fails_fast(worker_log: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rmq_style.cli", "worker", "tests.apps.sleepy:nothing"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 2
    assert "has no attribute 'nothing'" in result.stdout


def test_worker_runs_a_real_app_and_drains_on_sigterm(real_url: str) -> None:
    from rmq_style import Admin, Message, Producer

    with Admin(real_url) as admin:
        admin.create_topic("orders", queues=4)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RMQ_URL": real_url}
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "rmq_style.cli", "worker", "examples.billing_app:app", "--processes", "2"],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    with Producer(real_url) as producer:
        producer.send_batch(
            [Message("orders", {"order_id": n, "amount_cents": 100 + n}, tag="created") for n in range(200)]
        )
    with Admin(real_url) as admin:
        wait_for(lambda: sum(r.progress.consumed_queue_offset for r in admin.progress("billing")) == 200
                 and sum(r.progress.pending for r in admin.progress("billing")) == 0)  # fmt: skip
        wait_for(lambda: len({r.owner for r in admin.progress("billing")}) == 2)  # both workers own queues
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=60) == 0
    logs = supervisor.stderr.read() if supervisor.stderr else ""
    assert logs.count('"event": "worker_stopped"') == 2
