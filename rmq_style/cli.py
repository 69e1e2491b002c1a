"""The ``rmq-style`` command line: topics, sending, and the demo.

Output is rich tables for people and ``--json`` for scripts. The Redis URL
comes from ``--url`` or the RMQ_URL environment variable.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from datetime import timedelta
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from ._errors import RmqError, SerializationError, UsageError
from ._group_admin import DeadLetterRecord
from ._message import Message, MessageQueue, ReceivedMessage
from ._offsets import Offset
from ._sync.admin import Admin
from ._sync.producer import Producer
from ._sync.pull import PullConsumer
from ._topics import Retention
from ._tx_admin import HalfRecord

app = typer.Typer(help="rmq_style: RocketMQ-style messaging on Redis Streams.", no_args_is_help=True)
topic_app = typer.Typer(help="Create, list, describe, expand and delete topics.", no_args_is_help=True)
dlq_app = typer.Typer(help="Read and replay a group's dead-letter queue.", no_args_is_help=True)
app.add_typer(topic_app, name="topic")
app.add_typer(dlq_app, name="dlq")
console = Console()

UrlOption = Annotated[
    str,
    typer.Option(
        "--url", envvar="RMQ_URL", help="redis://, rediss://, unix://, redis+sentinel:// or memory://"
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
DEFAULT_URL = "redis://localhost:6379/0"


def _emit_json(value: Any) -> None:
    typer.echo(json.dumps(value, default=str))


def _show(title: str, rows: list[dict[str, Any]], columns: dict[str, str]) -> None:
    """Print *rows* as a table; *columns* maps each header to its row key."""
    console.print(_table(title, list(columns), [[r[key] for key in columns.values()] for r in rows]))


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(Text("" if v is None else str(v)) for v in row))  # Text: no markup from data
    return table


@topic_app.command("create")
def topic_create(
    topic: str,
    queues: Annotated[int, typer.Option(help="number of message queues")] = 8,
    max_len: Annotated[int, typer.Option(help="hard cap per queue (loses data beyond it); 0: safe trim")] = 0,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Create TOPIC with its message queues."""
    retention = Retention.max_entries(max_len) if max_len else Retention()
    with Admin(url) as admin:
        route = admin.create_topic(topic, queues=queues, retention=retention)
    console.print(f"created topic [bold]{route.topic}[/] with {route.queue_count} queues")


@topic_app.command("list")
def topic_list(url: UrlOption = DEFAULT_URL, as_json: JsonOption = False) -> None:
    """List topics."""
    with Admin(url) as admin:
        routes = admin.list_topics()
    if as_json:
        _emit_json(
            [{"topic": r.topic, "queues": r.queue_count, "retention": r.retention.mode} for r in routes]
        )
        return
    console.print(
        _table(
            "topics",
            ["topic", "queues", "retention"],
            [[r.topic, r.queue_count, r.retention.mode] for r in routes],
        )
    )


@topic_app.command("describe")
def topic_describe(topic: str, url: UrlOption = DEFAULT_URL, as_json: JsonOption = False) -> None:
    """Per queue: first and last offset, length, queue offsets, delayed messages."""
    with Admin(url) as admin:
        info = admin.describe_topic(topic)
    if as_json:
        _emit_json({"topic": info.topic, "queues": [asdict(q) for q in info.queues]})
        return
    columns = ["queue", "first offset", "last offset", "length", "min q-offset", "max q-offset", "delayed"]
    rows = [
        [
            q.queue_id,
            q.first_offset,
            q.last_offset,
            q.length,
            q.min_queue_offset,
            q.max_queue_offset,
            q.delayed,
        ]
        for q in info.queues
    ]
    console.print(_table(f"topic {info.topic}", columns, rows))


@topic_app.command("expand")
def topic_expand(topic: str, queues: int, url: UrlOption = DEFAULT_URL) -> None:
    """Raise the queue count (sharding keys then map to other queues)."""
    with Admin(url) as admin:
        route = admin.expand_topic(topic, queues)
    console.print(f"topic [bold]{route.topic}[/] now has {route.queue_count} queues")


@topic_app.command("delete")
def topic_delete(topic: str, url: UrlOption = DEFAULT_URL) -> None:
    """Delete TOPIC with its messages, delayed messages, retries and dead letters."""
    with Admin(url) as admin:
        admin.delete_topic(topic)
    console.print(f"deleted topic [bold]{topic}[/]")


