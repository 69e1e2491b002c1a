"""``rmq-style tx`` (issue 14): pending and discarded half messages of a producer group."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ._cli_common import DEFAULT_URL, JsonOption, UrlOption, console, emit_json, message_row, show, table
from ._errors import UsageError
from ._sync.admin import Admin
from ._tx_admin import HalfRecord

tx_app = typer.Typer(help="Half messages of a producer group: list, show, resume, commit, roll back.")
TxGroupOption = Annotated[str, typer.Option("--group", help="producer group")]


def _half_row(r: HalfRecord) -> dict[str, Any]:
    row = message_row(r.message)
    for no_offset_yet in ("offset", "queue_offset", "reconsume_times"):
        row.pop(no_offset_yet, None)
    return {
        **row,
        "topic": r.queue.topic,
        "status": r.status,
        "checks": r.check_times,
        "age_s": round(r.age_ms / 1000, 1),
        "stored_ms": r.stored_ms,
        "next_check_ms": r.next_check_ms,
        "checking": r.checking,
    }


@tx_app.command("list")
def tx_list(
    group: TxGroupOption,
    topic: Annotated[str | None, typer.Option(help="one topic")] = None,
    discarded: Annotated[bool, typer.Option("--discarded", help="only the discarded ones")] = False,
    url: UrlOption = DEFAULT_URL,
    as_json: JsonOption = False,
) -> None:
    """List the group's pending (and discarded) half messages, oldest first."""
    with Admin(url) as admin:
        found = admin.discarded_transactions(group, topic) if discarded else (
            admin.pending_transactions(group, topic) + admin.discarded_transactions(group, topic)
        )  # fmt: skip
    rows = [_half_row(r) for r in found]
    if as_json:
        emit_json(rows)
        return
    columns = {"msg id": "msg_id", "topic": "topic", "queue": "queue", "status": "status",
               "checks": "checks", "age s": "age_s", "keys": "keys"}  # fmt: skip
    show(
        f"half messages of producer group {group}",
        [{**r, "keys": " ".join(r["keys"])} for r in rows],
        columns,
    )


@tx_app.command("show")
def txshow(msg_id: str, group: TxGroupOption, url: UrlOption = DEFAULT_URL) -> None:
    """Show one pending or discarded half message in full (JSON)."""
    with Admin(url) as admin:
        record = admin.transaction(group, msg_id)
    if record is None:
        raise UsageError(f"no pending or discarded half message {msg_id!r} in producer group {group!r}")
    emit_json(_half_row(record))


@tx_app.command("resume")
def tx_resume(msg_id: str, group: TxGroupOption, url: UrlOption = DEFAULT_URL) -> None:
    """Check a discarded half message again, from a check count of 0."""
    with Admin(url) as admin:
        admin.resume_transaction(group, msg_id)
    console.print(f"checks of {msg_id} start again")


@tx_app.command("commit")
def tx_commit(msg_id: str, group: TxGroupOption, url: UrlOption = DEFAULT_URL) -> None:
    """Commit a pending or discarded half message: it becomes visible in its queue now."""
    with Admin(url) as admin:
        sent = admin.commit_transaction(group, msg_id)
    console.print(f"committed {msg_id} to {sent.queue} at queue offset {sent.queue_offset}")


@tx_app.command("rollback")
def tx_rollback(msg_id: str, group: TxGroupOption, url: UrlOption = DEFAULT_URL) -> None:
    """Roll back a pending or discarded half message for good."""
    with Admin(url) as admin:
        admin.rollback_transaction(group, msg_id)
    console.print(f"rolled back {msg_id}")


@tx_app.command("progress")
def tx_progress(
    group: TxGroupOption,
    topic: Annotated[str | None, typer.Option(help="one topic")] = None,
    url: UrlOption = DEFAULT_URL,
    as_json: JsonOption = False,
) -> None:
    """Per queue: pending half messages, the oldest one's age, the most checks, discarded ones."""
    with Admin(url) as admin:
        reports = admin.transaction_report(group, topic)
        instances = admin.transaction_instances(group)
    data = [
        {"topic": r.queue.topic, "queue": r.queue.queue_id, "pending": r.pending,
         "oldest_age_s": None if r.oldest_age_ms is None else round(r.oldest_age_ms / 1000, 1),
         "max_checks": r.max_check_times, "discarded": r.discarded}
        for r in reports
    ]  # fmt: skip
    if as_json:
        emit_json({"queues": data, "instances": instances})
        return
    columns = list(data[0]) if data else ["topic"]
    console.print(
        table(f"transactions of producer group {group}", columns, [[d[c] for c in columns] for d in data])
    )
    seen = ", ".join(f"{m} ({age / 1000:.1f} s ago)" for m, age in sorted(instances.items()))
    console.print(f"checking instances (last heartbeat): {seen or 'none: half messages wait for one'}")
