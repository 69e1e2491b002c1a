"""Membership and allocation: the piece the lite pull and push consumers share."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rmq_style import MessageQueue, SubscriptionConflictError
from rmq_style._allocation import allocate_averagely, allocate_by_circle
from rmq_style._filter import TagFilter
from rmq_style._membership import (
    ListenerKind,
    check_subscribe_replies,
    heartbeat_call,
    subscribe_calls,
)
from rmq_style._names import Keys
from rmq_style._rebalance import my_queues
from rmq_style._sync._io import execute, open_client


@given(st.integers(1, 64), st.lists(st.text("abcdef", min_size=1, max_size=4), min_size=1, max_size=12))
def test_every_strategy_splits_queues_without_overlap_or_gap(n: int, members: list[str]) -> None:
    queues = [MessageQueue("t", i) for i in range(n)]
    for strategy in (allocate_averagely, allocate_by_circle):
        shares = [strategy(queues, members, m) for m in sorted(set(members))]
        flat = [q for share in shares for q in share]
        assert sorted(flat) == queues
        sizes = [len(s) for s in shares]
        assert max(sizes) - min(sizes) <= 1


def test_heartbeat_lists_live_members_and_expires_silent_ones(url: str) -> None:
    client, keys = open_client(url), Keys()
    (a,) = execute(client, [heartbeat_call(keys, "g", "orders", "a", 60_000)])
    (b,) = execute(client, [heartbeat_call(keys, "g", "orders", "b", 60_000)])
    assert (a, b) == ([b"a"], [b"a", b"b"])
    assert [q.queue_id for q in my_queues("orders", 4, b, "b", "averagely")] == [2, 3]
    # a member silent longer than the expiry is dropped by anyone's heartbeat
    client.zadd(keys.members("g", "orders"), {"a": 0})
    (live,) = execute(client, [heartbeat_call(keys, "g", "orders", "b", 60_000)])
    assert live == [b"b"]
    (left,) = execute(client, [heartbeat_call(keys, "g", "orders", "b", 60_000, join=False)])
    assert left == []


def test_second_member_with_another_expression_is_refused(url: str) -> None:
    client, keys = open_client(url), Keys()

    def subscribe(member: str, expression: str) -> None:
        f = TagFilter.parse(expression)
        check_subscribe_replies(
            execute(client, subscribe_calls(keys, "billing", "orders", f, member, 60_000, "concurrent")),
            "billing",
            "orders",
            f,
            "concurrent",
        )

    subscribe("m1", "created || paid")
    subscribe("m2", "paid||created")  # same set of tags
    with pytest.raises(SubscriptionConflictError, match="already subscribes topic 'orders' with 'created"):
        subscribe("m3", "refunded")
    # once the old members are gone, the group may change its expression
    client.delete(keys.members("billing", "orders"))
    subscribe("m3", "refunded")
    assert client.hget(keys.subscriptions("billing"), "orders") == b"refunded"
    assert client.smembers(keys.groups()) == {b"billing"}


def test_second_member_with_another_listener_kind_is_refused(url: str) -> None:
    client, keys = open_client(url), Keys()
    f = TagFilter.parse("*")

    def subscribe(member: str, kind: ListenerKind) -> None:
        replies = execute(client, subscribe_calls(keys, "billing", "orders", f, member, 60_000, kind))
        check_subscribe_replies(replies, "billing", "orders", f, kind)

    subscribe("m1", "orderly")
    subscribe("m1", "orderly")  # the same member again
    for other in ("concurrent", "lite_pull"):
        with pytest.raises(SubscriptionConflictError, match=rf"with '\*' \(orderly\), not '\*' \({other}\)"):
            subscribe("m2", other)  # type: ignore[arg-type]
    assert client.zrange(keys.members("billing", "orders"), 0, -1) == [b"m1"]
    # the record follows the live members: once m1 left, the kind may change
    execute(client, [heartbeat_call(keys, "billing", "orders", "m1", 60_000, join=False)])
    subscribe("m2", "lite_pull")
    assert client.hget(keys.subscription_kinds("billing"), "orders") == b"lite_pull"
