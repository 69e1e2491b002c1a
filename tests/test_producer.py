"""Producers against real Redis and fakeredis, through the sync and async fronts."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from rmq_style import (
    InvalidNameError,
    Message,
    MessageTooLargeError,
    QueueNotFoundError,
    Retention,
    SerializationError,
    TopicNotFoundError,
    UsageError,
)
from rmq_style._message import decode_entry
from rmq_style._sync._io import open_client


class Order(BaseModel):
    order_id: int
    user: str


def raw(url: str) -> Any:
    return open_client(url)


def all_keys(url: str) -> set[bytes]:
    return set(raw(url).keys("*"))


def setup_topic(front: Any, url: str, topic: str = "orders", queues: int = 4, **kw: Any) -> None:
    with front.Admin(url) as admin:
        admin.create_topic(topic, queues=queues, **kw)


def test_send_writes_one_entry_with_the_documented_fields(front: Any, url: str) -> None:
    setup_topic(front, url)
    with front.Producer(url) as producer:
        result = producer.send(
            Message(
                "orders",
                Order(order_id=7, user="ann"),
                tag="created",
                keys=["o-7", "u-ann"],
                properties={"source": "web"},
            ),
            sharding_key="ann",
        )
    assert result.queue.queue_id == zlib.crc32(b"ann") % 4
    assert result.queue_offset == 0
    entries = raw(url).xrange(f"rmq:{{orders:{result.queue.queue_id}}}:s")
    assert len(entries) == 1
    entry_id, fields = entries[0]
    assert entry_id.decode() == result.offset
    assert list(fields) == [b"i", b"q", b"r", b"b", b"t", b"k", b"p", b"c", b"d"]
    msg = decode_entry("orders", result.queue.queue_id, entry_id, fields)
    assert msg.msg_id == result.msg_id and len(msg.msg_id) == 32
    assert (msg.tag, msg.keys, msg.properties, msg.reconsume_times) == (
        "created",
        ("o-7", "u-ann"),
        {"source": "web"},
        0,
    )
    assert msg.decode(Order) == Order(order_id=7, user="ann")
    assert abs(msg.born_timestamp - msg.store_timestamp) < 5000


def test_queue_choice_round_robin_sharding_key_and_explicit(front: Any, url: str) -> None:
    setup_topic(front, url)
    with front.Producer(url) as producer:
        rr = [producer.send(Message("orders", i)).queue.queue_id for i in range(8)]
        keyed = {
            producer.send(Message("orders", "x"), sharding_key="user-42").queue.queue_id for _ in range(5)
        }
        explicit = producer.send(Message("orders", "x"), queue_id=3).queue.queue_id
    assert rr == [0, 1, 2, 3, 0, 1, 2, 3]
    assert keyed == {zlib.crc32(b"user-42") % 4}
    assert explicit == 3


def test_batch_returns_one_result_per_message_with_consecutive_queue_offsets(front: Any, url: str) -> None:
    setup_topic(front, url)
    messages = [Message("orders", {"n": n}) for n in range(300)]
    with front.Producer(url) as producer:
        results = producer.send_batch(messages, sharding_key=lambda m: str(m.body["n"] % 5))
        assert producer.send_batch([]) == []
    assert len(results) == 300
    assert len({r.msg_id for r in results}) == 300
    by_queue: dict[int, list[int]] = {}
    for n, r in enumerate(results):
        assert r.queue.queue_id == zlib.crc32(str(n % 5).encode()) % 4
        by_queue.setdefault(r.queue.queue_id, []).append(r.queue_offset)
    for offsets in by_queue.values():
        assert offsets == list(range(len(offsets)))
    client = raw(url)
    assert sum(client.xlen(f"rmq:{{orders:{q}}}:s") for q in range(4)) == 300


def test_delayed_message_is_held_until_due_by_server_clock(front: Any, url: str) -> None:
    setup_topic(front, url, queues=1)
    with front.Producer(url) as producer, front.Admin(url) as admin:
        first = producer.send(Message("orders", "now"))
        held = producer.send(Message("orders", "later"), delay=timedelta(milliseconds=300))
        far = producer.send(Message("orders", "far"), deliver_at=datetime.now(UTC) + timedelta(hours=1))
        leveled = producer.send(Message("orders", "lvl"), delay_level=18)
        assert held.offset is None and held.queue_offset is None
        assert held.deliver_at_ms is not None and far.deliver_at_ms is not None
        assert far.deliver_at_ms - held.deliver_at_ms > 3_500_000
        assert leveled.deliver_at_ms is not None and leveled.deliver_at_ms - held.deliver_at_ms > 7_100_000
        assert admin.release_due("orders") == 0
        info = admin.describe_topic("orders").queues[0]
        assert (info.length, info.delayed) == (1, 3)
        moved = 0
        for _ in range(200):  # bounded poll of the server clock: due after 300 ms
            moved = admin.release_due("orders")
            if moved:
                break
            raw(url).execute_command("PING")
            __import__("time").sleep(0.01)
        assert moved == 1
        info = admin.describe_topic("orders").queues[0]
        assert (info.length, info.delayed, info.max_queue_offset) == (2, 2, 2)
    entries = raw(url).xrange("rmq:{orders:0}:s")
    released = decode_entry("orders", 0, *entries[1])
    assert (released.msg_id, released.queue_offset, released.value()) == (held.msg_id, 1, "later")
    assert first.queue_offset == 0


def test_maxlen_retention_caps_the_stream(front: Any, url: str) -> None:
    setup_topic(front, url, queues=1, retention=Retention.max_entries(50))
    with front.Producer(url) as producer:
        producer.send_batch([Message("orders", n) for n in range(1000)])
    length = raw(url).xlen("rmq:{orders:0}:s")
    assert 50 <= length < 300
    with front.Admin(url) as admin:
        info = admin.describe_topic("orders").queues[0]
    assert info.max_queue_offset == 1000 and info.min_queue_offset == 1000 - length


def test_minid_retention_never_trims_what_a_group_has_not_acked(front: Any, url: str) -> None:
    setup_topic(front, url, queues=1, retention=Retention(max_age=timedelta(0)))
    client = raw(url)
    stream = "rmq:{orders:0}:s"
    client.xgroup_create(stream, "billing", id="0", mkstream=True)
    with front.Producer(url) as producer:
        producer.send_batch([Message("orders", n) for n in range(256)])
        assert client.xlen(stream) == 256  # nothing acknowledged: nothing trimmed
        read = client.xreadgroup("billing", "c1", {stream: ">"}, count=230)[0][1]
        client.xack(stream, "billing", *[entry_id for entry_id, _ in read[:220]])
        producer.send_batch([Message("orders", n) for n in range(256)])
    remaining = client.xrange(stream)
    ids = [entry_id for entry_id, _ in remaining]
    assert len(remaining) < 512 - 100  # acknowledged nodes went away
    unacked = [entry_id for entry_id, _ in read[220:]]
    assert all(entry_id in ids for entry_id in unacked)  # pending entries stay
    assert ids[-1] == client.xrevrange(stream, count=1)[0][0]


@pytest.mark.parametrize("name", ["", "a b", "{orders}", "a:b", "x" * 129, "orders\n", "ör"])
def test_invalid_topic_names_are_refused_before_any_write(front: Any, url: str, name: str) -> None:
    with front.Admin(url) as admin, pytest.raises(InvalidNameError, match="invalid topic name"):
        admin.create_topic(name)
    with pytest.raises(InvalidNameError, match="invalid topic name"):
        Message(name, b"x")
    assert all_keys(url) == set()


def test_longest_valid_name_is_accepted(front: Any, url: str) -> None:
    name = "a" * 128
    setup_topic(front, url, topic=name, queues=1)
    with front.Producer(url) as producer:
        assert producer.send(Message(name, b"x")).queue.topic == name


def test_oversized_body_is_refused_and_nothing_written(front: Any, url: str) -> None:
    setup_topic(front, url)
    before = all_keys(url)
    with front.Producer(url, max_message_size=1024) as producer:
        with pytest.raises(MessageTooLargeError, match="over the limit of 1024 bytes"):
            producer.send(Message("orders", b"x" * 1025))
        with pytest.raises(MessageTooLargeError):
            producer.send_batch([Message("orders", b"ok"), Message("orders", "y" * 2000)])
        assert producer.send(Message("orders", b"x" * 1024)).queue_offset == 0
    assert all_keys(url) - before == {b"rmq:{orders:0}:s"}
    with front.Producer(url) as producer, pytest.raises(MessageTooLargeError, match="4194304"):
        producer.send(Message("orders", b"x" * (4 * 1024 * 1024 + 1)))


def test_unknown_topic_is_an_error_unless_auto_create(front: Any, url: str) -> None:
    with front.Producer(url) as producer, pytest.raises(TopicNotFoundError, match="does not exist"):
        producer.send(Message("nope", b"x"))
    assert all_keys(url) == set()
    with front.Producer(url, auto_create_topics=True, default_queue_count=3) as producer:
        result = producer.send(Message("fresh", b"x"))
    with front.Admin(url) as admin:
        assert admin.topic("fresh").queue_count == 3
    assert result.queue_offset == 0


def test_unserialisable_body_is_refused(front: Any, url: str) -> None:
    setup_topic(front, url)
    before = all_keys(url)
    with front.Producer(url) as producer:
        with pytest.raises(SerializationError, match="cannot encode a body of type object"):
            producer.send(Message("orders", object()))
        with pytest.raises(SerializationError):
            producer.send(Message("orders", {"x": float("nan")}))
    assert all_keys(url) == before


def test_bad_routing_and_delay_arguments(front: Any, url: str) -> None:
    setup_topic(front, url)
    before = all_keys(url)
    with front.Producer(url) as producer:
        with pytest.raises(QueueNotFoundError, match=r"queues 0\.\.3"):
            producer.send(Message("orders", b"x"), queue_id=4)
        with pytest.raises(UsageError, match="either sharding_key or queue_id"):
            producer.send(Message("orders", b"x"), queue_id=1, sharding_key="k")
        with pytest.raises(UsageError, match="at most one of"):
            producer.send(Message("orders", b"x"), delay=timedelta(seconds=1), delay_level=2)
        with pytest.raises(UsageError, match="timezone-aware"):
            producer.send(Message("orders", b"x"), deliver_at=datetime.now())
    assert all_keys(url) == before


def test_topic_deleted_under_a_cached_route_is_reported(front: Any, url: str) -> None:
    setup_topic(front, url)
    with front.Producer(url) as producer:
        producer.send(Message("orders", b"x"))
        with front.Admin(url) as admin:
            admin.delete_topic("orders")
        with pytest.raises(TopicNotFoundError):
            producer.send(Message("orders", b"x"))
    assert all_keys(url) == set()


def test_a_refused_call_in_a_batch_leaves_the_connection_usable(front: Any, url: str) -> None:
    setup_topic(front, url)
    setup_topic(front, url, topic="gone", queues=2)
    with front.Producer(url) as producer:
        producer.send(Message("gone", b"x"))  # caches the route of "gone"
        with front.Admin(url) as admin:
            admin.delete_topic("gone")
        batch = [Message("orders", b"a"), Message("gone", b"b"), Message("orders", b"c")]
        with pytest.raises(TopicNotFoundError):
            producer.send_batch(batch, sharding_key="k")
        # every reply of the refused round trip was read: the next ones line up
        results = producer.send_batch([Message("orders", n) for n in range(3)], sharding_key="k")
    assert [r.queue_offset for r in results] == [2, 3, 4]  # after the two written in the refused batch
