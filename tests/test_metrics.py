"""Prometheus metrics: consumer counters and group progress, in-process and from a worker process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from rmq_style import Admin, App, Message, Producer, Retention
from rmq_style.metrics import ConsumerCollector, ProgressCollector
from rmq_style.testing import AppTester, free_port

ROOT = Path(__file__).resolve().parent.parent


def test_counters_and_progress_match_what_happened(url: str) -> None:
    with Admin(url) as admin:
        admin.create_topic("orders", queues=2)
        admin.create_topic("capped", queues=1, retention=Retention.max_entries(10))
    app = App(url)

    @app.subscribe("orders", group="billing", max_reconsume_times=1)
    def bill(body: dict[str, Any]) -> None:
        if body["n"] == 3:
            raise RuntimeError("three")

    @app.subscribe("capped", group="audit")
    def audit(body: dict[str, Any]) -> None:
        return None

    registry = CollectorRegistry()
    registry.register(ConsumerCollector(app))
    registry.register(ProgressCollector(url, app.groups()))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("rmq_consumer_running", group="billing") == 0
    assert value("rmq_progress_up") == 1
    with Producer(url) as producer:
        producer.send_batch([Message("orders", {"n": n}) for n in range(8)])
        producer.send_batch([Message("capped", {"n": n}) for n in range(300)])
    # a group has progress rows once its consumers subscribed its topics
    assert value("rmq_group_lag", group="billing", topic="orders", queue="0") is None
    with AppTester(app) as tester:
        tester.drain()
        assert value("rmq_consumer_running", group="billing") == 1
        assert value("rmq_consumer_messages_total", group="billing", outcome="consumed") == 7
        assert value("rmq_consumer_messages_total", group="billing", outcome="failed") == 2
        assert value("rmq_consumer_messages_total", group="billing", outcome="retried") == 1
        assert value("rmq_consumer_messages_total", group="billing", outcome="dead_lettered") == 1
        assert value("rmq_consumer_in_flight", group="billing") == 0
        assert value("rmq_consumer_queues", group="billing") == 2
        audited = value("rmq_consumer_messages_total", group="audit", outcome="consumed")
        assert audited is not None and 0 < audited < 300  # the group starts at the first retained entry
    assert value("rmq_consumer_running", group="billing") == 0
    for q in ("0", "1"):
        assert value("rmq_group_lag", group="billing", topic="orders", queue=q) == 0
        assert value("rmq_group_pending", group="billing", topic="orders", queue=q) == 0
    dead = sum(value("rmq_group_dead_letters", group="billing", topic="orders", queue=q) or 0 for q in "01")
    assert dead == 1
    assert value("rmq_group_trimmed_total", group="audit", topic="capped", queue="0") == 0
    assert value("rmq_progress_up") == 1


def test_handler_durations_histogram_counts_every_listener_call(url: str) -> None:
    with Admin(url) as admin:
        admin.create_topic("orders", queues=2)
    app = App(url)

    @app.subscribe("orders", group="billing", max_reconsume_times=1)
    def bill(body: dict[str, Any]) -> None:
        if body["n"] == 0:
            time.sleep(0.3)
        if body["n"] == 3:
            raise RuntimeError("three")

    @app.subscribe("orders", group="shipping", orderly=True)
    async def ship(body: dict[str, Any]) -> None:
        if body["n"] == 0:
            await asyncio.sleep(0.3)

    registry = CollectorRegistry()
    registry.register(ConsumerCollector(app))

    def value(name: str, group: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"rmq_consumer_handler_seconds_{name}", {"group": group, **labels})

    with Producer(url) as producer:
        producer.send_batch([Message("orders", {"n": n}, keys=[str(n)]) for n in range(8)])
    with AppTester(app) as tester:
        tester.drain()
        # billing: 8 messages and the retry of n=3; shipping: 8 in order
        for group, calls in (("billing", 9), ("shipping", 8)):
            assert value("count", group) == calls
            assert value("bucket", group, le="+Inf") == calls
            assert value("bucket", group, le="0.25") == calls - 1  # the one that slept 0.3 s
            total = value("sum", group)
            assert total is not None and total >= 0.3


def test_progress_reports_down_when_redis_is_unreachable() -> None:
    registry = CollectorRegistry()
    registry.register(ProgressCollector(f"redis://127.0.0.1:{free_port()}/0", ["billing"]))
    assert registry.get_sample_value("rmq_progress_up") == 0
    assert (
        registry.get_sample_value("rmq_group_lag", {"group": "billing", "topic": "t", "queue": "0"}) is None
    )


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def consecutive_free_ports() -> int:
    """A free port whose next one is free too (worker process i serves on port + i)."""
    for _ in range(100):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports")


def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def test_worker_processes_serve_metrics_on_consecutive_ports(real_url: str) -> None:
    with Admin(real_url) as admin:
        admin.create_topic("orders", queues=4)
    port = consecutive_free_ports()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RMQ_URL": real_url}
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "rmq_style.cli", "worker", "examples.billing_app:app", "--processes", "2",
         "--metrics-port", str(port)],
        cwd=ROOT, env=env, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def total(p: int, name: str, outcome: str = "") -> float:
            """The sum of a metric's samples on process p's endpoint; -1 while it does not answer."""
            try:
                text = scrape(p)
            except OSError:
                return -1
            rows = [x for x in text.splitlines() if x.startswith(name) and outcome in x]
            return sum(float(x.split()[-1]) for x in rows)

        # the group starts at the last entry: send once both processes consume
        wait_for(
            lambda: total(port, "rmq_consumer_running") == 1 and total(port + 1, "rmq_consumer_running") == 1
        )
        with Producer(real_url) as producer:
            producer.send_batch(
                [Message("orders", {"order_id": n, "amount_cents": 1 + n}, tag="created") for n in range(100)]
            )
        consumed = 'outcome="consumed"'
        wait_for(
            lambda: (
                total(port, "rmq_consumer_messages_total", consumed)
                + total(port + 1, "rmq_consumer_messages_total", consumed)
                == 100
            )
        )
        first, second = scrape(port), scrape(port + 1)
        assert "rmq_group_lag{" in first and "rmq_progress_up 1.0" in first  # the first process: progress too
        assert "rmq_group_lag" not in second
    finally:
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0
