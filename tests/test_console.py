"""The web console's endpoints through httpx's ASGI transport, on both backends, with seeded data."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from rmq_style import Admin, Message, Producer, TransactionProducer, TransactionState
from rmq_style._message import decode_entry
from rmq_style._names import Keys
from rmq_style._sync._io import open_client
from rmq_style.console import RateRing, create_console
from rmq_style.console._views import body_preview, message_view, parse_reset_target
from rmq_style.testing import free_port
from tests.consolekit import HOSTILE, seeded_console_data, wait_for

TOKEN = "s3cret-token"


def run(app: Any, session: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    """Run *session* against *app* in one event loop (the console's Admin lives in it)."""

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
            try:
                await session(client)
            finally:
                await app.state.console.aclose()

    asyncio.run(main())


def test_pages_show_every_state_and_bodies_escaped(url: str) -> None:
    unknown = TransactionState.UNKNOWN
    tx_options: dict[str, Any] = {"check_interval_ms": 60_000, "check_in_background": False}
    with (
        seeded_console_data(url) as seeded,
        TransactionProducer(url, "orders-tx", lambda m: unknown, **tx_options) as tx_producer,
    ):
        half = tx_producer.begin().send(Message("orders", {"n": 9}))
        fast: dict[str, Any] = {"transaction_timeout_ms": 0, "check_interval_ms": 1, "check_max": 1}
        with TransactionProducer(
            url, "refunds-tx", lambda m: unknown, check_in_background=False, **fast
        ) as refunds:
            dropped = refunds.begin().send(Message("orders", {"n": 10}))
            with Admin(url) as admin:
                wait_for(
                    lambda: refunds.check_once() and len(admin.discarded_transactions("refunds-tx")) == 1,
                    "the refund's half message is discarded after its last check",
                )
        with Admin(url) as admin:  # the traced message's journey, plus a hostile record (docs/trace.md)
            wait_for(
                lambda: any(
                    s.group == "billing" for t in admin.trace(seeded.traced_id, "orders") for s in t.steps
                ),
                "billing recorded its delivery of the traced message",
            )
        raw = open_client(url)
        raw.xadd(
            Keys().queue("orders", 0).trace, {"i": seeded.traced_id, "e": "sub", "g": "billing", "h": HOSTILE}
        )
        raw.close()
        app = create_console(url)

        async def session(client: httpx.AsyncClient) -> None:
            topics = await client.get("/")
            assert topics.status_code == 200
            assert 'data-topic="orders"' in topics.text and 'data-topic="events"' in topics.text
            assert "htmx.min.js" in topics.text and 'hx-trigger="every 3.0s"' in topics.text
            groups = (await client.get("/groups")).text
            for group in ("audit", "billing", "reports", "shipping"):
                assert f'data-group="{group}"' in groups
            row = {g: groups.split(f'data-group="{g}"')[1].split("</tr>")[0] for g in ("reports", "audit")}
            assert '<td class="lag warn">5</td>' in row["reports"]
            assert '<td class="retrying warn">1</td>' in row["audit"]
            shipping = (await client.get("/groups/shipping")).text
            member = seeded.tester.app.consumers["shipping"].member
            assert f'<span class="members">orders: {member}</span>' in shipping
            assert "carrier down" in shipping and 'class="bad"' in shipping
            assert "reset-form" not in shipping  # read-only: no change form
            dlq = (await client.get("/groups/billing/dlq")).text
            assert "&lt;script&gt;alert(" in dlq and "<script>alert" not in dlq
            assert "&lt;em&gt;failed&lt;/em&gt;" in dlq and "<em>failed" not in dlq
            assert "replay-one" not in dlq and 'id="purge"' not in dlq
            link = dlq.split('href="/groups/billing/dlq/orders/0/')[1].split('"')[0]
            shown = (await client.get(f"/groups/billing/dlq/orders/0/{link}")).text
            assert seeded.hostile_id in shown and "&lt;b&gt;bold&lt;/b&gt;" in shown
            by_id = (
                await client.get("/messages", params={"topic": "orders", "msg_id": seeded.hostile_id})
            ).text
            assert "1 message(s)" in by_id and "&lt;script&gt;" in by_id and "<script>alert" not in by_id
            by_key = (await client.get("/messages", params={"topic": "orders", "key": "order-2"})).text
            assert "1 message(s)" in by_key and "order-2" in by_key and 'class="trace"' not in by_key
            traced = (
                await client.get("/messages", params={"topic": "orders", "msg_id": seeded.traced_id})
            ).text
            journey = traced.split('<ol class="trace">')[1].split("</ol>")[0]
            assert "sent by" in journey and "[billing] delivery 1 to" in journey
            assert "&lt;script&gt;alert(" in journey and "<script>" not in journey
            tx = (await client.get("/transactions")).text
            pending, discarded = tx.split("producer group refunds-tx")
            assert "producer group orders-tx" in pending and half.msg_id in pending
            assert "pending half messages (1)" in pending and "discarded half messages (0)" in pending
            assert dropped.msg_id in discarded and "discarded half messages (1)" in discarded
            topic = (await client.get("/topics/events")).text
            assert "2 queues" in topic and topic.count("<tr><td>") == 2
            assert 'data-group="reports"' in (await client.get("/parts/groups")).text
            part = (await client.get("/parts/groups/shipping")).text
            assert part.startswith('<p id="summary">') and "carrier down" in part
            assert (await client.get("/groups/billing/dlq/orders/0/1-0")).status_code == 404
            missing = await client.get("/topics/nope")
            assert missing.status_code == 404 and "nope" in missing.text
            static = await client.get("/static/htmx.min.js")
            assert static.status_code == 200 and "htmx" in static.text

        run(app, session)


def test_read_only_without_a_token(url: str) -> None:
    with seeded_console_data(url):
        app = create_console(url)

        async def session(client: httpx.AsyncClient) -> None:
            refused = await client.post("/groups/billing/dlq/purge", data={"confirm": "yes", "token": ""})
            assert refused.status_code == 403 and "read-only" in refused.text
            refused = await client.post(
                "/groups/reports/reset", data={"topic": "events", "to": "last", "confirm": "yes"}
            )
            assert refused.status_code == 403

        run(app, session)
        with Admin(url) as admin:
            assert len(admin.dead_letters("billing")) == 1
            assert sum(r.progress.lag for r in admin.progress("reports")) == 5


def test_changes_need_the_token_and_a_confirmation(url: str) -> None:
    with seeded_console_data(url) as seeded:
        app = create_console(url, token=TOKEN)

        async def session(client: httpx.AsyncClient) -> None:
            dlq = (await client.get("/groups/billing/dlq")).text
            assert "replay-one" in dlq and 'id="purge"' in dlq
            wrong = await client.post(
                "/groups/billing/dlq/replay", data={"all": "yes", "confirm": "yes", "token": "x"}
            )
            assert wrong.status_code == 403 and "wrong or missing token" in wrong.text
            huge = await client.post("/groups/billing/dlq/purge", data={"x": "y" * 70_000, "token": TOKEN})
            assert huge.status_code == 400 and "form too large" in huge.text
            unconfirmed = await client.post("/groups/billing/dlq/replay", data={"all": "yes", "token": TOKEN})
            assert unconfirmed.status_code == 400 and "not confirmed" in unconfirmed.text
            reset = await client.post(
                "/groups/reports/reset",
                data={"topic": "events", "to": "time", "at": "2000-01-01T00:00", "confirm": "yes"},
                headers={"X-Console-Token": TOKEN},
            )
            assert reset.status_code == 200 and "events:0" in reset.text
            bad = await client.post(
                "/groups/reports/reset",
                data={"topic": "events", "to": "time", "at": "yesterday", "confirm": "yes", "token": TOKEN},
            )
            assert bad.status_code == 400
            seeded.failing.clear()
            replay = await client.post(
                "/groups/billing/dlq/replay", data={"all": "yes", "confirm": "yes", "token": TOKEN}
            )
            assert replay.status_code == 200 and "1 dead letter(s) replayed" in replay.text

        run(app, session)
        with Admin(url) as admin:
            assert sum(r.progress.lag for r in admin.progress("reports")) == 6
            assert admin.dead_letters("billing") == []
        # the first try, then the replay reached the handler (drain would wait for the held queue)
        wait_for(lambda: seeded.billed.count((3, 0)) == 2, "the replayed message is handled")


def test_purge_with_confirmation(url: str) -> None:
    with seeded_console_data(url):
        app = create_console(url, token=TOKEN)

        async def session(client: httpx.AsyncClient) -> None:
            purged = await client.post("/groups/billing/dlq/purge", data={"confirm": "yes", "token": TOKEN})
            assert purged.status_code == 200 and "1 dead letter(s) purged" in purged.text

        run(app, session)
        with Admin(url) as admin:
            assert admin.dead_letters("billing") == []


def test_rates_from_two_reads(url: str) -> None:
    with Admin(url) as admin:
        admin.create_topic("orders", queues=2)
    app = create_console(url)
    now = [100.0]
    app.state.console.rates = RateRing(clock=lambda: now[0])

    async def session(client: httpx.AsyncClient) -> None:
        first = (await client.get("/parts/topics")).text
        assert '<td class="rate">…</td>' in first
        with Producer(url) as producer:
            producer.send_batch([Message("orders", n) for n in range(10)])
        now[0] += 4.0
        second = (await client.get("/parts/topics")).text
        assert '<td class="rate">2.5</td>' in second

    run(app, session)


def test_the_rate_ring_is_bounded_and_restarts_when_a_counter_goes_back() -> None:
    now = [0.0]
    ring = RateRing(min_gap_s=1.0, window_s=10.0, per_key=3, max_keys=2, clock=lambda: now[0])
    for value in (0, 10, 20, 30, 40):
        ring.record("a", value)
        ring.record("a", value + 1000)  # too close to the last sample: not kept
        now[0] += 2.0
    assert ring.rate("a") == 5.0 and len(ring._samples["a"]) == 3
    ring.record("b", 1)
    ring.record("c", 1)  # a third counter drops the least recently written one
    assert ring.rate("a") is None and set(ring._samples) == {"b", "c"}
    now[0] += 2.0
    ring.record("b", 0)  # went back (topic recreated): no negative rate, start again
    assert ring.rate("b") is None
    now[0] += 30.0
    ring.record("b", 60)
    assert ring.rate("b") is None  # the only other sample is older than the window


def test_mounted_under_a_prefix_in_a_fastapi_app(fake_url: str) -> None:
    from fastapi import FastAPI

    with Admin(fake_url) as admin:
        admin.create_topic("orders", queues=1)
    outer = FastAPI()
    console = create_console(fake_url)
    outer.mount("/rmq", console)
    outer.state.console = console.state.console
    standalone = create_console(fake_url, prefix="/ops/")

    async def session(client: httpx.AsyncClient) -> None:
        page = (await client.get("/rmq/")).text
        assert 'href="/rmq/topics/orders"' in page and 'src="/rmq/static/htmx.min.js"' in page

    async def standalone_session(client: httpx.AsyncClient) -> None:
        page = await client.get("/ops/")
        assert page.status_code == 200 and 'href="/ops/groups"' in page.text
        assert (await client.get("/")).status_code == 404

    run(outer, session)
    run(standalone, standalone_session)


def test_hostile_entries_in_a_dead_letter_queue_render_escaped(url: str) -> None:
    with Admin(url) as admin:
        admin.create_topic("orders", queues=1)
    client = open_client(url)
    client.sadd(Keys().groups(), "billing")
    client.hset(Keys().subscriptions("billing"), "orders", "*")
    dlq = Keys().queue("orders", 0).dlq("billing")
    client.xadd(
        dlq, {b"i": b"\xff<i>", b"d": b"\xfe<script>x()</script>", b"reason": b"<img src=x onerror=y()>"}
    )
    client.xadd(dlq, {b"d": b"<svg onload=z()>", b"p": b"{not json", b"r": b"two", b"dead_at": b"soon"})
    client.close()
    app = create_console(url, token=TOKEN)

    async def session(client: httpx.AsyncClient) -> None:
        page = await client.get("/groups/billing/dlq")
        assert page.status_code == 200, page.text
        text = page.text
        assert "<script>x()" not in text and "<img src=x" not in text and "<svg onload" not in text
        assert "&lt;img src=x onerror=y()&gt;" in text and "&lt;svg onload=z()&gt;" in text
        assert "&lt;undecodable b&#39;\\xff&lt;i&gt;&#39;&gt;" in text  # the msg id marker
        groups = (await client.get("/groups")).text
        assert '<td class="dead bad"><a href="/groups/billing/dlq">2</a></td>' in groups

    run(app, session)


def test_an_undecodable_entry_is_marked_and_a_binary_body_shown_as_bytes() -> None:
    entry = decode_entry("orders", 0, b"1-0", {b"i": b"\xff<i>", b"p": b"{bad", b"d": b"\xff\x00<script>"})
    shown = message_view(entry)
    assert shown.msg_id == "<undecodable b'\\xff<i>'>"
    assert shown.properties[0][0] == "(undecodable)"
    assert shown.body_note == "binary, 10 bytes" and shown.body.startswith("b'\\xff\\x00")
    assert shown.problem is not None


def test_long_bodies_are_cut_without_splitting_a_character() -> None:
    text, note = body_preview(b"a" * 3000)
    assert (len(text), note) == (2048, "text, first 2048 of 3000 bytes")
    text, note = body_preview(("a" + "é" * 1500).encode())  # byte 2048 falls inside an é
    assert text == "a" + "é" * 1023 and note == "text, first 2048 of 3001 bytes"
    text, note = body_preview(b"\xff" + b"a" * 3000)  # not UTF-8 near the start: binary
    assert note == "binary, 3001 bytes" and text.startswith("b'\\xffaaa")
    with pytest.raises(ValueError):
        parse_reset_target("middle", "")


def test_the_cli_serves_the_console(real_url: str) -> None:
    port = free_port()
    command = [sys.executable, "-m", "rmq_style.cli", "console", "--port", str(port), "--url", real_url]
    with subprocess.Popen([*command, "--token", TOKEN, "--prefix", "/ops"], stdout=subprocess.PIPE) as server:
        try:
            deadline = time.monotonic() + 20
            while True:
                assert server.poll() is None and time.monotonic() < deadline, "the console did not start"
                try:
                    page = httpx.get(f"http://127.0.0.1:{port}/ops/groups", timeout=2)
                    break
                except httpx.TransportError:
                    time.sleep(0.05)  # bounded poll: the server is starting
            assert page.status_code == 200 and "changes allowed with the token" in page.text
        finally:
            server.terminate()
            server.wait(10)


def test_the_cli_says_which_extra_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from rmq_style.cli import app

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now raises ImportError
    result = CliRunner().invoke(app, ["console", "--port", "0", "--url", "memory://cli-console"])
    assert result.exit_code == 2
    assert 'pip install "rmq_style[console]"' in result.output


def test_create_console_without_the_extra_says_which_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import rmq_style.console

    monkeypatch.delitem(sys.modules, "rmq_style.console._app")
    monkeypatch.setitem(sys.modules, "starlette.applications", None)
    with pytest.raises(ImportError, match=r'pip install "rmq_style\[console\]"'):
        rmq_style.console.create_console  # noqa: B018 - the lazy import is the point


def test_group_page_shows_broadcasting_members_and_held_keys_escaped(url: str) -> None:
    """Broadcasting members (instance, position, lag, retrying) and a key-ordered group's held keys
    (rmq:{T:i}:kheld:G), as stored: hostile names and counts escaped, never a crash."""
    with Admin(url) as admin:
        admin.create_topic("orders", queues=1)
    with Producer(url) as producer:
        sent = [producer.send(Message("orders", n)) for n in range(3)]
    keys, qk = Keys(), Keys().queue("orders", 0)
    raw = open_client(url)
    for group, kind in (("fanout", "broadcasting"), ("keyed", "key")):
        raw.sadd(keys.groups(), group)
        raw.hset(keys.subscriptions(group), "orders", "*")
        raw.hset(keys.subscription_kinds(group), "orders", kind)
    raw.hset(qk.broadcast("fanout"), mapping={"node-1": sent[0].offset, "<i>evil</i>": "zzz"})
    raw.zadd(qk.member_retry("fanout", "node-1"), {"m": 1})
    raw.hset(qk.key_held("keyed"), mapping={sent[1].offset: "3", "r9-0": "1", "<b>x</b>": "<s>"})
    raw.close()
    app = create_console(url)

    async def session(client: httpx.AsyncClient) -> None:
        fanout = (await client.get("/groups/fanout")).text
        table = fanout.split('<table id="members">')[1].split("</table>")[0]
        node = table.split('data-instance="node-1"')[1].split("</tr>")[0]
        assert f"<td>{sent[0].offset}</td>" in node and "<td>1</td>" in node  # position, consumed 1
        assert '<td class="lag warn">2</td>' in node and '<td class="retrying warn">1</td>' in node
        assert "&lt;i&gt;evil&lt;/i&gt;" in table and "<i>evil" not in fanout and "not an offset" in table
        keyed = (await client.get("/groups/keyed")).text
        held = keyed.split('<td class="held">')[1].split("</td>")[0]
        times = "\N{MULTIPLICATION SIGN}"
        assert f'<span class="bad key-held">{sent[1].offset} {times}3</span>' in held
        assert f'<span class="bad key-held">9-0 (retry) {times}1</span>' in held
        assert f"&lt;b&gt;x&lt;/b&gt; {times}?" in held and "<b>x" not in keyed and "<s>" not in keyed
        assert 'held keys <b class="bad">3</b>' in keyed and 'id="members"' not in keyed
        part = (await client.get("/parts/groups/keyed")).text
        assert "key-held" in part

    run(app, session)
    from rmq_style.cli import app as cli_app  # the progress command shows them too

    shown = CliRunner().invoke(cli_app, ["progress", "--group", "keyed", "--url", url, "--json"])
    assert shown.exit_code == 0, shown.output
    (row,) = json.loads(shown.output)
    assert {"entry_id": "9-0", "retry": True, "attempts": 1} in row["key_held"]
    text = CliRunner().invoke(cli_app, ["progress", "--group", "keyed", "--url", url]).output
    assert "messages holding their keys" in text and "<b>x</b>" in text
