"""LitePullConsumer: allocation among members, takeover, seeks, pause, commits, consume_from, broadcasting."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from rmq_style import InvalidOffsetError, Message, MessageQueue, TopicNotFoundError, UsageError
from rmq_style._offsets import parse_offset
from rmq_style._sync._io import open_client

FAST = {"heartbeat_interval_ms": 50, "member_expiry_ms": 400, "auto_commit_interval_ms": 100}


def setup(front: Any, url: str, queues: int = 4) -> None:
    with front.Admin(url) as admin:
        admin.create_topic("orders", queues=queues)


def send_each_queue(front: Any, url: str, n: int, queues: int = 4, tag: str | None = None) -> list[Any]:
    with front.Producer(url) as producer:
        return [
            producer.send(Message("orders", f"{q}-{i}", tag=tag), queue_id=q)
            for i in range(n)
            for q in range(queues)
        ]


def until(condition: Callable[[], bool], step: Callable[[], object], limit_s: float = 5.0) -> None:
    """Run *step* until *condition* holds (bounded)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        step()


def drain(consumer: Any, expected: int, limit_s: float = 5.0) -> list[Any]:
    got: list[Any] = []
    until(lambda: len(got) >= expected, lambda: got.extend(consumer.poll(timeout=0.1)), limit_s)
    return got


def test_two_members_split_queues_and_survivor_takes_over(front: Any, url: str) -> None:
    setup(front, url)
    a = front.LitePullConsumer(url, "g", consume_from="first", **FAST)
    b = front.LitePullConsumer(url, "g", consume_from="first", **FAST)
    a.subscribe("orders")
    b.subscribe("orders")

    def both_poll() -> None:
        a.poll(timeout=0.02)
        b.poll(timeout=0.02)

    until(lambda: len(a.assignment()) == 2 and len(b.assignment()) == 2, both_poll)
    assert not set(a.assignment()) & set(b.assignment())
    assert sorted(a.assignment() + b.assignment()) == [MessageQueue("orders", q) for q in range(4)]
    sent = send_each_queue(front, url, 3)
    got_a, got_b = [], []
    until(
        lambda: len(got_a) + len(got_b) >= len(sent),
        lambda: (got_a.extend(a.poll(timeout=0.05)), got_b.extend(b.poll(timeout=0.05))),
    )
    assert {m.queue for m in got_a} <= set(a.assignment())
    assert sorted(m.msg_id for m in got_a + got_b) == sorted(s.msg_id for s in sent)
    b.close()  # commits and leaves: a takes over its queues from b's committed positions
    until(lambda: len(a.assignment()) == 4, lambda: a.poll(timeout=0.02))
    more = send_each_queue(front, url, 1)
    got = drain(a, len(more))
    assert sorted(m.msg_id for m in got) == sorted(s.msg_id for s in more)  # nothing read twice
    a.close()


def test_expired_member_queues_go_to_the_survivor(front: Any, url: str) -> None:
    setup(front, url, queues=2)
    a = front.LitePullConsumer(url, "g", **FAST)
    b = front.LitePullConsumer(url, "g", **FAST)
    a.subscribe("orders")
    b.subscribe("orders")
    until(lambda: len(a.assignment()) == 1 and len(b.assignment()) == 1, lambda: (a.poll(0.02), b.poll(0.02)))
    # b stops polling (a hung process): no heartbeat, so it expires after member_expiry_ms
    until(lambda: len(a.assignment()) == 2, lambda: a.poll(timeout=0.05))
    a.close()


def test_subscribe_and_assign_are_mutually_exclusive(front: Any, url: str) -> None:
    setup(front, url)
    with front.LitePullConsumer(url, "g", **FAST) as consumer:
        consumer.subscribe("orders")
        with pytest.raises(UsageError, match="subscribe and assign are mutually exclusive"):
            consumer.assign([MessageQueue("orders", 0)])
    with front.LitePullConsumer(url, "g2", **FAST) as consumer:
        consumer.assign([MessageQueue("orders", 0)])
        with pytest.raises(UsageError, match="subscribe and assign are mutually exclusive"):
            consumer.subscribe("orders")
        with pytest.raises(UsageError, match="is not assigned to this consumer"):
            consumer.seek(MessageQueue("orders", 1), "0-0")
    with front.LitePullConsumer(url, "g3", **FAST) as consumer:
        with pytest.raises(TopicNotFoundError, match="'nope'"):
            consumer.subscribe("nope")
        with pytest.raises(UsageError, match=r"call subscribe\(\) or assign\(\) before poll\(\)"):
            consumer.poll(timeout=0)


def test_new_group_from_last_does_not_read_history(front: Any, url: str) -> None:
    setup(front, url, queues=1)
    send_each_queue(front, url, 3, queues=1)
    with front.LitePullConsumer(url, "fresh", **FAST) as consumer:
        consumer.subscribe("orders")
        assert consumer.poll(timeout=0.05) == []
        new = send_each_queue(front, url, 1, queues=1)
        assert [m.msg_id for m in drain(consumer, 1)] == [new[0].msg_id]
    with front.LitePullConsumer(url, "history", consume_from="first", **FAST) as consumer:
        consumer.subscribe("orders")
        assert len(drain(consumer, 4)) == 4


