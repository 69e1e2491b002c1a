"""Operator views on both backends: progress, reset-offset, dead letters and replay."""

from __future__ import annotations

import time
from typing import Any

import pytest

from rmq_style import Admin, App, Message, Producer, ReceivedMessage, TopicNotFoundError, UsageError
from rmq_style.testing import AppTester


def make_app(
    url: str, outcomes: dict[int, str], seen: list[tuple[int, int]], ids: dict[int, set[str]]
) -> App:
    app = App(url)

    @app.subscribe("orders", group="billing", max_reconsume_times=1)
    def bill(body: dict[str, Any], msg: ReceivedMessage) -> None:
        seen.append((body["n"], msg.reconsume_times))
        ids.setdefault(body["n"], set()).add(msg.msg_id)
        if outcomes.get(body["n"]) == "fail":
            raise RuntimeError(f"order {body['n']} failed")

    return app


def test_progress_dead_letters_and_replay(front: Any, url: str) -> None:
    with front.Admin(url) as admin:
        admin.create_topic("orders", queues=2)
    outcomes = {3: "fail", 7: "fail"}
    seen: list[tuple[int, int]] = []
    ids: dict[int, set[str]] = {}
    app = make_app(url, outcomes, seen, ids)
    with front.Producer(url) as producer:
        producer.send_batch([Message("orders", {"n": n}) for n in range(10)])
    with AppTester(app) as tester:
        tester.drain()
        with front.Admin(url) as admin:
            rows = admin.progress("billing")
            assert [
                (r.progress.queue.queue_id, r.progress.max_queue_offset, r.progress.lag) for r in rows
            ] == [
                (0, 5, 0),
                (1, 5, 0),
            ]
            assert sum(r.dead_letters for r in rows) == 2
            assert all(r.owner is not None and r.owner == rows[0].owner for r in rows)
            dead = admin.dead_letters("billing")
            assert sorted(d.message.value()["n"] for d in dead) == [3, 7]
            assert all(d.reason.startswith("RuntimeError: order") for d in dead)
            assert all(d.message.reconsume_times == 1 for d in dead)
            first_ids = {d.message.msg_id for d in dead}
            outcomes.clear()  # the fix is deployed: replay
            assert admin.replay_dead_letters("billing", dead) == 2
            assert admin.replay_dead_letters("billing", dead) == 0  # replayed once only
        tester.drain()
        with front.Admin(url) as admin:
            assert admin.dead_letters("billing") == []
            assert sum(r.dead_letters for r in admin.progress("billing")) == 0
    replayed = [(n, r) for n, r in seen if n in (3, 7)]
    assert replayed.count((3, 0)) == 2 and replayed.count((7, 0)) == 2  # first try and the replay
    assert (3, 1) in replayed and (7, 1) in replayed
    assert ids[3] | ids[7] == first_ids  # every delivery, replays included, kept the msg id


def test_progress_before_any_consumer_shows_full_lag(url: str) -> None:
    with Admin(url) as admin, Producer(url) as producer:
        admin.create_topic("orders", queues=2)
        producer.send_batch([Message("orders", n) for n in range(6)])
        rows = admin.progress("billing", "orders")
        assert [(r.progress.group_offset, r.progress.lag, r.owner) for r in rows] == [(None, 3, None)] * 2
        with pytest.raises(TopicNotFoundError):
            admin.progress("billing", "nope")
        assert admin.progress("nobody") == []


def test_reset_offset_to_first_last_and_timestamp(front: Any, url: str) -> None:
    with front.Admin(url) as admin, front.Producer(url) as producer:
        admin.create_topic("orders", queues=1)
        producer.send_batch([Message("orders", n) for n in range(3)])
        cut = int(time.time() * 1000) + 1
        while int(time.time() * 1000) <= cut:  # the next entries get a later server-clock ms
            pass
        producer.send_batch([Message("orders", n) for n in range(3, 5)])
        admin.reset_offset("billing", "orders", "last")
        assert admin.progress("billing", "orders")[0].progress.lag == 0
        admin.reset_offset("billing", "orders", "first")
        assert admin.progress("billing", "orders")[0].progress.lag == 5
        admin.reset_offset("billing", "orders", cut)
        assert admin.progress("billing", "orders")[0].progress.lag == 2
        with pytest.raises(UsageError, match="'first', 'last' or a timestamp"):
            admin.reset_offset("billing", "orders", "middle")  # type: ignore[arg-type]


def test_progress_shows_the_orderly_owner_and_a_held_queue(url: str) -> None:
    with Admin(url) as admin, Producer(url) as producer:
        admin.create_topic("orders", queues=2)
        sent = producer.send_batch([Message("orders", {"n": n}) for n in range(4)], queue_id=1)
    app = App(url)

    @app.subscribe("orders", group="shipping", orderly=True, max_reconsume_times=-1)
    def ship(body: dict[str, Any]) -> None:
        if body["n"] == 2:
            raise RuntimeError("carrier down")

    with AppTester(app, suspend_current_queue_time_ms=20) as tester, Admin(url) as admin:
        deadline = time.monotonic() + 10
        rows = admin.progress("shipping")
        while not (rows[1].held and rows[1].held.attempts >= 2):
            assert time.monotonic() < deadline, rows
            rows = admin.progress("shipping")
        member = tester.app.consumers["shipping"].member
        assert rows[1].owner == member and rows[0].owner == member
        held = rows[1].held
        assert held.reason.startswith("RuntimeError: carrier down")
        assert held.offset == sent[2].offset  # the blocked message, and nothing after it was handled
        assert rows[1].progress.pending >= 1 and rows[0].held is None


def test_purge_dead_letters_all_or_older_than_a_time(front: Any, url: str) -> None:
    with front.Admin(url) as admin:
        admin.create_topic("orders", queues=2)
        admin.create_topic("refunds", queues=1)
    app = App(url)

    @app.subscribe("orders", group="billing", max_reconsume_times=0)
    def bill(body: dict[str, Any]) -> None:
        raise RuntimeError("always")

    @app.subscribe("refunds", group="billing", max_reconsume_times=0)
    def refund(body: dict[str, Any]) -> None:
        raise RuntimeError("always")

    with front.Producer(url) as producer, AppTester(app) as tester, front.Admin(url) as admin:
        producer.send_batch([Message("orders", {"n": n}) for n in range(4)])
        tester.drain()
        cut = _server_ms(url) + 1
        while _server_ms(url) <= cut:  # later dead letters get a later server-clock ms
            pass
        producer.send_batch([Message("orders", {"n": n}) for n in range(4, 7)])
        producer.send_batch([Message("refunds", {"n": n}) for n in range(2)])
        tester.drain()
        assert len(admin.dead_letters("billing")) == 9
        assert admin.purge_dead_letters("billing", "orders", before=cut) == 4
        assert sorted(d.message.value()["n"] for d in admin.dead_letters("billing", "orders")) == [4, 5, 6]
        assert admin.purge_dead_letters("billing", "orders", before=cut) == 0
        assert admin.purge_dead_letters("billing") == 5  # every topic of the group
        assert admin.dead_letters("billing") == []
        assert sum(r.dead_letters for r in admin.progress("billing")) == 0


def _server_ms(url: str) -> int:
    from rmq_style._sync._io import open_client

    seconds, micros = open_client(url).time()
    return int(seconds) * 1000 + int(micros) // 1000
