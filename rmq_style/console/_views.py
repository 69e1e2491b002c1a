"""What the console's pages show, read through AsyncAdmin and shaped into plain rows for the templates.

Every field that comes from Redis may be hostile (binary, HTML, script tags):
rows carry text, the templates escape it (autoescape), and a field that does
not decode is shown as a marker with its raw bytes (ReceivedMessage.shown).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from .._async.admin import AsyncAdmin
from .._group_admin import DeadLetterRecord, QueueReport
from .._message import ReceivedMessage
from ._rates import RateRing

__all__ = ["MessageView", "group_summary", "message_view"]

BODY_PREVIEW_BYTES = 2048


def when(ms: int | None) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


@dataclass(frozen=True, slots=True)
class MessageView:
    """One message as the pages show it: text only (escaped by the templates)."""

    topic: str
    queue_id: int
    offset: str
    msg_id: str
    tag: str
    keys: str
    queue_offset: str
    reconsume_times: str
    stored: str
    born: str
    content_type: str
    properties: list[tuple[str, str]]
    body: str
    body_note: str  # "text", "binary, N bytes" or "text, first N of M bytes"
    problem: str | None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    return str(value)


def body_preview(body: bytes) -> tuple[str, str]:
    """The body as text when it is UTF-8 (cut to BODY_PREVIEW_BYTES), else a repr of its first bytes.

    >>> body_preview(b"<b>hi</b>")
    ('<b>hi</b>', 'text, 9 bytes')
    >>> body_preview(b"\\xff\\x00")
    ("b'\\\\xff\\\\x00'", 'binary, 2 bytes')
    """
    head = body[:BODY_PREVIEW_BYTES]
    try:
        text = head.decode()
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3 or len(body) <= BODY_PREVIEW_BYTES:
            return repr(body[:256]), f"binary, {len(body)} bytes"
        text = head[: exc.start].decode()  # the cut split a character
    if len(body) > BODY_PREVIEW_BYTES:
        return text, f"text, first {len(head)} of {len(body)} bytes"
    return text, f"text, {len(body)} bytes"


def message_view(m: ReceivedMessage) -> MessageView:
    props = m.shown("properties")
    properties = sorted((str(k), str(v)) for k, v in props.items()) if isinstance(props, dict) else [
        ("(undecodable)", str(props))
    ]  # fmt: skip
    body, note = body_preview(m.body)
    born = m.shown("born_timestamp")
    return MessageView(
        topic=m.topic,
        queue_id=m.queue_id,
        offset=m.offset,
        msg_id=_text(m.shown("msg_id")),
        tag=_text(m.shown("tag")),
        keys=_text(m.shown("keys")),
        queue_offset=_text(m.shown("queue_offset")),
        reconsume_times=_text(m.shown("reconsume_times")),
        stored=when(m.store_timestamp),
        born=when(born) if isinstance(born, int) else _text(born),
        content_type=_text(m.shown("content_type")),
        properties=properties,
        body=body,
        body_note=note,
        problem=m.problem,
    )


@dataclass(frozen=True, slots=True)
class DeadView:
    message: MessageView
    reason: str
    dead_at: str
    origin_offset: str


def dead_view(d: DeadLetterRecord) -> DeadView:
    return DeadView(message_view(d.message), d.reason, when(d.dead_at_ms), d.origin_offset)


@dataclass(frozen=True, slots=True)
class GroupSummary:
    group: str
    topics: list[str]
    queues: int
    lag: int
    pending: int
    retrying: int
    dead_letters: int
    held: int
    owners: list[str]
    held_keys: int
    rate: float | None


def record_group_rates(rates: RateRing, group: str, rows: list[QueueReport]) -> dict[str, float | None]:
    """Per topic of the group: messages consumed per second (from the group's consumed offsets)."""
    consumed: dict[str, int] = {}
    for r in rows:
        topic = r.progress.queue.topic
        consumed[topic] = consumed.get(topic, 0) + r.progress.consumed_queue_offset
    for topic, value in consumed.items():
        rates.record(("group", group, topic), value)
    return {topic: rates.rate(("group", group, topic)) for topic in consumed}


def group_summary(group: str, rows: list[QueueReport], rates: RateRing) -> GroupSummary:
    per_topic = record_group_rates(rates, group, rows)
    known = [r for r in per_topic.values() if r is not None]
    members = [m for r in rows for m in r.members]
    # a broadcasting group has no group position: its lag is its members' (each reads every message)
    broadcasting = bool(members) and all(r.progress.group_offset is None for r in rows)
    return GroupSummary(
        group=group,
        topics=sorted(per_topic),
        queues=len(rows),
        lag=sum(m.lag for m in members) if broadcasting else sum(r.progress.lag for r in rows),
        pending=sum(r.progress.pending for r in rows),
        retrying=sum(r.retrying for r in rows) + sum(m.retrying for m in members),
        dead_letters=sum(r.dead_letters for r in rows),
        held=sum(1 for r in rows if r.held is not None),
        owners=sorted({m.instance for m in members} if broadcasting else {r.owner for r in rows if r.owner}),
        held_keys=sum(len(r.key_held) for r in rows),
        rate=round(sum(known), 2) if known else None,
    )


async def topic_rows(admin: AsyncAdmin, rates: RateRing) -> list[dict[str, Any]]:
    """Per topic: queue count, min and max queue offsets (summed over queues), length, rate in."""
    rows = []
    for route in await admin.list_topics():
        info = await admin.describe_topic(route.topic)
        max_offset = sum(q.max_queue_offset for q in info.queues)
        rates.record(("topic", route.topic), max_offset)
        rows.append(
            {
                "topic": route.topic,
                "queues": route.queue_count,
                "retention": route.retention.mode,
                "min_offset": sum(q.min_queue_offset for q in info.queues),
                "max_offset": max_offset,
                "length": sum(q.length for q in info.queues),
                "delayed": sum(q.delayed for q in info.queues),
                "rate": rates.rate(("topic", route.topic)),
            }
        )
    return rows


def parse_reset_target(to: str, at: str) -> Literal["first", "last"] | int:
    """The form's choice: "first", "last", or a time (epoch ms, or ISO date and time read as UTC).

    >>> parse_reset_target("time", "2026-01-02T03:04")
    1767323040000
    >>> parse_reset_target("time", "1700000000000")
    1700000000000
    """
    if to == "first":
        return "first"
    if to == "last":
        return "last"
    if to != "time" or not at.strip():
        raise ValueError("reset to first, last, or a time")
    at = at.strip()
    if at.isdigit():
        return int(at)
    moment = datetime.fromisoformat(at)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)
