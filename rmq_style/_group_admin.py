"""Operator views of a consumer group, as flows: progress, offset reset, dead letters and replay."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from ._allocation import STRATEGIES
from ._broadcast_progress import MemberProgress, members_flow
from ._call_values import Flow, command, run_script, single
from ._errors import InvalidNameError, UsageError
from ._membership import MembershipSettings
from ._message import MessageQueue, ReceivedMessage, decode_entry
from ._names import Keys, check_group, check_instance, check_topic
from ._offset_store import OffsetStore, QueueProgress, progress_flow
from ._offsets import Offset, parse_offset
from ._pulling import RouteCache
from ._search_offset import position_for_timestamp_flow
from ._topics import route_flow

__all__ = ["DeadLetterRecord", "HeldQueue", "KeyHeld", "QueueReport", "held_flow", "parse_key_held"]


@dataclass(frozen=True, slots=True)
class QueueReport:
    """One row of ``rmq-style progress``."""

    progress: QueueProgress
    retrying: int  # failed messages waiting for their retry, or due and not yet acknowledged
    dead_letters: int  # messages in the group's dead-letter queue of this queue
    owner: str | None  # orderly: the lease holder; concurrent: the live member the allocation gives it to
    held: HeldQueue | None = None  # orderly: the failing message that holds the queue
    trimmed: int = 0  # maxlen retention: entries removed before they were delivered to the group
    members: tuple[MemberProgress, ...] = ()  # broadcasting: each member's position, lag and retries
    key_held: tuple[KeyHeld, ...] = ()  # key-ordered: the failing messages holding their keys


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """A dead letter: the message (offset = its id in the DLQ stream) and why it died."""

    message: ReceivedMessage
    group: str
    origin_offset: str  # where it was in the topic's queue
    reason: str
    dead_at_ms: int
    member: str | None = None  # broadcasting: the member (instance name) that gave up on it

    @property
    def dlq_id(self) -> str:
        return self.message.offset


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _ms(value: bytes | None) -> int:
    """A time field written by our scripts; 0 when absent or not a number (an entry written by hand)."""
    return int(value) if value and value.isdigit() else 0


def valid_instance(name: str) -> bool:
    """Whether a dead letter's member field names a broadcasting member."""
    try:
        check_instance(name)
    except InvalidNameError:
        return False
    return True


def topics_flow(keys: Keys, group: str, topic: str | None) -> Flow[list[str]]:
    """*topic*, or every topic the group subscribes."""
    check_group(group)
    if topic is not None:
        return [check_topic(topic)]
    (subs,) = yield [command("HKEYS", keys.subscriptions(group))]
    return sorted(_text(t) for t in single(subs))


def progress_report_flow(keys: Keys, group: str, topic: str | None = None) -> Flow[list[QueueReport]]:
    topics = yield from topics_flow(keys, group, topic)
    expiry = MembershipSettings().member_expiry_ms
    rows: list[QueueReport] = []
    for name in topics:
        route = yield from route_flow(keys, name)
        now, kind = yield [command("TIME"), command("HGET", keys.subscription_kinds(group), name)]
        now_ms = int(single(now)[0]) * 1000
        key_order = _text(single(kind) or b"") == "key"  # its held messages are in the kheld hash
        (members,) = yield [command("ZRANGEBYSCORE", keys.members(group, name), now_ms - expiry, "+inf")]
        live = [_text(m) for m in single(members)]
        queues = [MessageQueue(name, q) for q in range(route.queue_count)]
        owners = {q: m for m in live for q in STRATEGIES["averagely"](queues, live, m)}
        for queue in queues:
            progress = yield from progress_flow(keys, group, queue)
            qk = keys.queue(name, queue.queue_id)
            # retry stream entries are deleted once acknowledged: its length is the due backlog
            waiting, due, dead, held, lock, trimmed, *kheld = yield [
                command("ZCARD", qk.retry(group)),
                command("XLEN", qk.retry_stream(group)),
                command("XLEN", qk.dlq(group)),
                command("HGETALL", qk.held(group)),
                command("GET", qk.lock(group)),
                command("HGET", qk.trimmed, group),
                *([command("HGETALL", qk.key_held(group))] if key_order else []),
            ]
            retrying = int(single(waiting)) + int(single(due))
            owner = lock_owner(lock) or owners.get(queue)
            members = yield from members_flow(keys, group, queue, progress.max_queue_offset)
            rows.append(
                QueueReport(
                    progress,
                    retrying,
                    int(single(dead)),
                    owner,
                    parse_held(queue, held, lock),
                    int(single(trimmed) or 0),
                    members,
                    parse_key_held(kheld[0]) if kheld else (),
                )
            )
    return rows


