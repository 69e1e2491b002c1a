"""The fakeredis XREADGROUP work-around: these fail if the defect comes back."""

from __future__ import annotations

import threading
import time

import fakeredis
import pytest
from redis.exceptions import ResponseError

from rmq_style._connection import memory_server
from rmq_style._fakeredis_fix import AFFECTED, apply, is_applied


@pytest.fixture
def fake() -> fakeredis.FakeRedis:
    client = fakeredis.FakeRedis(server=memory_server("fix-test-" + str(time.monotonic_ns())), protocol=2)
    client.xgroup_create("s", "g", id="0", mkstream=True)
    return client


def test_guard_covers_the_installed_version() -> None:
    assert AFFECTED("2.40.0") and not AFFECTED("2.25.0")
    apply()
    assert is_applied() == AFFECTED(fakeredis.__version__)


def test_block_with_count_waits_for_an_entry(fake: fakeredis.FakeRedis) -> None:
    writer = threading.Timer(0.2, lambda: fake.xadd("s", {"f": "v"}))
    writer.start()
    start = time.monotonic()
    reply = fake.xreadgroup("g", "c", {"s": ">"}, count=10, block=5000)
    assert time.monotonic() - start >= 0.15  # it blocked until the write
    assert [fields for _, fields in reply[0][1]] == [{b"f": b"v"}]


def test_block_with_count_times_out_empty(fake: fakeredis.FakeRedis) -> None:
    start = time.monotonic()
    assert fake.xreadgroup("g", "c", {"s": ">"}, count=10, block=200) == []
    assert time.monotonic() - start >= 0.18


def test_block_without_count_returns_existing_entries(fake: fakeredis.FakeRedis) -> None:
    for n in range(3):
        fake.xadd("s", {"n": n})
    reply = fake.xreadgroup("g", "c", {"s": ">"}, block=1000)
    assert len(reply[0][1]) == 3
    assert fake.xpending("s", "g")["pending"] == 3


def test_history_read_with_block_answers_at_once(fake: fakeredis.FakeRedis) -> None:
    fake.xadd("s", {"n": 1})
    fake.xreadgroup("g", "c", {"s": ">"}, count=1)
    start = time.monotonic()
    reply = fake.xreadgroup("g", "c", {"s": "0"}, count=10, block=3000)
    assert time.monotonic() - start < 1.0
    assert len(reply[0][1]) == 1


def test_missing_stream_says_nogroup(fake: fakeredis.FakeRedis) -> None:
    with pytest.raises(ResponseError, match=r"^NOGROUP"):
        fake.xreadgroup("g", "c", {"missing": ">"}, count=1)
