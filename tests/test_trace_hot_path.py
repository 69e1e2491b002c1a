"""The message trace on the consumer's hot path: an entry that cannot be traced costs no recorder call.

A plain entry (the producers' layout, no properties) carries no trace flag, so
with ``message_trace="follow"`` the fetch marks its delivery untraceable and
neither ``wanted`` nor the settle round asks the recorder about it; an entry
whose properties carry the flag, or any entry with ``message_trace="all"``, is
timed and recorded as before (docs/trace.md). No I/O: the fetch's ``on_read``
and the settle planning run on a reply as Redis sends it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from rmq_style._filter import TagFilter
from rmq_style._message import MessageQueue
from rmq_style._trace import TRACE_FLAG
from rmq_style.push.context import Context
from rmq_style.push.fetch import Fetcher
from rmq_style.push.outcomes import Ack
from rmq_style.push.settings import PushSettings
from rmq_style.push.settling import Settler
from rmq_style.push.state import Delivery, QueueState, StreamState, Subscription

LAYOUT = [b"i", b"q", b"r", b"b", b"t", b"k", b"p", b"c", b"d"]


def entry(props: bytes) -> list[bytes]:
    values = [b"0" * 32, b"1", b"0", b"1700000000000", b"", b"", props, b"j", b"{}"]
    return [x for pair in zip(LAYOUT, values, strict=True) for x in pair]


class Calls:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    def submit_many(self, calls: list[Any]) -> None:
        self.calls += calls


async def noop(msg: object) -> None:
    return None


def read(trace: str) -> tuple[Context, list[Delivery]]:
    """Two entries read by a consumer with *trace*: a plain one, then one whose producer traced it."""

    async def main() -> tuple[Context, list[Delivery]]:
        c = Context("redis://unused", "g", PushSettings(message_trace=trace))  # type: ignore[arg-type]
        c.member_valid_until = time.monotonic() + 60
        sub = Subscription("orders", TagFilter.parse("*"), noop, True, None)
        q = QueueState(MessageQueue("orders", 0), c.keys.queue("orders", 0), sub)
        st = StreamState("rmq:{orders:0}:s", q, False)
        q.streams = (st,)
        c.streams[st.key.encode()] = st
        pool = Calls()
        c.pool = pool  # type: ignore[assignment]
        traced = b'{"TRACE_ON":"1"}'
        assert TRACE_FLAG in traced
        reply = [[st.key.encode(), [[b"1-0", entry(b"")], [b"2-0", entry(traced)]]]]
        Fetcher(c, Settler(c)).on_read(reply, None)
        return c, [call[3] for call in pool.calls]

    return asyncio.run(main())


@pytest.mark.parametrize(("trace", "timed"), [("follow", [False, True]), ("all", [True, True])])
def test_only_entries_that_can_be_traced_are_timed_and_recorded(trace: str, timed: list[bool]) -> None:
    c, deliveries = read(trace)
    assert [d.traceable for d in deliveries] == [t or trace == "all" for t in timed]
    for d in deliveries:
        assert c.wanted(d)
    assert [bool(d.started) for d in deliveries] == timed
    settler = Settler(c)
    for d in deliveries:
        settler.on_done(d, None)
    assert [d.decision for d in deliveries] == [Ack(), Ack()]
    assert [d.ran >= 0 for d in deliveries] == timed
    assert c.recorder is not None
    assert len(c.recorder.records(deliveries)) == 1  # one merged trace call: the traced entries' records


def test_a_plain_entry_is_never_asked_about_its_flag_when_following() -> None:
    c, (plain, traced) = read("follow")
    asked: list[Delivery] = []
    recorder = c.recorder
    assert recorder is not None
    start = recorder.start

    def spy(token: Delivery | list[Delivery]) -> None:
        asked.append(token)  # type: ignore[arg-type]
        start(token)

    recorder.start = spy  # type: ignore[method-assign]
    assert c.wanted(plain) and c.wanted(traced)
    assert asked == [traced]
