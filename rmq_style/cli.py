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
from rich.console import Console
from rich.table import Table

from ._errors import RmqError
from ._message import Message
from ._sync.admin import Admin
from ._sync.producer import Producer
from ._topics import Retention

app = typer.Typer(help="rmq_style: RocketMQ-style messaging on Redis Streams.", no_args_is_help=True)
topic_app = typer.Typer(help="Create, list, describe, expand and delete topics.", no_args_is_help=True)
app.add_typer(topic_app, name="topic")
console = Console()

UrlOption = Annotated[
    str, typer.Option("--url", envvar="RMQ_URL", help="redis://, rediss://, unix:// or memory://")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
DEFAULT_URL = "redis://localhost:6379/0"


def _emit_json(value: Any) -> None:
    typer.echo(json.dumps(value, default=str))


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
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
    console.print(_table("topics", ["topic", "queues", "retention"],
                         [[r.topic, r.queue_count, r.retention.mode] for r in routes]))  # fmt: skip


@topic_app.command("describe")
def topic_describe(topic: str, url: UrlOption = DEFAULT_URL, as_json: JsonOption = False) -> None:
    """Per queue: first and last offset, length, queue offsets, delayed messages."""
    with Admin(url) as admin:
        info = admin.describe_topic(topic)
    if as_json:
        _emit_json({"topic": info.topic, "queues": [asdict(q) for q in info.queues]})
        return
    columns = ["queue", "first offset", "last offset", "length", "min q-offset", "max q-offset", "delayed"]
    rows = [[q.queue_id, q.first_offset, q.last_offset, q.length, q.min_queue_offset, q.max_queue_offset,
             q.delayed] for q in info.queues]  # fmt: skip
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


@app.command("worker")
def worker(
    app_path: Annotated[str, typer.Argument(metavar="MODULE:APP", help="the App, e.g. myproject.tasks:app")],
    processes: Annotated[int, typer.Option(min=1, help="worker processes")] = 1,
    concurrency: Annotated[int | None, typer.Option(min=1, help="handlers at once per group")] = None,
    only: Annotated[list[str] | None, typer.Option(help="run only this group (repeatable)")] = None,
    shutdown_timeout: Annotated[float, typer.Option(help="seconds to drain on SIGTERM")] = 30.0,
) -> None:
    """Run the App's handlers in worker processes; SIGTERM/SIGINT drains them and exits 0."""
    from ._supervisor import Supervisor  # noqa: PLC0415
    from ._worker import configure_logging, import_app  # noqa: PLC0415

    configure_logging()
    import_app(app_path)  # fail fast, in the parent, on a wrong path
    supervisor = Supervisor(app_path, processes, only_groups=only, concurrency=concurrency,
                            shutdown_timeout_s=shutdown_timeout)  # fmt: skip
    raise typer.Exit(supervisor.run())


@app.command("demo")
def demo(
    redis_url: Annotated[str, typer.Option("--redis-url", help="use this Redis instead of memory://")] = "",
    messages: Annotated[int, typer.Option(help="orders to produce")] = 400,
) -> None:
    """Run the embedded demo (no Redis server needed)."""
    from .demo import run_demo  # noqa: PLC0415 - keeps CLI start-up light

    run_demo(redis_url or "memory://demo", messages, console)


def main() -> None:
    try:
        app()
    except RmqError as exc:
        console.print(f"[red]error:[/] {exc}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
