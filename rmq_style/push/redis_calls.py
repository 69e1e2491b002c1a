"""The Redis calls of push consumption, as values (no I/O): fetch, acks, retries, dead letters, recovery."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .._call_values import Call, Command, command, run_script
from .._message import pack_fields
from .._names import QueueKeys
from .._replies import ReplyCode, classify

__all__ = [
    "ack_calls",
    "adopt_entries_call",
    "check_created",
    "create_groups_calls",
    "dead_letter_call",
    "fetch_command",
    "packed_record",
    "prune_consumers_call",
    "release_retries_call",
    "retry_call",
]

_RECORD_FIELDS = (b"q", b"r", b"b", b"t", b"k", b"p", b"c", b"d")


def fetch_command(
    group: str, member: str, count: int, block_ms: int | None, streams: Sequence[str], ids: Sequence[str]
) -> Command:
    """One XREADGROUP over several streams: ``>`` reads new entries, an id reads the member's own PEL."""
    args: list[Any] = ["XREADGROUP", "GROUP", group, member, "COUNT", count]
    if block_ms is not None:
        args += ["BLOCK", block_ms]
    return Command((*args, "STREAMS", *streams, *ids))


def ack_calls(group: str, stream: str, entry_ids: Sequence[bytes], *, delete: bool) -> list[Call]:
    """One XACK for many entries; retry stream entries are deleted once acknowledged (they are copies)."""
    calls: list[Call] = [command("XACK", stream, group, *entry_ids)]
    if delete:
        calls.append(command("XDEL", stream, *entry_ids))
    return calls


def packed_record(fields: Mapping[bytes, bytes], origin_offset: bytes, reconsume_times: int | None) -> bytes:
    """Fields q r b t k p c d o of an entry for the retry and dead-letter scripts."""
    values = [fields.get(name) or b"" for name in _RECORD_FIELDS]
    if reconsume_times is not None:
        values[1] = str(reconsume_times).encode()
    values.append(origin_offset)
    return pack_fields(values)


def retry_call(
    qk: QueueKeys,
    group: str,
    source: str,
    entry_id: bytes,
    *,
    delete: bool,
    msg_id: bytes,
    delay_ms: int,
    record: bytes,
) -> Call:
    return run_script(
        "retry",
        (source, qk.retry(group), qk.retry_body(group)),
        (group, entry_id, "1" if delete else "0", msg_id, delay_ms, record),
    )


def dead_letter_call(
    qk: QueueKeys,
    group: str,
    source: str,
    entry_id: bytes,
    *,
    delete: bool,
    msg_id: bytes,
    record: bytes,
    reason: str,
) -> Call:
    return run_script(
        "dead_letter",
        (source, qk.dlq(group)),
        (group, entry_id, "1" if delete else "0", msg_id, record, qk.topic, qk.queue_id, reason),
    )


def release_retries_call(qk: QueueKeys, group: str, limit: int) -> Call:
    """Reply: [moved, ms until the next retry is due or -1]."""
    return run_script(
        "release_retries", (qk.retry(group), qk.retry_body(group), qk.retry_stream(group)), (limit,)
    )


def create_groups_calls(qk: QueueKeys, group: str, where: str, value: str) -> list[Call]:
    """The group on the queue stream (at *where*) and on its retry stream (from the start)."""
    return [
        run_script("create_group", (qk.stream, qk.seq), (group, where, value)),
        command("XGROUP", "CREATE", qk.retry_stream(group), group, "0", "MKSTREAM"),
    ]


def check_created(replies: Iterable[object]) -> None:
    """Raise the first failure among the replies of group creations; BUSYGROUP (it exists) is fine."""
    for reply in replies:
        if isinstance(reply, Exception) and classify(reply) is not ReplyCode.BUSYGROUP:
            raise reply


def prune_consumers_call(stream: str, group: str, min_idle_ms: int, live: Iterable[str]) -> Call:
    """Delete the group's consumers on *stream* that are not *live*, own nothing, idled *min_idle_ms*.

    Reply: how many were deleted (0 when the stream or the group is missing).
    """
    return run_script("prune_consumers", (stream,), (group, min_idle_ms, *sorted(live)))


def adopt_entries_call(stream: str, group: str, gone: str, member: str, min_idle_ms: int, count: int) -> Call:
    """Claim for *member* the entries pending at *gone* idle for *min_idle_ms* (*count* at most).

    Reply: [listed ids, claimed ids]; listed and not claimed: trimmed while pending.
    """
    return run_script("adopt_entries", (stream,), (group, gone, member, min_idle_ms, count))
