"""What the ``rmq-style`` commands share: options, the console, tables, JSON, and message rows."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ._errors import SerializationError
from ._message import ReceivedMessage

console = Console()

UrlOption = Annotated[
    str,
    typer.Option(
        "--url", envvar="RMQ_URL", help="redis://, rediss://, unix://, redis+sentinel:// or memory://"
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
DEFAULT_URL = "redis://localhost:6379/0"


def emit_json(value: Any) -> None:
    typer.echo(json.dumps(value, default=str))


def show(title: str, rows: list[dict[str, Any]], columns: dict[str, str]) -> None:
    """Print *rows* as a table; *columns* maps each header to its row key."""
    console.print(table(title, list(columns), [[r[key] for key in columns.values()] for r in rows]))


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(Text("" if v is None else str(v)) for v in row))  # Text: no markup from data
    return table


def message_row(msg: ReceivedMessage) -> dict[str, Any]:
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
