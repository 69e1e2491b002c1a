"""Seeded data for the console tests: a group in every state the pages show."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rmq_style import Admin, App, Message, Producer, ReceivedMessage
from rmq_style.testing import AppTester

HOSTILE = "<script>alert('x')</script><b>bold</b>"


@dataclass
class Seeded:
    """What was seeded, and what the handlers saw (replays show up in *billed*)."""

    url: str
    failing: set[int] = field(default_factory=lambda: {3})
    billed: list[tuple[int, int]] = field(default_factory=list)
    hostile_id: str = ""
    traced_id: str = ""
    tester: AppTester | None = None


def wait_for(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def make_app(seeded: Seeded) -> App:
    app = App(seeded.url)

    @app.subscribe("orders", group="billing", max_reconsume_times=0)
    def bill(body: dict[str, Any], msg: ReceivedMessage) -> None:
        seeded.billed.append((body["n"], msg.reconsume_times))
        if body["n"] in seeded.failing:
            raise RuntimeError(f"order {body['n']} <em>failed</em>")

    @app.subscribe("orders", group="audit", max_reconsume_times=5)
    def audit(body: dict[str, Any]) -> None:
        if body["n"] == 1:
            raise RuntimeError("audit store down")

    @app.subscribe("orders", group="shipping", orderly=True, max_reconsume_times=-1)
    def ship(body: dict[str, Any]) -> None:
        if body["n"] == 2:
            raise RuntimeError("carrier down")

    return app


@contextmanager
def seeded_console_data(url: str) -> Iterator[Seeded]:
    """Topics orders (4 msgs, 1 queue) and events; groups: billing with a dead letter whose body is
    HTML, audit with a retrying message, shipping with a held orderly queue, reports lagging by 5."""
    seeded = Seeded(url)
    with Admin(url) as admin, Producer(url) as producer:
        admin.create_topic("orders", queues=1)
        admin.create_topic("events", queues=2)
        reports = App(url)

        @reports.subscribe("events", group="reports")
        def report(body: dict[str, Any]) -> None:
            pass

        with AppTester(reports) as tester:
            producer.send(Message("events", {"n": 0}))
            tester.drain()
        producer.send_batch([Message("events", {"n": n}) for n in range(1, 6)])
        sent = producer.send_batch(
            [
                Message("orders", {"n": n, "note": HOSTILE if n == 3 else ""}, keys=[f"order-{n}"])
                for n in range(4)
            ]
        )
        seeded.hostile_id = sent[3].msg_id
        traced = Producer(url, trace_sample=1.0)  # docs/trace.md: the message page shows its journey
        seeded.traced_id = traced.send(Message("orders", {"n": 4, "note": ""}, keys=["order-4"])).msg_id
        traced.close()
        with AppTester(
            make_app(seeded), retry_delays_ms=(600_000,), suspend_current_queue_time_ms=300
        ) as tester:
            seeded.tester = tester

            def all_states() -> bool:
                rows = {g: admin.progress(g) for g in ("billing", "audit", "shipping")}
                return (
                    sum(r.dead_letters for r in rows["billing"]) == 1
                    and sum(r.retrying for r in rows["audit"]) == 1
                    and any(r.held is not None for r in rows["shipping"])
                )

            wait_for(all_states, "the seeded groups reach their states")
            yield seeded