@app.command("send")
def send(
    topic: str,
    body: Annotated[str, typer.Argument(help="message body; parsed as JSON when it is valid JSON")],
    tag: Annotated[str | None, typer.Option(help="the message tag")] = None,
    key: Annotated[list[str] | None, typer.Option(help="business key (repeatable)")] = None,
    sharding_key: Annotated[str | None, typer.Option(help="route by this key (per-key order)")] = None,
    delay: Annotated[float | None, typer.Option(help="deliver after this many seconds")] = None,
    url: UrlOption = DEFAULT_URL,
    as_json: JsonOption = False,
) -> None:
    """Send one message."""
    try:
        value: Any = json.loads(body)
    except ValueError:
        value = body
    with Producer(url) as producer:
        result = producer.send(
            Message(topic, value, tag=tag, keys=key or []),
            sharding_key=sharding_key,
            delay=timedelta(seconds=delay) if delay is not None else None,
        )
    if as_json:
        _emit_json(asdict(result))
        return
    where = (
        f"offset {result.offset} (queue offset {result.queue_offset})"
        if result.offset
        else (f"held until {result.deliver_at_ms} ms")
    )
    console.print(f"sent {result.msg_id} to {result.queue}: {where}")


def _message_row(msg: ReceivedMessage) -> dict[str, Any]:
    """What decodes of *msg*; a field that does not shows as ``<undecodable ...>``, ``problem`` says why."""
    problem = msg.problem
    try:
        body: Any = msg.value()
        json.dumps(body)  # msgpack may decode to what JSON cannot hold (bytes keys)
    except (SerializationError, ValueError, TypeError):  # a content type that does not decode
        body = repr(msg.body[:200])
    keys = msg.shown("keys")
    return {
        "msg_id": msg.shown("msg_id"),
        "queue": msg.queue_id,
        "offset": msg.offset,
        "queue_offset": msg.shown("queue_offset"),
        "tag": msg.shown("tag"),
        "keys": list(keys) if isinstance(keys, tuple) else keys,
        "reconsume_times": msg.shown("reconsume_times"),
        "body": body,
        **({"problem": problem} if problem else {}),
    }


@app.command("pull")
def pull(
    topic: str,
    queue: Annotated[int, typer.Option(help="queue id")],
    from_: Annotated[
        str, typer.Option("--from", help="offset (ms-seq, exclusive), or a timestamp in ms")
    ] = "0-0",
    count: Annotated[int, typer.Option(min=1, help="messages at most")] = 32,
    url: UrlOption = DEFAULT_URL,
    as_json: JsonOption = False,
) -> None:
    """Read messages of one queue from an offset or a timestamp, without touching any group."""
    mq = MessageQueue(topic, queue)
    with PullConsumer(url, "rmq-style-cli") as consumer:
        start: str | Offset = from_
        if from_.isdigit():
            start = consumer.offset_before_timestamp(mq, int(from_))
        result = consumer.pull(mq, start, max_nums=count)
    rows = [_message_row(m) for m in result.messages]
    if as_json:
        _emit_json({"status": str(result.status), "next_offset": result.next_offset, "messages": rows})
        return
    columns = {
        "offset": "offset",
        "q-offset": "queue_offset",
        "msg id": "msg_id",
        "tag": "tag",
        "body": "body",
    }
    _show(f"{mq} {result.status} (next offset {result.next_offset})", rows, columns)


@app.command("find")
def find(
    topic: str,
    key: Annotated[str | None, typer.Option(help="business key (Message keys)")] = None,
    msg_id: Annotated[str | None, typer.Option(help="msg id")] = None,
    tag: Annotated[str | None, typer.Option(help="tag")] = None,
    limit: Annotated[int, typer.Option(min=1, help="matches at most")] = 64,
    scan: Annotated[int, typer.Option(min=1, help="entries read back per queue at most")] = 100_000,
    url: UrlOption = DEFAULT_URL,
    as_json: JsonOption = False,
) -> None:
    """Find messages of TOPIC by key, msg id or tag, newest first (a bounded scan, not an index)."""
    with Admin(url) as admin:
        found = admin.find_messages(topic, key=key, msg_id=msg_id, tag=tag, limit=limit, scan=scan)
    rows = [{**_message_row(m), "stored_ms": m.store_timestamp} for m in found]
    if as_json:
        _emit_json(rows)
        return
    columns = {
        "msg id": "msg_id",
        "queue": "queue",
        "offset": "offset",
        "q-offset": "queue_offset",
        "tag": "tag",
    }
    shown = [{**r, "keys": " ".join(r["keys"])} for r in rows]
    _show(f"{len(rows)} message(s) of {topic}", shown, {**columns, "keys": "keys", "body": "body"})


