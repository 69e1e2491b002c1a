"""``rmq-style topic``: create, list, describe, expand and delete topics."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from ._cli_common import DEFAULT_URL, JsonOption, UrlOption, console, emit_json, table
from ._sync.admin import Admin
from ._topics import Retention

topic_app = typer.Typer(help="Create, list, describe, expand and delete topics.", no_args_is_help=True)


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
        emit_json(
            [{"topic": r.topic, "queues": r.queue_count, "retention": r.retention.mode} for r in routes]
        )
        return
    console.print(
        table(
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
        emit_json({"topic": info.topic, "queues": [asdict(q) for q in info.queues]})
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
    console.print(table(f"topic {info.topic}", columns, rows))


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
