"""Topic administration on both backends and both fronts."""

from __future__ import annotations

from typing import Any

import pytest

from rmq_style import Message, Retention, TopicExistsError, TopicNotFoundError, UsageError, queue_for_key
from rmq_style._sync._io import open_client


def test_create_list_describe_delete(front: Any, url: str) -> None:
    with front.Admin(url) as admin, front.Producer(url) as producer:
        admin.create_topic("b-topic", queues=2, retention=Retention.max_entries(500))
        admin.create_topic("a-topic")
        assert [(t.topic, t.queue_count) for t in admin.list_topics()] == [("a-topic", 8), ("b-topic", 2)]
        assert admin.topic("b-topic").retention == Retention.max_entries(500)
        sent = producer.send_batch([Message("b-topic", n) for n in range(5)])
        info = admin.describe_topic("b-topic")
        assert info.queue_count == 2 and info.created_ms > 0
        q0, q1 = info.queues
        assert (q0.length, q0.min_queue_offset, q0.max_queue_offset) == (3, 0, 3)
        assert (q1.length, q1.min_queue_offset, q1.max_queue_offset) == (2, 0, 2)
        assert q0.first_offset == sent[0].offset and q0.last_offset == sent[4].offset
        empty = admin.describe_topic("a-topic").queues[5]
        assert (empty.first_offset, empty.last_offset, empty.length, empty.max_queue_offset) == (
            None,
            None,
            0,
            0,
        )
        admin.delete_topic("b-topic")
        assert [t.topic for t in admin.list_topics()] == ["a-topic"]
        with pytest.raises(TopicNotFoundError):
            admin.describe_topic("b-topic")
    assert not any(b"b-topic" in k for k in open_client(url).keys("*"))


def test_create_twice_is_an_error(front: Any, url: str) -> None:
    with front.Admin(url) as admin:
        admin.create_topic("t", queues=3)
        with pytest.raises(TopicExistsError, match="already exists"):
            admin.create_topic("t", queues=5)
        assert admin.topic("t").queue_count == 3


@pytest.mark.parametrize("queues", [0, -1, 1025, True, 2.5])
def test_queue_count_out_of_range(front: Any, url: str, queues: Any) -> None:
    with front.Admin(url) as admin, pytest.raises(UsageError, match="1 to 1024 queues"):
        admin.create_topic("t", queues=queues)
    assert open_client(url).keys("*") == []


def test_expand_adds_queues_and_remaps_sharding_keys(front: Any, url: str) -> None:
    with front.Admin(url) as admin, front.Producer(url, route_ttl_s=0) as producer:
        admin.create_topic("t", queues=2)
        before = producer.send(Message("t", b"x"), sharding_key="user-7").queue.queue_id
        admin.expand_topic("t", 6)
        after = producer.send(Message("t", b"x"), sharding_key="user-7").queue.queue_id
        assert (before, after) == (queue_for_key("user-7", 2), queue_for_key("user-7", 6))
        assert admin.describe_topic("t").queue_count == 6
        with pytest.raises(UsageError, match="can only grow"):
            admin.expand_topic("t", 3)
        with pytest.raises(TopicNotFoundError):
            admin.expand_topic("nope", 3)