@app.command("progress")
def progress(
    group: Annotated[str, typer.Option(help="consumer group")],
    topic: Annotated[str | None, typer.Option(help="one topic (default: all the group subscribes)")] = None,
    url: UrlOption = DEFAULT_URL,
    as_json: JsonOption = False,
) -> None:
    """Per queue: max offset, group offset, lag, pending, retrying, dead letters, owner.

    A `trimmed` column appears when a maxlen retention removed entries before the group read them.
    """
    with Admin(url) as admin:
        rows = admin.progress(group, topic)
    data = [
        {
            "topic": r.progress.queue.topic,
            "queue": r.progress.queue.queue_id,
            "max_offset": r.progress.max_queue_offset,
            "group_offset": r.progress.group_offset,
            "consumed": r.progress.consumed_queue_offset,
            "lag": r.progress.lag,
            "pending": r.progress.pending,
            "retrying": r.retrying,
            "dead_letters": r.dead_letters,
            "owner": r.owner,
            "held": None if r.held is None else f"{r.held.offset} x{r.held.attempts}: {r.held.reason}",
            "trimmed": r.trimmed,
        }
        for r in rows
    ]
    if as_json:
        _emit_json(data)
        return
    lost = sum(r.trimmed for r in rows)
    columns = [c for c in (list(data[0]) if data else ["topic"]) if c != "trimmed" or lost]
    console.print(_table(f"progress of group {group}", columns, [[d[c] for c in columns] for d in data]))
    lag, pending = sum(r.progress.lag for r in rows), sum(r.progress.pending for r in rows)
    console.print(f"total lag {lag}, pending {pending}")
    if lost:
        console.print(f"[yellow]{lost} entries were trimmed (maxlen retention) before the group read them[/]")


