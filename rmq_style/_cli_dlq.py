"""``rmq-style dlq``: read and replay a group's dead-letter queue."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.progress import Progress

from ._cli_common import DEFAULT_URL, JsonOption, UrlOption, console, emit_json, message_row, show
from ._errors import UsageError
from ._group_admin import DeadLetterRecord
from ._sync.admin import Admin

dlq_app = typer.Typer(help="Read and replay a group's dead-letter queue.", no_args_is_help=True)


def _dead_row(d: DeadLetterRecord) -> dict[str, Any]:
    return {
        **message_row(d.message),
        "dlq_id": d.dlq_id,
        "topic": d.message.topic,
        "origin_offset": d.origin_offset,
        "reason": d.reason,
        "dead_at_ms": d.dead_at_ms,
        "member": d.member,
    }


@dlq_app.command("list")
def dlq_list(
    group: Annotated[str, typer.Option(help="consumer group")],
    topic: Annotated[str | None, typer.Option(help="one topic")] = None,
    limit: Annotated[int, typer.Option(help="per queue")] = 100,
    url: UrlOption = DEFAULT_URL,
    as_json: JsonOption = False,
) -> None:
    """List dead letters with their reasons."""
    with Admin(url) as admin:
        rows = [_dead_row(d) for d in admin.dead_letters(group, topic, limit)]
    if as_json:
        emit_json(rows)
        return
    columns = {
        "msg id": "msg_id",
        "topic": "topic",
        "queue": "queue",
        "times": "reconsume_times",
        "reason": "reason",
    }
    if any(r["member"] for r in rows):  # broadcasting: the member that gave up on it
        columns = {**columns, "member": "member"}
    show(f"dead letters of group {group}", rows, columns)


@dlq_app.command("show")
def dlqshow(
    msg_id: str,
    group: Annotated[str, typer.Option(help="consumer group")],
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Show one dead letter in full (JSON), by its msg id or its dead-letter id (``dlq_id``)."""
    with Admin(url) as admin:
        rows = [_dead_row(d) for d in admin.dead_letters(group, limit=10_000)]
    found = [row for row in rows if msg_id in (row["msg_id"], row["dlq_id"])]
    if not found:
        raise UsageError(f"no dead letter with msg id or dlq id {msg_id!r} in group {group!r}")
    emit_json(found[0] if len(found) == 1 else found)


@dlq_app.command("replay")
def dlq_replay(
    group: Annotated[str, typer.Option(help="consumer group")],
    topic: Annotated[str | None, typer.Option(help="one topic")] = None,
    msg_id: Annotated[list[str] | None, typer.Option(help="only these (repeatable); default: all")] = None,
    member: Annotated[str | None, typer.Option(help="broadcasting: only this member's")] = None,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Give dead letters back to GROUP: same msg id, reconsume times 0 (a broadcasting member's to it)."""
    with Admin(url) as admin:
        records = [
            d
            for d in admin.dead_letters(group, topic, limit=10_000)
            if (not msg_id or d.message.shown("msg_id") in msg_id or d.dlq_id in msg_id)
            and (member is None or d.member == member)
        ]
        replayed = 0
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("replaying", total=len(records))
            for start in range(0, len(records), 100):
                chunk = records[start : start + 100]
                replayed += admin.replay_dead_letters(group, chunk)
                bar.advance(task, len(chunk))
    console.print(f"replayed {replayed} of {len(records)} dead letters to group {group}")


@dlq_app.command("purge")
def dlq_purge(
    group: Annotated[str, typer.Option(help="consumer group")],
    topic: Annotated[str | None, typer.Option(help="one topic")] = None,
    older_than_hours: Annotated[
        float | None, typer.Option(help="only dead letters that died more than this many hours ago")
    ] = None,
    purge_all: Annotated[bool, typer.Option("--all", help="every dead letter of the group")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Delete dead letters of GROUP for good (they are kept until purged or replayed)."""
    if (older_than_hours is None) == (not purge_all):
        raise UsageError("give exactly one of --older-than-hours, --all")
    before = None if purge_all else int((time.time() - (older_than_hours or 0) * 3600) * 1000)
    what = "every dead letter" if before is None else f"dead letters older than {older_than_hours} h"
    if not yes and not typer.confirm(f"delete {what} of group {group}?"):
        raise typer.Exit(1)
    with Admin(url) as admin:
        removed = admin.purge_dead_letters(group, topic, before=before)
    console.print(f"deleted {removed} dead letters of group {group}")