ResetTarget = Literal["first", "last"] | datetime | int | float


def reset_offset_flow(
    keys: Keys, group: str, topic: str, to: ResetTarget
) -> Flow[dict[MessageQueue, Offset]]:
    """Move the group's position in every queue of *topic*: to the first entry, past the last, or a time."""
    check_group(group)
    route = yield from route_flow(keys, check_topic(topic))
    store, routes = OffsetStore(keys, group), RouteCache(keys)
    (kind,) = yield [command("HGET", keys.subscription_kinds(group), topic)]
    broadcasting = _text(single(kind) or b"") == "broadcasting"  # no group position: the members'
    moved: dict[MessageQueue, Offset] = {}
    for q in range(route.queue_count):
        queue = MessageQueue(topic, q)
        stream = keys.queue(topic, q).stream
        if to == "first":
            target = Offset(0, 0)
        elif to == "last":
            (last,) = yield [command("XREVRANGE", stream, "+", "-", "COUNT", 1)]
            last = single(last)
            target = parse_offset(last[0][0]) if last else Offset(0, 0)
        elif isinstance(to, datetime | int | float) and not isinstance(to, bool):
            target = yield from position_for_timestamp_flow(keys, routes, queue, to)
        else:
            raise UsageError(f"reset to 'first', 'last' or a timestamp, not {to!r}")
        if broadcasting:
            yield from move_members_flow(keys, group, queue, target)
            moved[queue] = target
        else:
            moved[queue] = yield from store.commit_flow(queue, target)
    return moved


def move_members_flow(keys: Keys, group: str, queue: MessageQueue, target: Offset) -> Flow[None]:
    """Every broadcasting member's position in *queue* to *target* (members stopped: a running
    one goes on from where it is and writes its own position back)."""
    key = keys.queue(queue.topic, queue.queue_id).broadcast(group)
    (names,) = yield [command("HKEYS", key)]
    names = single(names)
    if names:
        yield [command("HSET", key, *[v for name in names for v in (name, str(target))])]


def dead_letters_flow(
    keys: Keys, group: str, topic: str | None = None, limit: int = 100
) -> Flow[list[DeadLetterRecord]]:
    """The group's dead letters (oldest first, at most *limit* per queue)."""
    topics = yield from topics_flow(keys, group, topic)
    records: list[DeadLetterRecord] = []
    for name in topics:
        route = yield from route_flow(keys, name)
        replies = yield [
            command("XRANGE", keys.queue(name, q).dlq(group), "-", "+", "COUNT", limit)
            for q in range(route.queue_count)
        ]
        for q, reply in enumerate(replies):
            for entry_id, fields in single(reply):
                records.append(
                    DeadLetterRecord(
                        decode_entry(name, q, entry_id, fields),
                        group,
                        _text(fields.get(b"offset", b"")),
                        _text(fields.get(b"reason", b"")),
                        _ms(fields.get(b"dead_at")),
                        _text(fields[b"member"]) if b"member" in fields else None,
                    )
                )
    return records


def purge_dead_letters_flow(keys: Keys, group: str, topic: str | None, before_ms: int | None) -> Flow[int]:
    """Delete the group's dead letters: all, or those dead before *before_ms* (server clock); how many."""
    topics = yield from topics_flow(keys, group, topic)
    # a dead letter's entry id is the server time it died at: MINID cuts exactly there
    how: tuple[Any, ...] = ("MAXLEN", 0) if before_ms is None else ("MINID", before_ms)
    removed = 0
    for name in topics:
        route = yield from route_flow(keys, name)
        replies = yield [
            command("XTRIM", keys.queue(name, q).dlq(group), *how) for q in range(route.queue_count)
        ]
        removed += sum(int(single(reply)) for reply in replies)
    return removed


