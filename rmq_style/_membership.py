"""Group membership: heartbeats per (group, topic), subscriptions, and the queue share of a member.

Members announce themselves with a heartbeat every ``heartbeat_interval_ms``;
one silent for ``member_expiry_ms`` is dropped by the next heartbeat of
anyone. Each member then computes its share of the topic's queues from the
same sorted member list (rmq_style._rebalance). The push and the lite pull
consumers both use this piece.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ._allocation import AllocationStrategy
from ._call_values import Call, command, run_script, single
from ._errors import SubscriptionConflictError
from ._filter import TagFilter
from ._names import Keys
from ._replies import ReplyCode, classify

__all__ = ["ListenerKind", "MembershipSettings", "new_member_id"]

# How a member consumes a topic; members of one group must agree on it (subscribe.lua).
ListenerKind = Literal["concurrent", "orderly", "key", "lite_pull", "broadcasting"]


class MembershipSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    heartbeat_interval_ms: int = Field(1000, gt=0)
    member_expiry_ms: int = Field(6000, gt=0, description="a member silent this long is gone")
    allocation: AllocationStrategy = "averagely"


def new_member_id() -> str:
    """Unique per process instance: host, pid and a random suffix (a restart is a new member)."""
    return f"{socket.gethostname()}@{os.getpid()}-{os.urandom(3).hex()}"


def subscribe_calls(
    keys: Keys,
    group: str,
    topic: str,
    expression: TagFilter,
    member: str,
    expiry_ms: int,
    kind: ListenerKind,
) -> list[Call]:
    return [
        run_script(
            "subscribe",
            (keys.subscriptions(group), keys.members(group, topic), keys.subscription_kinds(group)),
            (topic, str(expression), member, expiry_ms, kind),
        ),
        command("SADD", keys.groups(), group),
    ]


def check_subscribe_replies(
    replies: Sequence[object], group: str, topic: str, expression: TagFilter, kind: ListenerKind
) -> None:
    first = replies[0]
    if classify(first) is ReplyCode.SUBCONFLICT:
        current_kind, _, current = str(first).partition(" ")[2].partition(" ")
        raise SubscriptionConflictError(
            f"group {group!r} already subscribes topic {topic!r} with {current!r} ({current_kind}), "
            f"not {str(expression)!r} ({kind}): live members of one group must use the same expression "
            "and listener kind (stop all the old members first to change it, or use another group)"
        ) from None
    for reply in replies:
        single(reply)


def heartbeat_call(
    keys: Keys, group: str, topic: str, member: str, expiry_ms: int, *, join: bool = True
) -> Call:
    """Renew (or end, with join=False) a membership; the reply is the live member list."""
    return run_script("heartbeat", (keys.members(group, topic),), (member, expiry_ms, "1" if join else "0"))
