"""PullConsumer on both backends and both fronts: offsets, statuses, trims, long polling, group positions."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest

from rmq_style import (
    InvalidOffsetError,
    Message,
    MessageQueue,
    PullStatus,
    QueueNotFoundError,
    TopicNotFoundError,
    UsageError,
)
from rmq_style._offsets import parse_offset
from rmq_style._sync._io import open_client


def setup(front: Any, url: str, queues: int = 2, **kw: Any) -> None:
    with front.Admin(url) as admin:
        admin.create_topic("orders", queues=queues, **kw)


def send(front: Any, url: str, bodies: list[Any], queue_id: int = 0, tag: str | None = None) -> list[Any]:
    with front.Producer(url) as producer:
        return [producer.send(Message("orders", b, tag=tag), queue_id=queue_id) for b in bodies]


Q0 = MessageQueue("orders", 0)


def test_pull_reads_after_the_offset_and_resumes_from_next_offset(front: Any, url: str) -> None:
    setup(front, url)
    sent = send(front, url, list(range(5)))
    with front.PullConsumer(url, "g") as consumer:
        assert consumer.fetch_queues("orders") == [Q0, MessageQueue("orders", 1)]
        first = consumer.pull(Q0, "0-0", max_nums=3)
        assert first.status == PullStatus.FOUND
        assert [m.value() for m in first.messages] == [0, 1, 2]
        assert first.next_offset == sent[2].offset  # exclusive: the last entry returned
        assert (first.min_offset, first.max_offset) == ("0-0", sent[4].offset)
        rest = consumer.pull(Q0, first.next_offset, max_nums=32)
        assert [m.queue_offset for m in rest.messages] == [3, 4]
        end = consumer.pull(Q0, rest.next_offset)
        assert (end.status, end.messages, end.next_offset) == (PullStatus.NO_NEW_MSG, [], sent[4].offset)
        assert consumer.max_offset(Q0) == sent[4].offset and consumer.min_offset(Q0) == "0-0"
        empty = consumer.pull(MessageQueue("orders", 1), "0-0")
        assert (empty.status, empty.next_offset, empty.max_offset) == (PullStatus.NO_NEW_MSG, "0-0", "0-0")


def test_tag_filter_skips_entries_and_moves_the_offset_past_them(front: Any, url: str) -> None:
    setup(front, url)
    a = send(front, url, ["a1"], tag="A")
    b = send(front, url, ["b1", "b2"], tag="B")
    c = send(front, url, ["c1"], tag="C")
    with front.PullConsumer(url, "g") as consumer:
        only_b = consumer.pull(Q0, "0-0", max_nums=1, expression="B")
        assert (only_b.status, only_b.messages, only_b.next_offset) == (
            PullStatus.NO_MATCHED_MSG,
            [],
            a[0].offset,
        )
        found = consumer.pull(Q0, "0-0", expression="A || C")
        assert [m.value() for m in found.messages] == ["a1", "c1"]
        assert found.next_offset == c[0].offset
        skipped = consumer.pull(Q0, a[0].offset, max_nums=2, expression="C")
        assert (skipped.status, skipped.next_offset) == (PullStatus.NO_MATCHED_MSG, b[1].offset)


def test_trimmed_stream_gives_offset_illegal_and_recovery(front: Any, url: str) -> None:
    setup(front, url)
    sent = send(front, url, list(range(10)))
    open_client(url).xtrim("rmq:{orders:0}:s", maxlen=4, approximate=False)
    with front.PullConsumer(url, "g") as consumer:
        result = consumer.pull(Q0, "0-0")
        assert result.status == PullStatus.OFFSET_ILLEGAL and result.messages == []
        assert result.next_offset == result.min_offset
        assert parse_offset(result.min_offset) < parse_offset(sent[6].offset)
        resumed = consumer.pull(Q0, result.next_offset)
        assert resumed.status == PullStatus.FOUND
        assert [m.queue_offset for m in resumed.messages] == [6, 7, 8, 9]
        # an offset past the last entry is illegal too; next_offset points at the end
        past = consumer.pull(Q0, f"{parse_offset(sent[9].offset).ms + 1000}-0")
        assert (past.status, past.next_offset) == (PullStatus.OFFSET_ILLEGAL, sent[9].offset)
        # inside the retained range everything is fine
        inside = consumer.pull(Q0, sent[7].offset)
        assert [m.queue_offset for m in inside.messages] == [8, 9]


def test_offset_for_timestamp_is_exact(front: Any, url: str) -> None:
    setup(front, url)
    sent = send(front, url, list(range(6)))
    stamps = [parse_offset(s.offset).ms for s in sent]
    with front.PullConsumer(url, "g") as consumer:
        for i, s in enumerate(sent):
            # the first entry stored at or after entry i's millisecond
            first_same_ms = next(x for x in sent if parse_offset(x.offset).ms == stamps[i])
            assert consumer.offset_for_timestamp(Q0, stamps[i]) == first_same_ms.offset
            start = consumer.offset_before_timestamp(Q0, stamps[i])
            got = consumer.pull(Q0, start).messages
            assert got[0].offset == first_same_ms.offset
            assert all(m.store_timestamp >= stamps[i] for m in got)
            assert len(got) == len([x for x in sent if parse_offset(x.offset).ms >= stamps[i]])
            del s
        assert consumer.offset_for_timestamp(Q0, stamps[-1] + 1) is None
        assert consumer.offset_before_timestamp(Q0, stamps[-1] + 1) == sent[-1].offset
        assert consumer.offset_before_timestamp(Q0, 0) == "0-0"


def test_commit_is_the_group_position_shared_with_push_consumers(front: Any, url: str) -> None:
    setup(front, url)
    sent = send(front, url, list(range(5)))
    with front.PullConsumer(url, "billing") as consumer:
        assert consumer.committed(Q0) is None
        assert consumer.progress(Q0).lag == 5
        consumer.commit(Q0, sent[1].offset)
        assert consumer.committed(Q0) == sent[1].offset
        progress = consumer.progress(Q0)
        assert (progress.max_queue_offset, progress.consumed_queue_offset, progress.lag) == (5, 2, 3)
        # the stream's consumer group holds it: a push consumer (XREADGROUP >) continues from there
        client = open_client(url)
        (_, entries), *_ = client.xreadgroup("billing", "push-1", {"rmq:{orders:0}:s": ">"}, count=10)
        assert [e[0].decode() for e in entries] == [s.offset for s in sent[2:]]
        groups = client.xinfo_groups("rmq:{orders:0}:s")
        assert (groups[0]["entries-read"], groups[0]["lag"]) == (5, 0)
        assert consumer.progress(Q0).pending == 3
        # committing past pending entries acknowledges them
        consumer.commit(Q0, sent[4].offset)
        final = consumer.progress(Q0)
        assert (final.lag, final.pending, final.group_offset) == (0, 0, sent[4].offset)
        # moving back is allowed (a reset); lag never goes negative
        consumer.commit(Q0, "0-0")
        assert consumer.progress(Q0).lag == 5
        with pytest.raises(InvalidOffsetError, match="lies after its last entry"):
            consumer.commit(Q0, f"{parse_offset(sent[4].offset).ms + 1000}-0")


def test_committed_position_survives_a_redis_restart(private_redis: Any) -> None:
    from rmq_style import Admin, Producer, PullConsumer

    url = private_redis.url
    with Admin(url) as admin:
        admin.create_topic("orders", queues=1)
    with Producer(url) as producer:
        sent = [producer.send(Message("orders", i)) for i in range(3)]
    with PullConsumer(url, "g") as consumer:
        consumer.commit(Q0, sent[1].offset)
    private_redis.restart()
    with PullConsumer(url, "g") as consumer:
        assert consumer.committed(Q0) == sent[1].offset
        assert consumer.progress(Q0).lag == 1
        assert [m.value() for m in consumer.pull(Q0, consumer.committed(Q0)).messages] == [2]


def test_blocking_pull_wakes_on_arrival(front: Any, url: str) -> None:
    setup(front, url)
    from rmq_style import Producer

    timer = threading.Timer(0.2, lambda: Producer(url).send(Message("orders", "late"), queue_id=0))
    with front.PullConsumer(url, "g") as consumer:
        started = time.monotonic()
        timer.start()
        try:
            result = consumer.pull(Q0, "0-0", block=10.0)
        finally:
            timer.join()
        elapsed = time.monotonic() - started
    assert result.status == PullStatus.FOUND and [m.value() for m in result.messages] == ["late"]
    assert elapsed < 5.0


def test_blocking_pull_times_out_with_no_new_message(front: Any, url: str) -> None:
    setup(front, url)
    with front.PullConsumer(url, "g") as consumer:
        started = time.monotonic()
        result = consumer.pull(Q0, "0-0", block=0.2)
    assert result.status == PullStatus.NO_NEW_MSG
    assert 0.15 < time.monotonic() - started < 3.0


def test_delayed_message_becomes_visible_when_due(front: Any, url: str) -> None:
    setup(front, url)
    with front.Producer(url) as producer:
        producer.send(Message("orders", "later"), queue_id=0, delay=timedelta(milliseconds=300))
    with front.PullConsumer(url, "g") as consumer:
        assert consumer.pull(Q0, "0-0").status == PullStatus.NO_NEW_MSG
        # a blocking pull wakes when the delayed message falls due (no producer writes meanwhile)
        started = time.monotonic()
        result = consumer.pull(Q0, "0-0", block=10.0)
        assert [m.value() for m in result.messages] == ["later"]
        assert time.monotonic() - started < 5.0


def test_bad_input_gives_clear_errors(front: Any, url: str) -> None:
    setup(front, url)
    with front.PullConsumer(url, "g") as consumer:
        with pytest.raises(TopicNotFoundError, match="topic 'nope' does not exist"):
            consumer.pull(MessageQueue("nope", 0), "0-0")
        with pytest.raises(TopicNotFoundError, match="'nope'"):
            consumer.fetch_queues("nope")
        with pytest.raises(QueueNotFoundError, match="queue id 7 is out of range for topic 'orders'"):
            consumer.pull(MessageQueue("orders", 7), "0-0")
        with pytest.raises(InvalidOffsetError, match="malformed offset 'abc'"):
            consumer.pull(Q0, "abc")
        with pytest.raises(InvalidOffsetError, match="malformed offset"):
            consumer.commit(Q0, "12")
        with pytest.raises(UsageError, match="max_nums must be 1 to 1024"):
            consumer.pull(Q0, "0-0", max_nums=0)
        with pytest.raises(UsageError, match="invalid subscription expression"):
            consumer.pull(Q0, "0-0", expression="A ||")
        with pytest.raises(UsageError, match="block is a timeout in seconds"):
            consumer.pull(Q0, "0-0", block=-1)


def test_broadcasting_positions_are_per_instance(front: Any, url: str) -> None:
    setup(front, url)
    sent = send(front, url, list(range(3)))
    with (
        front.PullConsumer(url, "g", message_model="broadcasting", instance_name="a") as a,
        front.PullConsumer(url, "g", message_model="broadcasting", instance_name="b") as b,
    ):
        a.commit(Q0, sent[2].offset)
        b.commit(Q0, sent[0].offset)
        assert (a.committed(Q0), b.committed(Q0)) == (sent[2].offset, sent[0].offset)
    # nothing touched the clustering position of the group
    with front.PullConsumer(url, "g") as clustering:
        assert clustering.committed(Q0) is None


def test_trim_after_the_read_position_is_caught_on_the_fast_path(front: Any, url: str) -> None:
    setup(front, url)
    sent = send(front, url, list(range(10)))
    with front.PullConsumer(url, "g", bounds_ttl_ms=60_000) as consumer:
        first = consumer.pull(Q0, "0-0", max_nums=3)  # checked: the consumer now knows q 3 comes next
        open_client(url).xtrim("rmq:{orders:0}:s", maxlen=4, approximate=False)
        trimmed = consumer.pull(Q0, first.next_offset)  # reads q 6 where 3 was due: a gap, so it checks
        assert (trimmed.status, trimmed.messages) == (PullStatus.OFFSET_ILLEGAL, [])
        assert trimmed.next_offset == trimmed.min_offset
        assert parse_offset(trimmed.min_offset) < parse_offset(sent[6].offset)
        resumed = consumer.pull(Q0, trimmed.next_offset)
        assert [m.queue_offset for m in resumed.messages] == [6, 7, 8, 9]
        assert (resumed.max_offset, resumed.min_offset) == (sent[9].offset, trimmed.min_offset)


def test_a_position_read_up_to_stays_legal_when_only_entries_before_it_are_trimmed(
    front: Any, url: str
) -> None:
    setup(front, url)
    sent = send(front, url, list(range(10)))
    with front.PullConsumer(url, "g", bounds_ttl_ms=60_000) as consumer:
        head = consumer.pull(Q0, "0-0", max_nums=6)
        assert head.next_offset == sent[5].offset
        open_client(url).xtrim("rmq:{orders:0}:s", maxlen=4, approximate=False)  # drops q 0..5
        # the consumer knows q 6 follows its position and reads it: nothing after the position is lost
        rest = consumer.pull(Q0, head.next_offset)
        assert [m.queue_offset for m in rest.messages] == [6, 7, 8, 9]


def pulled_within(consumer: Any, timeout: float) -> list[Any]:
    """The values of the first pull from offset 0-0 that returns messages, polling up to *timeout* s."""
    deadline = time.monotonic() + timeout
    while not (messages := consumer.pull(Q0, "0-0").messages):
        assert time.monotonic() < deadline, "nothing pulled in time"
        time.sleep(0.005)
    return [m.value() for m in messages]


def test_delayed_messages_are_released_within_bounds_ttl(front: Any, url: str) -> None:
    setup(front, url)
    with (
        front.PullConsumer(url, "g", bounds_ttl_ms=150) as cached,
        front.PullConsumer(url, "h", bounds_ttl_ms=0) as checked,
    ):
        assert cached.pull(Q0, "0-0").status == PullStatus.NO_NEW_MSG
        with front.Producer(url) as producer:
            producer.send(Message("orders", "soon"), queue_id=0, delay=timedelta(milliseconds=1))
        # bounds_ttl_ms=0 checks before every read: the message is released and read once due (1 ms)
        assert pulled_within(checked, 5) == ["soon"]
        # the cached consumer sees it once its bounds are older than bounds_ttl_ms
        assert pulled_within(cached, 5) == ["soon"]
    with pytest.raises(UsageError, match="bounds_ttl_ms"):
        front.PullConsumer(url, "g", bounds_ttl_ms=-1)


def test_fast_pulls_report_bounds_and_end_of_queue(front: Any, url: str) -> None:
    setup(front, url)
    sent = send(front, url, list(range(4)))
    with front.PullConsumer(url, "g", bounds_ttl_ms=60_000) as consumer:
        offset, seen = "0-0", []
        for _ in range(4):
            result = consumer.pull(Q0, offset, max_nums=1)
            assert (result.min_offset, result.max_offset) == ("0-0", sent[3].offset)
            seen += [m.value() for m in result.messages]
            offset = result.next_offset
        assert seen == [0, 1, 2, 3]
        end = consumer.pull(Q0, offset)
        assert (end.status, end.next_offset, end.max_offset) == (PullStatus.NO_NEW_MSG, offset, offset)
        more = send(front, url, ["x"])
        found = consumer.pull(Q0, offset)  # still one XREAD: the read itself shows the new last entry
        assert [m.value() for m in found.messages] == ["x"]
        assert found.max_offset == found.next_offset == more[0].offset