def replay_flow(keys: Keys, group: str, records: Sequence[DeadLetterRecord]) -> Flow[int]:
    """Hand dead letters back to *group* (its retry stream): same msg id, reconsume times 0.

    A broadcasting member's dead letter goes back to that member alone (its own retry stream).
    """
    calls = []
    for r in records:
        qk = keys.queue(r.message.topic, r.message.queue_id)
        target = qk.retry_stream(group)
        if r.member is not None and valid_instance(r.member):  # else hostile: the group's stream
            target = qk.member_retry_stream(group, r.member)
        calls.append(run_script("dlq_replay", (qk.dlq(group), target), (r.dlq_id,)))
    if not calls:
        return 0
    replies = yield calls
    return sum(1 for reply in replies if single(reply) != 0)


@dataclass(frozen=True, slots=True)
class HeldQueue:
    """An orderly queue held by a failing message (what ``progress`` shows)."""

    queue: MessageQueue
    owner: str  # member that recorded the last failure
    offset: str  # entry id of the blocked message
    attempts: int  # failed attempts so far
    since_ms: int  # Redis server time of its first failure
    reason: str  # of the last failure
    lock_owner: str | None  # member holding the lease now (None: nobody)


@dataclass(frozen=True, slots=True)
class KeyHeld:
    """A key-ordered message holding its ordering key (``rmq:{T:i}:kheld:G``, what ``progress`` shows)."""

    entry_id: str  # of the queue stream, or of the group's retry stream when ``retry``
    retry: bool
    attempts: int | None  # failed attempts so far; None: the stored count is not a number


MAX_KEY_HELD = 100  # shown per queue (the hash holds at most a window's entries; a larger one is cut)


def _decimal(text: str) -> int | None:
    """A stored count or time: 1 to 15 decimal digits, else None (written by anyone)."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 15 else None


def parse_key_held(reply: Any) -> tuple[KeyHeld, ...]:
    """KeyHeld rows from HGETALL kheld (field ``<entry id>`` or ``r<entry id>``, value: failed attempts).

    >>> parse_key_held({b"r1-0": b"2", b"5-1": b"x"})
    (KeyHeld(entry_id='5-1', retry=False, attempts=None), KeyHeld(entry_id='1-0', retry=True, attempts=2))
    """
    rows = []
    for field, value in sorted((_text(k), _text(v)) for k, v in (single(reply) or {}).items()):
        retry = field.startswith("r")
        rows.append(KeyHeld(field[1:] if retry else field, retry, _decimal(value)))
    return tuple(rows[:MAX_KEY_HELD])


def held_flow(keys: Keys, group: str, queue: MessageQueue) -> Flow[HeldQueue | None]:
    """Whether a failing message holds (group, queue), and since when; None when the queue flows."""
    qk = keys.queue(queue.topic, queue.queue_id)
    held, lock = yield [command("HGETALL", qk.held(group)), command("GET", qk.lock(group))]
    return parse_held(queue, held, lock)


def lock_owner(lock_reply: Any) -> str | None:
    """The member holding a lease, from the lock key's value (``member/token``); None when free."""
    value = single(lock_reply)
    return _text(value).rpartition("/")[0] if value else None


def parse_held(queue: MessageQueue, held_reply: Any, lock_reply: Any) -> HeldQueue | None:
    """HeldQueue from the replies of HGETALL held and GET lock (None when the queue flows)."""
    fields = {_text(k): _text(v) for k, v in (single(held_reply) or {}).items()}
    if "offset" not in fields:
        return None
    return HeldQueue(
        queue,
        fields.get("owner", ""),
        fields["offset"],
        _decimal(fields.get("attempts", "")) or 0,
        _decimal(fields.get("since", "")) or 0,
        fields.get("reason", ""),
        lock_owner(lock_reply),
    )
