"""The ``rmq-style`` command line: topics, sending, and the demo.

Output is rich tables for people and ``--json`` for scripts. The Redis URL
comes from ``--url`` or the RMQ_URL environment variable.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import timedelta
from typing import Annotated, Any

import typer

from ._cli_common import DEFAULT_URL, JsonOption, UrlOption, console, emit_json, message_row, show, table
from ._cli_dlq import dlq_app
from ._cli_topics import topic_app
from ._cli_trace import trace
from ._cli_tx import tx_app
from ._errors import RmqError, UsageError
from ._message import Message, MessageQueue
from ._offsets import Offset
from ._sync.admin import Admin
from ._sync.producer import Producer
from ._sync.pull import PullConsumer

app = typer.Typer(help="rmq_style: RocketMQ-style messaging on Redis Streams.", no_args_is_help=True)
app.add_typer(topic_app, name="topic")
app.add_typer(dlq_app, name="dlq")
app.add_typer(tx_app, name="tx")
app.command("trace")(trace)


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
        emit_json(asdict(result))
        return
    where = (
        f"offset {result.offset} (queue offset {result.queue_offset})"
        if result.offset
        else (f"held until {result.deliver_at_ms} ms")
    )
    console.print(f"sent {result.msg_id} to {result.queue}: {where}")


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
    rows = [message_row(m) for m in result.messages]
    if as_json:
        emit_json({"status": str(result.status), "next_offset": result.next_offset, "messages": rows})
        return
    columns = {
        "offset": "offset",
        "q-offset": "queue_offset",
        "msg id": "msg_id",
        "tag": "tag",
        "body": "body",
    }
    show(f"{mq} {result.status} (next offset {result.next_offset})", rows, columns)


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
    rows = [{**message_row(m), "stored_ms": m.store_timestamp} for m in found]
    if as_json:
        emit_json(rows)
        return
    columns = {
        "msg id": "msg_id",
        "queue": "queue",
        "offset": "offset",
        "q-offset": "queue_offset",
        "tag": "tag",
    }
    shown = [{**r, "keys": " ".join(r["keys"])} for r in rows]
    show(f"{len(rows)} message(s) of {topic}", shown, {**columns, "keys": "keys", "body": "body"})


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
    data: list[dict[str, Any]] = [
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
            "members": [asdict(m) for m in r.members],
            "key_held": [asdict(k) for k in r.key_held],
        }
        for r in rows
    ]
    if as_json:
        emit_json(data)
        return
    members = [{"topic": d["topic"], "queue": d["queue"], **m} for d in data for m in d.pop("members")]
    held_keys = [{"topic": d["topic"], "queue": d["queue"], **k} for d in data for k in d.pop("key_held")]
    lost = sum(r.trimmed for r in rows)
    columns = [c for c in (list(data[0]) if data else ["topic"]) if c != "trimmed" or lost]
    console.print(table(f"progress of group {group}", columns, [[d[c] for c in columns] for d in data]))
    lag, pending = sum(r.progress.lag for r in rows), sum(r.progress.pending for r in rows)
    console.print(f"total lag {lag}, pending {pending}")
    if lost:
        console.print(f"[yellow]{lost} entries were trimmed (maxlen retention) before the group read them[/]")
    if members:  # broadcasting: each member has its own position
        columns = ["topic", "queue", "instance", "position", "consumed_queue_offset", "lag", "retrying"]
        title = f"broadcasting members of group {group}"
        console.print(table(title, columns, [[m[c] for c in columns] for m in members]))
    if held_keys:  # key-ordered: the failing messages holding their keys
        columns = ["topic", "queue", "entry_id", "retry", "attempts"]
        title = f"messages holding their keys in group {group}"
        console.print(table(title, columns, [[k[c] for c in columns] for k in held_keys]))


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