@app.command("reset-offset")
def reset_offset(
    group: Annotated[str, typer.Option(help="consumer group")],
    topic: Annotated[str, typer.Option(help="topic")],
    to_timestamp: Annotated[
        int | None, typer.Option(help="epoch ms: consume from messages stored then")
    ] = None,
    to_first: Annotated[bool, typer.Option("--to-first", help="consume everything retained")] = False,
    to_last: Annotated[bool, typer.Option("--to-last", help="skip everything stored so far")] = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Move GROUP's position in every queue of TOPIC."""
    targets = [t for t in (to_timestamp is not None, to_first, to_last) if t]
    if len(targets) != 1:
        raise UsageError("give exactly one of --to-timestamp, --to-first, --to-last")
    target: Any = "first" if to_first else "last" if to_last else to_timestamp
    with Admin(url) as admin:
        moved = admin.reset_offset(group, topic, target)
    for queue, offset in sorted(moved.items()):
        console.print(f"{queue}: {offset}")


def _dead_row(d: DeadLetterRecord) -> dict[str, Any]:
    return {
        **_message_row(d.message),
        "dlq_id": d.dlq_id,
        "topic": d.message.topic,
        "origin_offset": d.origin_offset,
        "reason": d.reason,
        "dead_at_ms": d.dead_at_ms,
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
        _emit_json(rows)
        return
    columns = {
        "msg id": "msg_id",
        "topic": "topic",
        "queue": "queue",
        "times": "reconsume_times",
        "reason": "reason",
    }
    _show(f"dead letters of group {group}", rows, columns)


@dlq_app.command("show")
def dlq_show(
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
    _emit_json(found[0] if len(found) == 1 else found)


@dlq_app.command("replay")
def dlq_replay(
    group: Annotated[str, typer.Option(help="consumer group")],
    topic: Annotated[str | None, typer.Option(help="one topic")] = None,
    msg_id: Annotated[list[str] | None, typer.Option(help="only these (repeatable); default: all")] = None,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Give dead letters back to GROUP: same msg id, reconsume times 0."""
    with Admin(url) as admin:
        records = [
            d
            for d in admin.dead_letters(group, topic, limit=10_000)
            if not msg_id or d.message.shown("msg_id") in msg_id or d.dlq_id in msg_id
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


@app.command("worker")
def worker(
    app_path: Annotated[str, typer.Argument(metavar="MODULE:APP", help="the App, e.g. myproject.tasks:app")],
    processes: Annotated[int, typer.Option(min=1, help="worker processes")] = 1,
    concurrency: Annotated[int | None, typer.Option(min=1, help="handlers at once per group")] = None,
    only: Annotated[list[str] | None, typer.Option(help="run only this group (repeatable)")] = None,
    shutdown_timeout: Annotated[float, typer.Option(help="seconds to drain on SIGTERM")] = 30.0,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Prometheus metrics on this port, the next process on +1 (rmq_style[prometheus])"),
    ] = None,
    app_dir: Annotated[
        str, typer.Option(help="import MODULE from this directory (default: the working directory)")
    ] = ".",
) -> None:
    """Run the App's handlers in worker processes; SIGTERM/SIGINT drains them and exits 0."""
    from ._supervisor import Supervisor  # noqa: PLC0415
    from ._worker import configure_logging, import_app, use_app_dir  # noqa: PLC0415

    configure_logging()
    app_dir = use_app_dir(app_dir)  # absolute: the workers import from the same place
    import_app(app_path)  # fail fast, in the parent, on a wrong path
    if metrics_port is not None:
        import rmq_style.metrics  # noqa: F401, PLC0415 - fail fast without the prometheus extra
    supervisor = Supervisor(
        app_path,
        processes,
        only_groups=only,
        concurrency=concurrency,
        shutdown_timeout_s=shutdown_timeout,
        metrics_port=metrics_port,
        app_dir=app_dir,
    )
    raise typer.Exit(supervisor.run())


@app.command("demo")
def demo(
    redis_url: Annotated[str, typer.Option("--redis-url", help="use this Redis instead of memory://")] = "",
    messages: Annotated[int, typer.Option(help="orders to produce")] = 400,
) -> None:
    """Run the embedded demo (no Redis server needed)."""
    import logging  # noqa: PLC0415
    import sys  # noqa: PLC0415

    import structlog  # noqa: PLC0415

    from .demo import run_demo  # noqa: PLC0415 - keeps CLI start-up light

    if not structlog.is_configured():  # only warnings, on stderr: the table is the show
        structlog.configure(
            wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
            logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        )
    summary = run_demo(redis_url or "memory://demo", messages, console)
    if (
        summary["billed"] != messages
        or len(summary["dead_letters"]) != 1
        or not summary["shipped_in_order_per_user"]
    ):
        raise typer.Exit(1)


# --- transactional messages (issue 14): pending and discarded half messages of a producer group ---

tx_app = typer.Typer(help="Half messages of a producer group: list, show, resume, commit, roll back.")
app.add_typer(tx_app, name="tx")
TxGroupOption = Annotated[str, typer.Option("--group", help="producer group")]


def _half_row(r: HalfRecord) -> dict[str, Any]:
    row = _message_row(r.message)
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
        _emit_json(rows)
        return
    columns = {"msg id": "msg_id", "topic": "topic", "queue": "queue", "status": "status",
               "checks": "checks", "age s": "age_s", "keys": "keys"}  # fmt: skip
    _show(
        f"half messages of producer group {group}",
        [{**r, "keys": " ".join(r["keys"])} for r in rows],
        columns,
    )


@tx_app.command("show")
def tx_show(msg_id: str, group: TxGroupOption, url: UrlOption = DEFAULT_URL) -> None:
    """Show one pending or discarded half message in full (JSON)."""
    with Admin(url) as admin:
        record = admin.transaction(group, msg_id)
    if record is None:
        raise UsageError(f"no pending or discarded half message {msg_id!r} in producer group {group!r}")
    _emit_json(_half_row(record))


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
        _emit_json({"queues": data, "instances": instances})
        return
    columns = list(data[0]) if data else ["topic"]
    console.print(
        _table(f"transactions of producer group {group}", columns, [[d[c] for c in columns] for d in data])
    )
    seen = ", ".join(f"{m} ({age / 1000:.1f} s ago)" for m, age in sorted(instances.items()))
    console.print(f"checking instances (last heartbeat): {seen or 'none: half messages wait for one'}")


@app.command("console")
def console_command(
    port: Annotated[int, typer.Option(help="port to serve on")] = 8080,
    host: Annotated[str, typer.Option(help="address to bind (loopback by default)")] = "127.0.0.1",
    token: Annotated[
        str | None,
        typer.Option(envvar="RMQ_CONSOLE_TOKEN", help="allow replay, purge and reset with this token"),
    ] = None,
    prefix: Annotated[str, typer.Option(help="serve under this path, e.g. /rmq")] = "",
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Serve the web console (read-only unless a token is given). Needs the `console` extra."""
    try:
        import uvicorn  # noqa: PLC0415 - the console extra

        from .console import create_console  # noqa: PLC0415
    except ImportError as exc:
        console.print(f'the console needs its extra: pip install "rmq_style[console]" ({exc})', markup=False)
        raise SystemExit(2) from None
    web = create_console(url, token=token, prefix=prefix)
    mode = "changes need the token" if token else "read-only"
    console.print(f"console on http://{host}:{port}{prefix.rstrip('/')}/ ({mode})")
    uvicorn.run(web, host=host, port=port, log_level="warning")


def main() -> None:
    try:
        app()
    except RmqError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
