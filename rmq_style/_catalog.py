"""Names the console lists: consumer groups and producer groups (sets kept by membership and transactions)."""

from __future__ import annotations

from typing import Any

from ._call_values import Flow, command, single
from ._group_admin import topics_flow
from ._membership import MembershipSettings
from ._names import Keys

__all__ = ["consumer_groups_flow", "members_flow", "producer_groups_flow"]


def _names(reply: Any) -> list[str]:
    return sorted(n.decode() if isinstance(n, bytes) else str(n) for n in single(reply))


def consumer_groups_flow(keys: Keys) -> Flow[list[str]]:
    """Every consumer group that ever had a member, sorted."""
    (names,) = yield [command("SMEMBERS", keys.groups())]
    return _names(names)


def producer_groups_flow(keys: Keys) -> Flow[list[str]]:
    """Every producer group that sent a transactional message, sorted."""
    (names,) = yield [command("SMEMBERS", keys.producer_groups())]
    return _names(names)


def members_flow(keys: Keys, group: str) -> Flow[dict[str, list[str]]]:
    """Per topic the group subscribes: its live members (a heartbeat within the member expiry)."""
    topics = yield from topics_flow(keys, group, None)
    expiry = MembershipSettings().member_expiry_ms
    (now,) = yield [command("TIME")]
    now_ms = int(single(now)[0]) * 1000
    replies = yield [
        command("ZRANGEBYSCORE", keys.members(group, t), now_ms - expiry, "+inf") for t in topics
    ]
    return {t: _names(r) for t, r in zip(topics, replies, strict=True)}
