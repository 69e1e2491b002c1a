"""Names the console lists: consumer groups and producer groups (sets kept by membership and transactions)."""

from __future__ import annotations

from typing import Any

from ._calls import Flow, command, single
from ._names import Keys

__all__ = ["consumer_groups_flow", "producer_groups_flow"]


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
