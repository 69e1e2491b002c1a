"""Views of entries that no producer of ours wrote: the CLI shows what decodes and marks what does not.

``rmq-style pull``, ``find``, ``dlq list``, ``dlq show`` and ``topic describe`` on raw
entries with binary or non-numeric fields, on both backends (docs/storage.md,
"Field validity").
"""

from __future__ import annotations

import asyncio
import json

from typer.testing import CliRunner

from rmq_style import Keys, ReceivedMessage
from rmq_style._async._io import open_client
from rmq_style.cli import app as cli_app
from tests.pushkit import create_topic
from tests.test_hostile_entries import MSG_ID, entry, xadd

runner = CliRunner()


def cli(*args: str) -> str:
    result = runner.invoke(cli_app, list(args), catch_exceptions=True)
    assert result.exception is None and result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_cli_views_of_entries_that_do_not_decode(url: str) -> None:
    asyncio.run(create_topic(url, queues=1))
    stream_entries = [
        entry(i=b"\xff\xfe", q=b"zero", t=b"paid", k=b"order-1"),
        entry(q=b"x", r=b"often", t=b"[/bold]", k=b"order-1 \xff", c=b"\xfe", p=b"{not json"),
        entry(c=b"j", d=b"\xff{"),
        entry(c=b"j", d=b"[" * 100_000),  # nested too deep for json
    ]
    asyncio.run(xadd(url, stream_entries))
    keys = Keys().queue("orders", 0)
    dead_entry = {**entry(i=b"\xfa\xfb", c=b"\xff"), b"topic": b"orders", b"queue": b"0",
                  b"offset": b"1-0", b"group": b"billing", b"reason": b"undecodable entry: ...",
                  b"dead_at": b"1700000000000"}  # fmt: skip
    client = open_client(url)

    async def write_dead() -> None:
        await client.xadd(keys.dlq("billing"), dead_entry)  # type: ignore[arg-type]
        await client.hset(Keys().subscriptions("billing"), "orders", "*")
        await client.aclose()

    asyncio.run(write_dead())
    u = ("--url", url)
    assert json.loads(cli("topic", "describe", "orders", *u, "--json"))["queues"][0]["length"] == 4
    pulled = json.loads(cli("pull", "orders", "--queue", "0", *u, "--json"))
    rows = pulled["messages"]
    assert [r["msg_id"] for r in rows] == ["<undecodable b'\\xff\\xfe'>", *[MSG_ID.decode()] * 3]
    assert (
        rows[1]["queue_offset"] == "<undecodable b'x'>"
        and rows[1]["reconsume_times"] == "<undecodable b'often'>"
    )
    assert rows[1]["keys"].startswith("<undecodable") and rows[1]["tag"] == "[/bold]"
    problems = [r.get("problem", "").split(" is ")[0] for r in rows]
    assert problems == ["field 'i' (msg id)", "field 'q' (queue offset)", "", ""]
    assert rows[2]["body"] == repr(b"\xff{") and rows[3]["body"] == repr(b"[" * 200)
    table = cli("pull", "orders", "--queue", "0", *u)
    assert "<undecodable" in table and "[/bold]" in table
    for query in (
        ("--key", "order-1"),
        ("--tag", "paid"),
        ("--msg-id", MSG_ID.decode()),
        ("--tag", "[/bold]"),
    ):
        assert json.loads(cli("find", "orders", *query, *u, "--json"))
        assert "message(s) of orders" in cli("find", "orders", *query, *u)
    (dead,) = json.loads(cli("dlq", "list", "--group", "billing", *u, "--json"))
    assert dead["msg_id"] == "<undecodable b'\\xfa\\xfb'>" and dead["problem"].startswith("field 'i'")
    assert dead["body"] == repr(b"hostile") and dead["reason"] == "undecodable entry: ..."
    assert "<undecodable" in cli("dlq", "list", "--group", "billing", *u)
    for name in (dead["dlq_id"], dead["msg_id"]):
        assert json.loads(cli("dlq", "show", name, "--group", "billing", *u))["dlq_id"] == dead["dlq_id"]
    assert repr(ReceivedMessage("orders", 0, b"1-0", stream_entries[1])).startswith(
        f"ReceivedMessage(msg_id='{MSG_ID.decode()}', topic='orders', queue_id=0, offset='1-0', "
        "queue_offset=\"<undecodable b'x'>\""
    )
