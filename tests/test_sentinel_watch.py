"""SwitchWatch's reading of sentinel events (the pub/sub part runs in tests/test_failover.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rmq_style._connection import parse_url
from rmq_style._sentinel_watch import SwitchWatch, acquire_watch, release_watch
from rmq_style.testing import free_port


@pytest.fixture
def watch() -> Iterator[SwitchWatch]:
    target = parse_url(f"redis+sentinel://127.0.0.1:{free_port()}/mymaster").sentinel
    assert target is not None
    watch = acquire_watch(target)  # its sentinel does not answer: the listener retries quietly
    yield watch
    release_watch(target, watch)


def test_a_promotion_holds_writes_until_the_switch_or_an_abort(watch: SwitchWatch) -> None:
    promoting = "slave 127.0.0.1:7002 127.0.0.1 7002 @ {} 127.0.0.1 7001"
    watch.on_event("+failover-state-send-slaveof-noone", promoting.format("othermaster"))
    assert not watch.held()
    watch.on_event("+failover-state-send-slaveof-noone", promoting.format("mymaster"))
    assert watch.held()
    watch.on_event("-failover-abort-not-elected", "master mymaster 127.0.0.1 7001")
    assert not watch.held() and watch.generation == 0
    watch.on_event("+failover-state-send-slaveof-noone", promoting.format("mymaster"))
    watch.on_event("+switch-master", "othermaster 127.0.0.1 7001 127.0.0.1 7002")
    assert watch.held() and watch.address is None
    watch.on_event("+switch-master", "mymaster 127.0.0.1 7001 127.0.0.1 7002")
    assert not watch.held()
    assert (watch.address, watch.generation) == (("127.0.0.1", 7002), 1)
    watch.on_event("+switch-master", "mymaster 127.0.0.1 7001 127.0.0.1 7002")  # from another sentinel
    assert watch.generation == 1


def test_an_announced_master_that_refuses_writes_is_forgotten(watch: SwitchWatch) -> None:
    watch.announce(("127.0.0.1", 7002))
    watch.refute(("127.0.0.1", 7001))  # not the announced one: kept
    assert watch.address == ("127.0.0.1", 7002)
    watch.refute(("127.0.0.1", 7002))  # READONLY from it: ask the sentinels again
    assert watch.address is None and watch.generation == 1


def test_one_watch_per_url_in_a_process_closed_with_its_last_client() -> None:
    target = parse_url(f"redis+sentinel://127.0.0.1:{free_port()}/mymaster").sentinel
    assert target is not None
    first, second = acquire_watch(target), acquire_watch(target)
    assert first is second and first.users == 2
    release_watch(target, first)
    assert all(t.is_alive() for t in first._threads)
    release_watch(target, second)
    assert not any(t.is_alive() for t in first._threads)
    third = acquire_watch(target)
    assert third is not first
    release_watch(target, third)