def test_seek_pause_resume_and_commit(front: Any, url: str) -> None:
    setup(front, url, queues=2)
    sent = send_each_queue(front, url, 3, queues=2)
    q0, q1 = MessageQueue("orders", 0), MessageQueue("orders", 1)
    on_q0 = [s for s in sent if s.queue == q0]
    with front.LitePullConsumer(url, "g", consume_from="first", auto_commit=False, **FAST) as consumer:
        consumer.assign([q0, q1])
        consumer.pause([q1])
        got = drain(consumer, 3)
        assert {m.queue for m in got} == {q0}
        assert consumer.poll(timeout=0.05) == []
        consumer.resume([q1])
        assert {m.queue for m in drain(consumer, 3)} == {q1}
        consumer.seek(q0, on_q0[0].offset)
        assert [m.msg_id for m in drain(consumer, 2)] == [s.msg_id for s in on_q0[1:]]
        consumer.seek_to_begin(q0)
        assert len(drain(consumer, 3)) == 3
        consumer.seek_to_end(q0)
        assert consumer.poll(timeout=0.05) == []
        stamp = parse_offset(on_q0[1].offset).ms
        consumer.seek_to_timestamp(q0, stamp)
        again = drain(consumer, 1)
        assert again[0].store_timestamp >= stamp and all(m.store_timestamp >= stamp for m in again)
        assert consumer.offset_for_timestamp(q0, stamp) == again[0].offset
        with pytest.raises(InvalidOffsetError, match="outside queue orders:0's range"):
            consumer.seek(q0, f"{stamp + 100_000}-0")
        assert consumer.committed(q0) == "0-0"  # auto-commit is off
        consumer.commit_sync()
        assert consumer.committed(q0) == on_q0[-1].offset
        assert consumer.committed(q1) == [s for s in sent if s.queue == q1][-1].offset


def test_auto_commit_inside_poll_and_restart_resumes(front: Any, url: str) -> None:
    setup(front, url, queues=1)
    sent = send_each_queue(front, url, 4, queues=1)
    q0 = MessageQueue("orders", 0)
    consumer = front.LitePullConsumer(url, "g", consume_from="first", pull_batch_size=2, **FAST)
    consumer.subscribe("orders")
    first = drain(consumer, 2)
    assert [m.msg_id for m in first] == [s.msg_id for s in sent[:2]]
    consumer.pause([q0])  # poll keeps doing its periodic duties without handing out more messages
    until(lambda: consumer.committed(q0) == sent[1].offset, lambda: consumer.poll(timeout=0.01))
    consumer.close()
    with front.LitePullConsumer(url, "g", consume_from="first", **FAST) as again:
        again.subscribe("orders")
        assert [m.msg_id for m in drain(again, 2)] == [s.msg_id for s in sent[2:]]


def test_tag_filter_moves_position_past_skipped_entries(front: Any, url: str) -> None:
    setup(front, url, queues=1)
    skipped = send_each_queue(front, url, 3, queues=1, tag="B")
    with front.LitePullConsumer(url, "g", consume_from="first", **FAST) as consumer:
        consumer.subscribe("orders", "A")
        assert consumer.poll(timeout=0.05) == []
        consumer.commit_sync()
        assert consumer.committed(MessageQueue("orders", 0)) == skipped[-1].offset


def test_broadcasting_every_member_reads_every_queue(front: Any, url: str) -> None:
    setup(front, url, queues=2)
    opts = {**FAST, "message_model": "broadcasting", "consume_from": "first"}
    a = front.LitePullConsumer(url, "g", instance_name="a", **opts)
    b = front.LitePullConsumer(url, "g", instance_name="b", **opts)
    a.subscribe("orders")
    b.subscribe("orders")
    sent = send_each_queue(front, url, 2, queues=2)
    assert len(a.assignment()) == len(b.assignment()) == 2
    ids = sorted(s.msg_id for s in sent)
    assert sorted(m.msg_id for m in drain(a, 4)) == ids
    assert sorted(m.msg_id for m in drain(b, 4)) == ids
    a.close()
    b.close()
    with front.LitePullConsumer(url, "g", instance_name="a", **opts) as again:
        again.subscribe("orders")
        assert again.poll(timeout=0.05) == []  # a's own positions were kept


def test_trim_past_the_fetched_position_resumes_at_the_first_retained_entry(front: Any, url: str) -> None:
    setup(front, url, queues=1)
    send_each_queue(front, url, 10, queues=1)
    q0 = MessageQueue("orders", 0)
    with front.LitePullConsumer(
        url, "g", consume_from="first", pull_batch_size=2, bounds_ttl_ms=60_000, **FAST
    ) as consumer:
        consumer.assign([q0])
        assert [m.queue_offset for m in consumer.poll(timeout=1.0)] == [0, 1]
        open_client(url).xtrim("rmq:{orders:0}:s", maxlen=4, approximate=False)  # drops q 0..5
        # the next read after q 1 meets q 6: a gap, checked, then resumed at the first retained entry
        got = drain(consumer, 4)
        assert [m.queue_offset for m in got] == [6, 7, 8, 9]
