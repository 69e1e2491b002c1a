"""Hostile entries, fuzzed: raw XADDs of arbitrary fields among good messages, on both backends.

For concurrent, orderly, key-ordered, batch and broadcasting listeners, with and without a tag filter:
each good message is handled exactly once; each entry that the table
"Field validity" of docs/storage.md rejects is in the DLQ after its first
delivery, with a reason naming the field, and never reaches the listener; one
it accepts is handled like a good message; no task of the consumer dies,
nothing is left pending, and the CLI views print every entry without a
traceback. One redis-server for the session, fresh topic and group names per
example.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs
from typer.testing import CliRunner

from rmq_style import AsyncProducer, Keys, Message, Producer, PushConsumer, ReceivedMessage
from rmq_style._async._io import open_client
from rmq_style._entry_check import _common, plain, rejection
from rmq_style._group_admin import MAX_KEY_HELD, parse_held, parse_key_held
from rmq_style._message import FIELD_ORDER, MessageQueue
from rmq_style.cli import app as cli_app
from rmq_style.testing import RedisServer
from tests.pushkit import fast_settings, until

QUEUES = 2
MAX_SIZE = 256  # the consumers' max_message_size here: "huge" stays cheap
TAGS = ("a", "b")
FAILURES = ("consumer.loop_crashed", "handler.outcome_failed", "message.outcome_failed", "queue.task_crashed")
KNOWN = (b"i", b"q", b"r", b"b", b"t", b"k", b"p", b"c", b"d")
_names = itertools.count()


# -- the table of docs/storage.md, restated independently of rmq_style._entry_check ---------------


def _utf8(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


def _json_of_strings(value: bytes) -> bool:
    try:
        decoded = json.loads(value)
    except (ValueError, RecursionError):
        return False
    return isinstance(decoded, dict) and all(isinstance(v, str) for v in decoded.values())


def rejected_field(f: dict[bytes, bytes]) -> str | None:
    """The field the table rejects first (its order), ``size`` for the size rule, None: handled."""
    msg_id = f.get(b"i")
    if not msg_id or not _utf8(msg_id) or len(msg_id) > 128:
        return "i"
    for name in (b"q", b"r", b"b"):
        if f.get(name) and not re.fullmatch(rb"[0-9]{1,15}", f[name]):
            return name.decode()
    for name in (b"t", b"k"):
        if f.get(name) and not _utf8(f[name]):
            return name.decode()
    if f.get(b"c") and f[b"c"] not in (b"b", b"s", b"j", b"m"):
        return "c"
    if f.get(b"p") and not _json_of_strings(f[b"p"]):
        return "p"
    if sum(len(f.get(n) or b"") for n in (b"d", b"p", b"k")) > MAX_SIZE:
        return "size"
    return None


def test_the_table_in_docs_storage_md_is_the_one_checked() -> None:
    """Every field row of "Field validity" is a field the consumers check (or ignore, for "any other")."""
    text = Path("docs/storage.md").read_text().split("### Field validity", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1].strip().strip("`") for line in text.splitlines() if line.startswith("| `")]
    assert rows == [n.decode() for n in KNOWN]
    samples = {b"i": b"\xff", b"q": b"x", b"r": b"-1", b"b": b"1.5", b"t": b"\xff", b"k": b"\xfe",
               b"p": b"[]", b"c": b"x", b"d": b"x" * (MAX_SIZE + 1)}  # fmt: skip
    for name, bad in samples.items():
        fields = {b"i": b"id", name: bad}
        assert rejected_field(fields) == ("size" if name == b"d" else name.decode())
        reason = ReceivedMessage("t", 0, b"1-0", fields).problem
        assert (reason is None) == (name == b"d") and (reason is None or f"field '{name.decode()}'" in reason)


# -- entries ---------------------------------------------------------------------------------------

BAD_VALUES = st.one_of(
    st.none(),  # the field is left out
    st.binary(max_size=12),
    st.sampled_from([b"", b"-1", b" 7", b"1e3", b"9" * 16, b"9" * 19, b"\xff", b"\xc3\x28", b"j", b"m", b"x",
                     b"{}", b'{"a":1}', b'{"a":"b"}', b"[[[[", b"null", b"a" * 129, b"z" * (MAX_SIZE + 1),
                     b'{"TRACE_ON":"1"}']),  # traced: the consumer records a trace of it (docs/trace.md)
    st.text(max_size=8).map(str.encode),
)  # fmt: skip


@st.composite
def hostile_entries(draw: st.DrawFn) -> dict[bytes, bytes]:
    fields = {
        b"i": draw(st.binary(min_size=16, max_size=16)).hex().encode(),
        b"q": b"%d" % draw(st.integers(0, 10**6)),
        b"r": b"0",
        b"b": b"1700000000000",
        b"t": draw(st.sampled_from([b"", *(t.encode() for t in TAGS)])),
        b"k": b"",
        b"p": b"",
        b"c": draw(st.sampled_from([b"b", b"s", b"j", b"m"])),
        b"d": draw(st.binary(max_size=16)),
    }
    for name in draw(st.lists(st.sampled_from(KNOWN), unique=True, max_size=3)):
        value = draw(BAD_VALUES)
        if value is None:
            del fields[name]
        else:
            fields[name] = value
    fields.update(draw(st.dictionaries(st.binary(min_size=1, max_size=3), st.binary(max_size=6), max_size=2)))
    return fields or {b"x": b""}


@settings(max_examples=300, deadline=None)
@given(fields=hostile_entries(), max_size=st.integers(1, 2 * MAX_SIZE))
def test_the_in_place_check_passes_only_entries_the_table_accepts(
    fields: dict[bytes, bytes], max_size: int
) -> None:
    """The consumers check an entry as Redis sent it (a flat list, ``plain``) and map it only when that
    says no: what ``plain`` passes, the table passes too, with the fields in the producers' order."""
    flat = [part for pair in fields.items() for part in pair]
    passed = plain(flat, max_size)
    assert passed == (list(fields) == list(FIELD_ORDER) and _common(fields, max_size))
    if passed:
        assert rejection(fields, max_size) is None
        assert rejected_field(fields) is None or (rejected_field(fields) == "size" and max_size > MAX_SIZE)


def test_a_message_as_sent_is_plain() -> None:
    sent = [b"i", b"0" * 32, b"q", b"7", b"r", b"0", b"b", b"1700000000000", b"t", b"a", b"k", b"k1 k2",
            b"p", b"", b"c", b"j", b"d", b"{}"]  # fmt: skip
    assert plain(sent, MAX_SIZE)
    assert not plain(sent, 6)  # body and keys: 7 bytes
    assert not plain([*sent[:13], b'{"a":"b"}', *sent[14:]], MAX_SIZE)  # properties: mapped, then checked
    assert not plain([*sent, b"o", b"1-0"], MAX_SIZE)  # a retried copy: another layout


# (queue, raw entry) or (None, tag of a good message), in the order they are written
ITEMS = st.lists(
    st.one_of(
        st.tuples(st.integers(0, QUEUES - 1), hostile_entries()),
        st.tuples(st.none(), st.sampled_from(TAGS)),
    ),
    min_size=1,
    max_size=12,
)


# -- one run ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backends(redis_server: RedisServer) -> Iterator[dict[str, str]]:
    from rmq_style._connection import drop_memory_server

    yield {"real": redis_server.url, "fake": "memory://test-hostile-fuzz"}
    drop_memory_server("test-hostile-fuzz")


async def _write(url: str, topic: str, items: list[Any]) -> tuple[dict[str, str], dict[tuple[int, str], Any]]:
    """Write *items*; return good messages (msg id -> tag) and raw entries ((queue, entry id) -> fields)."""
    from rmq_style import AsyncAdmin

    async with AsyncAdmin(url) as admin:
        await admin.create_topic(topic, queues=QUEUES)
    good: dict[str, str] = {}
    raw: dict[tuple[int, str], Any] = {}
    client = open_client(url)
    async with AsyncProducer(url) as producer:
        for queue, what in items:
            if queue is None:
                result = await producer.send(Message(topic, {"tag": what}, tag=what))
                good[result.msg_id] = what
            else:
                entry_id = await client.xadd(Keys().queue(topic, queue).stream, what)  # type: ignore[arg-type]
                raw[(queue, entry_id.decode())] = what
    await client.aclose()
    return good, raw


async def _consume(
    url: str, topic: str, group: str, kind: str, tags: str | None, expected: int, fail_once: set[str]
) -> Any:
    """Consume until every entry is accounted for; the listener fails once for each msg id of *fail_once*."""
    handled: list[tuple[int, str, str, int]] = []  # (queue, offset, msg id, reconsume times) per call
    errors: list[str] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, ctx: errors.append(ctx["message"]))

    def record(msg: ReceivedMessage) -> None:
        # what a listener may read of any message it is given: none of it may raise
        _ = (msg.queue_offset, msg.born_at, msg.tag, msg.keys, msg.properties, msg.content_type)
        handled.append((msg.queue_id, msg.offset, msg.msg_id, msg.reconsume_times))

    async def one(msg: ReceivedMessage) -> None:
        record(msg)
        if msg.msg_id in fail_once:  # its retry (concurrent) or local retry (orderly) must work too
            fail_once.discard(msg.msg_id)
            raise ValueError("fails once")

    async def many(msgs: list[ReceivedMessage]) -> None:
        for msg in msgs:
            record(msg)

    batch = 3 if kind.endswith("batch") else 1
    model = {"message_model": "broadcasting", "instance_name": "h"} if kind == "broadcast" else {}
    settings = fast_settings(
        **model,
        consume_message_batch_max_size=batch,
        max_message_size=MAX_SIZE,
        orderly_lease_ms=5000,
        suspend_current_queue_time_ms=10,
    )
    consumer = PushConsumer(url, group, settings)
    if kind == "key":
        consumer.subscribe(topic, tags, one, order="key")  # hostile keys (field k) included
    else:
        consumer.subscribe(topic, tags, many if batch > 1 else one, orderly=kind.startswith("orderly"))
    async with consumer:
        await until(lambda: len(handled) + consumer.stats.dead_lettered + consumer.stats.filtered >= expected,
                    what="every entry handled, dead-lettered or filtered")  # fmt: skip
        await until(lambda: consumer.in_flight == 0, what="every entry settled")
        tasks = [*consumer._loops.values(), *(consumer._ctx.pool._workers if consumer._ctx.pool else [])]
        if consumer._ctx.orderly is not None:
            tasks += [q.task for q in consumer._ctx.orderly.queues.values() if q.task is not None]
        assert not [t for t in tasks if t.done()]  # no task of the runtime died
        assert consumer._ctx.tree.failure is None
    gc.collect()  # a task that died reports "Task exception was never retrieved" when collected
    assert errors == []
    return handled, consumer.stats


async def _left(url: str, topic: str, group: str, kind: str) -> tuple[int, list[dict[bytes, bytes]]]:
    """Entries pending in the group (queue and retry streams), and the dead letters."""
    client = open_client(url)
    pending, dead = 0, []
    for q in range(QUEUES):
        keys = Keys().queue(topic, q)
        if kind == "broadcast":  # no group: the member's retries and its position at the queue's end
            pending += int(await client.xlen(keys.member_retry_stream(group, "h")))
            pending += int(await client.zcard(keys.member_retry(group, "h")))
            last = await client.xrevrange(keys.stream, count=1)
            position = await client.hget(keys.broadcast(group), "h")
            pending += 1 if last and position != last[0][0] else 0
            dead += [fields for _, fields in await client.xrange(keys.dlq(group))]
            continue
        pending += int((await client.xpending(keys.stream, group))["pending"])
        if await client.exists(keys.retry_stream(group)):  # concurrent groups only
            pending += int((await client.xpending(keys.retry_stream(group), group))["pending"])
        dead += [fields for _, fields in await client.xrange(keys.dlq(group))]
    await client.aclose()
    return pending, dead


runner = CliRunner()


def cli(*args: str) -> str:
    result = runner.invoke(cli_app, list(args), catch_exceptions=True)
    assert result.exception is None and result.exit_code == 0, (args, result.output, result.exception)
    return result.output


@pytest.mark.parametrize("filtered", [False, True], ids=["all", "tag-filter"])
@pytest.mark.parametrize("kind", ["concurrent", "orderly", "key", "batch", "broadcast"])
@pytest.mark.parametrize("backend", ["real", "fake"])
@settings(
    max_examples=3,  # per backend x kind x filter (the first is the simplest): about half a minute
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # bounded: no minutes of shrinking in CI
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(items=ITEMS, orderly_batch=st.booleans(), retry_raw=st.booleans())
def test_hostile_entries_among_good_messages(
    backends: dict[str, str],
    backend: str,
    kind: str,
    filtered: bool,
    items: list[Any],
    orderly_batch: bool,
    retry_raw: bool,
) -> None:
    if kind == "batch" and orderly_batch:
        kind = "orderly-batch"
    url = backends[backend]
    n = next(_names)
    topic, group = f"hostile{n}", f"g{n}"
    tags = "a" if filtered else None
    with capture_logs():
        good, raw = asyncio.run(_write(url, topic, items))
    verdicts = {where: rejected_field(fields) for where, fields in raw.items()}
    wanted = {t for t in TAGS if tags is None or t == tags}
    accepted = [
        where for where, fields in raw.items()
        if verdicts[where] is None and (tags is None or fields.get(b"t", b"").decode() in wanted)
    ]  # fmt: skip
    # accepted raw entries failing once (not in a batch: a batch fails whole) if their msg id is unique
    ids = Counter([*good, *(fields.get(b"i", b"").decode(errors="replace") for fields in raw.values())])
    retried = {
        raw[w][b"i"].decode() for w in accepted
        if ids[raw[w][b"i"].decode()] == 1 and not int(raw[w].get(b"r") or 0)  # r=0: [0, 1] below
    }  # fmt: skip
    retried = retried if retry_raw and not kind.endswith("batch") else set()
    with capture_logs() as logs:
        expected = len(good) + len(raw) + len(retried)
        handled, stats = asyncio.run(_consume(url, topic, group, kind, tags, expected, set(retried)))
    assert [e for e in logs if e["event"] in FAILURES] == []
    good_wanted = Counter(m for m, t in good.items() if t in wanted)
    assert Counter(m for _, _, m, _ in handled if m in good) == good_wanted  # each good message exactly once
    once = Counter((q, off) for q, off, m, _ in handled if m not in good and m not in retried)
    assert once == Counter(
        w for w in accepted if raw[w][b"i"].decode() not in retried
    )  # accepted raw entries
    for msg_id in retried:  # failed once, then handled again with one more reconsume time
        assert [r for _, _, m, r in handled if m == msg_id] == [0, 1]
    pending, dead = asyncio.run(_left(url, topic, group, kind))
    assert pending == 0
    bad = sorted((where, v) for where, v in verdicts.items() if v is not None)
    assert sorted(((int(d[b"queue"]), d[b"offset"].decode()), _field_of(d[b"reason"])) for d in dead) == bad
    assert stats.dead_lettered == len(bad)
    if kind.startswith("orderly"):  # per queue in offset order
        for q in range(QUEUES):
            offsets = [
                tuple(map(int, off.split("-"))) for queue, off, _, r in handled if queue == q and not r
            ]
            assert offsets == sorted(offsets)
    _check_cli(url, topic, group, raw, len(dead))


def _field_of(reason: bytes) -> str:
    text = reason.decode()
    if text.startswith("message too large: "):
        return "size"
    match = re.match(r"undecodable entry: field '(\w)' \(", text)
    assert match, text
    return match.group(1)


def _check_cli(url: str, topic: str, group: str, raw: dict[tuple[int, str], Any], dead: int) -> None:
    u = ("--url", url)
    listed = json.loads(cli("dlq", "list", "--group", group, *u, "--json"))
    assert len(listed) == dead
    cli("dlq", "list", "--group", group, *u)
    for row in listed:
        shown = json.loads(cli("dlq", "show", row["dlq_id"], "--group", group, *u))
        # a dlq id is unique per queue: the same id in two queues shows both
        assert row in (shown if isinstance(shown, list) else [shown])
    for q in range(QUEUES):
        pulled = json.loads(cli("pull", topic, "--queue", str(q), "--count", "100", *u, "--json"))
        offsets = {m["offset"] for m in pulled["messages"]}
        assert {off for queue, off in raw if queue == q} <= offsets
        cli("pull", topic, "--queue", str(q), *u)
    json.loads(cli("find", topic, "--key", "k", *u, "--json"))  # reads every entry, as do the others
    cli("find", topic, "--tag", "a", *u)
    for fields in raw.values():  # the traces consumers recorded of traced hostile entries
        msg_id = fields.get(b"i", b"").decode(errors="replace")
        if msg_id and not msg_id.startswith("-"):
            json.loads(cli("trace", msg_id, "--topic", topic, *u, "--json"))


# -- broadcasting position records (rmq:{T:i}:bcast:G, field instance name -> entry id) ------------

POSITIONS = st.one_of(
    st.none(),  # no record
    st.binary(max_size=12),
    st.sampled_from([b"", b"0-0", b"1-1", b"-1", b"1-", b"1-1\x00", b"\xff", b"99999999999999-0",
                     b"18446744073709551615-18446744073709551615", b"18446744073709551616-0"]),
)  # fmt: skip

# -- simple consumers: hostile entries, receipt handles and lease records ----------------------------


def _simple_run(url: str, topic: str, group: str, tags: str | None, expected: int) -> list[Any]:
    """Receive and ack until *expected* good messages came; then one more empty receive."""
    from rmq_style import SimpleConsumer

    got: list[Any] = []
    options = {"consume_from": "first", "await_duration": 0.05, "max_message_size": MAX_SIZE}
    with SimpleConsumer(url, group, {topic: tags or "*"}, **options) as consumer:
        deadline = time.monotonic() + 10
        while len(got) < expected:
            assert time.monotonic() < deadline, f"received {len(got)} of {expected}"
            for m in consumer.receive(32, 30):
                _ = (
                    m.queue_offset,
                    m.born_at,
                    m.tag,
                    m.keys,
                    m.properties,
                    m.content_type,
                    m.delivery_attempt,
                )
                got.append((m.queue_id, m.offset, m.msg_id))
                consumer.ack(m)
        assert consumer.receive(32, 30) == []
    return got


@pytest.mark.parametrize("backend", ["real", "fake"])
@settings(
    max_examples=4,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    mine=st.lists(POSITIONS, min_size=QUEUES, max_size=QUEUES),
    others=st.dictionaries(st.binary(min_size=1, max_size=6), st.binary(max_size=12), max_size=3),
)
def test_hostile_position_records(
    backends: dict[str, str], backend: str, mine: list[bytes | None], others: dict[bytes, bytes]
) -> None:
    """Whatever the records hold, a broadcasting member handles each message sent once it runs exactly
    once (an unusable position of its own is logged and replaced), and progress shows every record."""
    url = backends[backend]
    n = next(_names)
    topic, group = f"hostile{n}", f"g{n}"

    async def main() -> tuple[list[str], list[str], Any]:
        from rmq_style import AsyncAdmin

        async with AsyncAdmin(url) as admin:
            await admin.create_topic(topic, queues=QUEUES)
        client = open_client(url)
        for q, value in enumerate(mine):
            key = Keys().queue(topic, q).broadcast(group)
            if others:
                await client.hset(key, mapping=others)  # type: ignore[arg-type]
            if value is not None:
                await client.hset(key, "h", value)
        await client.aclose()
        seen: list[str] = []
        settings = fast_settings(message_model="broadcasting", instance_name="h")
        consumer = PushConsumer(url, group, settings)

        async def on(msg: ReceivedMessage) -> None:
            seen.append(msg.msg_id)

        consumer.subscribe(topic, "*", on)
        async with consumer, AsyncProducer(url) as producer:
            sent = [(await producer.send(Message(topic, {"n": i}))).msg_id for i in range(6)]
            await until(lambda: len(seen) >= len(sent), what="every message handled")
            tasks = [*consumer._loops.values(), *(consumer._ctx.pool._workers if consumer._ctx.pool else [])]
            assert not [t for t in tasks if t.done()]
            assert consumer._ctx.tree.failure is None
        async with AsyncAdmin(url) as admin:
            rows = await admin.progress(group, topic)
        return sent, seen, rows

    with capture_logs() as logs:
        sent, seen, rows = asyncio.run(main())
    assert sorted(seen) == sorted(sent)
    assert [e for e in logs if e["event"] in FAILURES] == []
    for row in rows:
        (me,) = [m for m in row.members if m.instance == "h"]
        assert me.lag == 0 and me.retrying == 0
        assert len(row.members) == 1 + len(others) - (b"h" in others)
        assert all(m.lag >= 0 for m in row.members)
    listed = json.loads(cli("progress", "--group", group, "--url", url, "--json"))
    assert sum(len(r["members"]) for r in listed) == sum(len(r.members) for r in rows)
    cli("progress", "--group", group, "--url", url)


@pytest.mark.parametrize("backend", ["real", "fake"])
@settings(
    max_examples=4,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(items=ITEMS, filtered=st.booleans())
def test_hostile_entries_reach_a_simple_consumer_never(
    backends: dict[str, str], backend: str, items: list[Any], filtered: bool
) -> None:
    """Good messages are received once each; rejected entries are in the DLQ with the field; none pending."""
    url = backends[backend]
    n = next(_names)
    topic, group = f"hostile{n}", f"g{n}"
    tags = "a" if filtered else None
    with capture_logs():
        good, raw = asyncio.run(_write(url, topic, items))
    verdicts = {where: rejected_field(fields) for where, fields in raw.items()}
    wanted = {t for t in TAGS if tags is None or t == tags}
    accepted = [
        w
        for w, f in raw.items()
        if verdicts[w] is None and (tags is None or f.get(b"t", b"").decode() in wanted)
    ]
    expected = sum(1 for t in good.values() if t in wanted) + len(accepted)
    with capture_logs() as logs:
        got = _simple_run(url, topic, group, tags, expected)
    assert [e for e in logs if e["log_level"] == "error"] == []
    assert Counter(m for _, _, m in got if m in good) == Counter(m for m, t in good.items() if t in wanted)
    assert Counter((q, off) for q, off, m in got if m not in good) == Counter(accepted)
    pending, dead = asyncio.run(_left(url, topic, group, "simple"))
    assert pending == 0
    bad = sorted((where, v) for where, v in verdicts.items() if v is not None)
    assert sorted(((int(d[b"queue"]), d[b"offset"].decode()), _field_of(d[b"reason"])) for d in dead) == bad


HANDLE_TEXTS = st.one_of(
    st.text(max_size=80),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    st.builds(
        lambda topic, queue, source, ms, seq, token: f"1:{topic}:{queue}:{source}:{ms}-{seq}:{token}",
        st.sampled_from(["hsimple", "other", "", "a:b", "{x}", "j" * 129]),
        st.sampled_from(["0", "1", "7", "-1", "01", "999999", "1000000", "x"]),
        st.sampled_from(["s", "r", "x", ""]),
        st.sampled_from(["0", "1", "18446744073709551615", "18446744073709551616", "9" * 21, "-1"]),
        st.sampled_from(["0", "5", "18446744073709551616"]),
        st.one_of(st.text("0123456789abcdefABCDEF", max_size=20), st.just("0" * 18)),
    ),
)


@pytest.mark.parametrize("backend", ["real", "fake"])
@settings(
    max_examples=60,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    texts=st.lists(HANDLE_TEXTS, min_size=1, max_size=4),
    lease_junk=st.lists(st.binary(max_size=30), max_size=4),
)
def test_hostile_receipt_handles_and_lease_records(
    simple_queue: dict[str, Any], backend: str, texts: list[str], lease_junk: list[bytes]
) -> None:
    """Any handle text is refused as invalid or stale (nothing written); junk lease records never break
    a receive, and the message in flight stays acknowledgeable by its own handle only."""
    from rmq_style import InvalidReceiptHandleError, ReceiptHandle, StaleReceiptHandleError

    consumer, client, qk, url = simple_queue[backend]
    (message,) = consumer.receive(1, 30)
    for junk in lease_junk:  # ended leases that name nothing (or something else), tokens of nothing
        client.zadd(qk.invisible("w"), {junk: 0})
        client.hset(qk.receipts("w"), junk or b"x", junk)
    for text in texts:
        try:
            handle = ReceiptHandle.parse(text)
        except InvalidReceiptHandleError:
            with pytest.raises(InvalidReceiptHandleError):
                consumer.ack(text)
            with pytest.raises(InvalidReceiptHandleError):
                consumer.change_invisible_duration(text, 30)
            continue
        assert str(handle) == text
        if text == message.receipt_handle:
            continue
        with pytest.raises(StaleReceiptHandleError):
            consumer.change_invisible_duration(text, 30)
        with pytest.raises(StaleReceiptHandleError):
            consumer.ack(text)
    with capture_logs() as logs:
        assert consumer.receive(32, 30) == []  # the junk is forgotten; the message is still in flight
    assert [e for e in logs if e["log_level"] == "error"] == []
    consumer.ack(message)
    assert client.zcard(qk.invisible("w")) == 0 and client.xpending(qk.stream, "w")["pending"] == 0
    with Producer(url) as producer:  # the next example's message in flight
        producer.send(Message("hsimple", "next"))


@pytest.fixture(scope="module")
def simple_queue(backends: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Per backend: a simple consumer of a one-queue topic with one message waiting, its client, keys."""
    import redis as redis_sync

    from rmq_style import Admin, SimpleConsumer
    from rmq_style._connection import memory_server

    out: dict[str, Any] = {}
    for backend, url in backends.items():
        with Admin(url) as admin:
            admin.create_topic("hsimple", queues=1)
        with Producer(url) as producer:
            producer.send(Message("hsimple", "first"))
        if url.startswith("memory://"):
            from fakeredis import FakeRedis

            client = FakeRedis(server=memory_server(url.removeprefix("memory://")))
        else:
            client = redis_sync.Redis.from_url(url)
        consumer = SimpleConsumer(url, "w", {"hsimple": "*"}, consume_from="first", await_duration=0)
        out[backend] = (consumer, client, Keys().queue("hsimple", 0), url)
    yield out
    for consumer, client, _, _ in out.values():
        consumer.close()
        client.close()


def test_a_simple_consumers_queue_with_a_wrong_typed_key_does_not_stop_the_others(
    backends: dict[str, str],
) -> None:
    from rmq_style import Admin, SimpleConsumer

    for url in backends.values():
        with Admin(url) as admin:
            admin.create_topic("hwrong", queues=2)
        with Producer(url) as producer:
            for q in (0, 1):
                producer.send(Message("hwrong", f"q{q}"), queue_id=q)

        async def spoil(url: str = url) -> None:
            client = open_client(url)
            await client.set(Keys().queue("hwrong", 0).invisible("w"), "not a sorted set")
            await client.aclose()

        asyncio.run(spoil())
        with (
            capture_logs() as logs,
            SimpleConsumer(url, "w", {"hwrong": "*"}, consume_from="first") as consumer,
        ):
            got = consumer.receive(32, 30)
        assert [m.value() for m in got] == ["q1"]
        assert [e["topic"] for e in logs if e["event"] == "simple.queue_failed"] == ["hwrong"]


# -- trace records (docs/storage.md "Message trace"): the reader shows every one, marked if broken --

TRACE_FIELDS = (b"i", b"e", b"g", b"h", b"a", b"s", b"d", b"o", b"x")
TRACE_ID = "018c0000000000000000000000000001"


def trace_problem(f: dict[bytes, bytes]) -> bool:
    """Whether a record of TRACE_ID has a field the reader cannot decode (restated from the doc)."""
    for name in TRACE_FIELDS:
        if f.get(name) and not _utf8(f[name]):
            return True
    if any(f.get(n) and not re.fullmatch(rb"[0-9]{1,15}", f[n]) for n in (b"a", b"s", b"d")):
        return True
    return bool(f.get(b"x")) and not _json_of_strings(f[b"x"])


@st.composite
def hostile_trace_records(draw: st.DrawFn) -> dict[bytes, bytes]:
    event = draw(st.sampled_from([b"pub", b"sub", b"tx", b"replay", b"??"]))
    fields = {b"i": TRACE_ID.encode(), b"e": event, b"g": b"g", b"h": b"host", b"a": b"0",
              b"s": b"1700000000000", b"d": b"3", b"o": b"ok", b"x": b""}  # fmt: skip
    for name in draw(st.lists(st.sampled_from(TRACE_FIELDS[1:]), unique=True, max_size=3)):
        value = draw(BAD_VALUES)
        if value is None:
            del fields[name]
        else:
            fields[name] = value
    extras = draw(st.dictionaries(st.binary(min_size=1, max_size=3), st.binary(max_size=6), max_size=2))
    fields.update({k: v for k, v in extras.items() if k not in TRACE_FIELDS})  # unknown fields: ignored
    return fields


@pytest.mark.parametrize("backend", ["real", "fake"])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(hostile_trace_records(), min_size=1, max_size=6))
def test_hostile_trace_records(
    backends: dict[str, str], backend: str, records: list[dict[bytes, bytes]]
) -> None:
    from rmq_style import Admin

    url = backends[backend]
    topic = f"hostiletrace{next(_names)}"

    async def write() -> None:
        client = open_client(url)
        for n, fields in enumerate(records):
            await client.xadd(Keys().queue(topic, n % QUEUES).trace, fields)  # type: ignore[arg-type]
        await client.aclose()

    with Admin(url) as admin:
        admin.create_topic(topic, queues=QUEUES)
    asyncio.run(write())
    with Admin(url) as admin:
        [trace] = admin.trace(TRACE_ID, topic)
    assert len(trace.steps) == len(records)  # every record shown, none dropped
    assert sorted(s.problem is not None for s in trace.steps) == sorted(map(trace_problem, records))
    shown = json.loads(cli("trace", TRACE_ID, "--topic", topic, "--url", url, "--json"))
    assert len(shown[0]["steps"]) == len(records)
    text = cli("trace", TRACE_ID, "--topic", topic, "--url", url)  # recorded text printed as it is
    assert text.count("<undecodable record") == sum(map(trace_problem, records))


# -- idempotence marks (docs/idempotence.md): hostile values never stick -------------------------

MARKS = st.one_of(
    st.sampled_from(["none", "consumed", "live", "forever", "far", "hash", "list"]).map(lambda k: (k, b"")),
    st.tuples(
        st.just("bytes"),
        st.binary(max_size=12).filter(lambda v: v != b"consumed" and not v.startswith(b"consuming:")),
    ),
)


async def _write_mark(client: Any, mark: str, kind: str, value: bytes) -> None:
    if kind == "consumed":
        await client.set(mark, b"consumed")  # without an expiry: a duplicate all the same
    elif kind == "live":  # another member's claim, lapsing soon: the message waits for it
        await client.set(mark, b"consuming:other", px=100)
    elif kind == "forever":
        await client.set(mark, b"consuming:other")  # a claim that would never lapse
    elif kind == "far":
        await client.set(mark, b"consuming:other", px=36_000_000)  # 10 h: more than ten leases
    elif kind == "hash":
        await client.hset(mark, "f", "v")
    elif kind == "list":
        await client.rpush(mark, "v")
    elif kind == "bytes":
        await client.set(mark, value)


@pytest.mark.parametrize("kind", ["concurrent", "orderly", "batch"])
@pytest.mark.parametrize("backend", ["real", "fake"])
@settings(
    max_examples=3,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(marks=st.lists(MARKS, min_size=1, max_size=6))
@example(
    marks=[(k, b"") for k in ("none", "consumed", "live", "forever", "far", "hash", "list")]
    + [("bytes", b"\xff")]
)
def test_hostile_idempotence_marks_never_stick(
    backends: dict[str, str], backend: str, kind: str, marks: list[tuple[str, bytes]]
) -> None:
    """Whatever a mark holds, its message is handled once (a "consumed" one: acked as a duplicate),
    nothing is left pending or dead-lettered, and every mark ends "consumed"."""
    from rmq_style import AsyncAdmin, Idempotent
    from rmq_style.push.idempotence import mark_key

    url = backends[backend]
    n = next(_names)
    topic, group = f"hostile-idem{n}", f"g{n}"

    async def main() -> tuple[list[str], Any]:
        async with AsyncAdmin(url) as admin:
            await admin.create_topic(topic, queues=QUEUES)
        client = open_client(url)
        for i, (mark_kind, value) in enumerate(marks):
            await _write_mark(client, mark_key("rmq", topic, group, f"k{i}"), mark_kind, value)
        async with AsyncProducer(url) as producer:
            for i in range(len(marks)):
                await producer.send(Message(topic, {"i": i}, keys=(f"k{i}",)))
        handled: list[str] = []

        def one(msg: ReceivedMessage) -> None:
            handled.append(msg.keys[0])

        def many(msgs: list[ReceivedMessage]) -> None:
            handled.extend(m.keys[0] for m in msgs)

        batch = 3 if kind == "batch" else 1
        consumer = PushConsumer(
            url, group, fast_settings(consume_message_batch_max_size=batch, suspend_current_queue_time_ms=10)
        )
        consumer.subscribe(
            topic, None, many if batch > 1 else one, orderly=kind == "orderly",
            idempotent=Idempotent("keys", lease_ms=1000),  # "far" is more than ten leases
        )  # fmt: skip
        expected = len(marks)
        async with consumer:
            await until(lambda: len(handled) + consumer.stats.duplicates >= expected, what="every key")
            await until(lambda: consumer.in_flight == 0, what="every entry settled")
            assert not [t for t in consumer._loops.values() if t.done()]
        for i in range(len(marks)):
            assert await client.get(mark_key("rmq", topic, group, f"k{i}")) == b"consumed"
        await client.aclose()
        return handled, consumer.stats

    with capture_logs() as logs:
        handled, stats = asyncio.run(main())
    assert [e for e in logs if e["event"] in FAILURES or e.get("log_level") == "error"] == []
    consumed = [f"k{i}" for i, (k, _) in enumerate(marks) if k == "consumed"]
    assert sorted(handled) == sorted(f"k{i}" for i in range(len(marks)) if f"k{i}" not in consumed)
    assert stats.duplicates == len(consumed) and stats.dead_lettered == 0
    pending, dead = asyncio.run(_left(url, topic, group, kind))
    assert pending == 0 and dead == []


# -- the half store of transactional messages (docs/storage.md): a bad half never sticks ----------

COUNTS = st.sampled_from([b"x", b"-1", b"1.5", b"", b"9" * 20, b"0x10"])
ENTRY = st.lists(st.binary(max_size=8), min_size=7, max_size=7)
HALVES = st.one_of(
    st.tuples(st.just("garbage"), st.binary(max_size=24)),
    st.tuples(st.just("fields"), st.integers(0, 20).filter(lambda n: n != 13).map(lambda n: [b"h"] * n)),
    st.tuples(st.just("state"), st.sampled_from([b"z", b"", b"d", b"hh"]).map(lambda s: [s] + [b"0"] * 12)),
    st.tuples(st.just("count"), st.tuples(st.integers(1, 3), COUNTS).map(lambda p: p)),
    st.tuples(st.just("entry"), ENTRY),  # a well-formed record of hostile entry fields: committed
)
MSG_IDS = st.one_of(st.text(min_size=1, max_size=8).map(str.encode), st.binary(min_size=1, max_size=8))


def _half_value(kind: str, what: Any) -> bytes:
    from rmq_style._wire import pack_fields

    if kind == "garbage":
        return bytes(what)
    if kind in ("fields", "state"):
        return pack_fields(what)
    if kind == "count":
        rec = [b"h", b"0", b"0", b"1700000000000", b"", b"0"] + [b""] * 7
        rec[what[0]] = what[1]
        return pack_fields(rec)
    return pack_fields([b"h", b"0", b"0", b"1700000000000", b"", b"0", *what])


@pytest.mark.parametrize("backend", ["real", "fake"])
@settings(
    max_examples=4,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(halves=st.dictionaries(MSG_IDS, HALVES, min_size=1, max_size=5))
@example(
    halves={b"g": ("garbage", b"-5:ab"), b"\xff": ("garbage", b"3:h"), b"f": ("fields", [b"h"] * 12),
            b"s": ("state", [b"z"] + [b"0"] * 12), b"c": ("count", (2, b"x")), b"e": ("entry", [b"\xff"] * 7),
            b"h": ("count", (3, b"0x10"))}
)  # fmt: skip
def test_hostile_half_records_are_discarded_with_a_reason_or_resolved(
    backends: dict[str, str], backend: str, halves: dict[bytes, tuple[str, Any]]
) -> None:
    """Records of the half store that this store did not write: the checks never fail on them;
    each ends resolved (a well-formed one, by its check) or discarded with property bad_half;
    the operators' listings never fail."""
    from rmq_style import AsyncAdmin, AsyncTransactionProducer, TransactionState

    url = backends[backend]
    n = next(_names)
    topic, group = f"hostile-tx{n}", f"ptx{n}"

    async def main() -> None:
        async with AsyncAdmin(url) as admin:
            await admin.create_topic(topic, queues=1)
            producer = AsyncTransactionProducer(
                url, group, lambda m: TransactionState.COMMIT, transaction_timeout_ms=0,
                check_interval_ms=1, check_max=2, check_in_background=False,
            )  # fmt: skip
            tx = await producer.begin()
            await tx.send(Message(topic, {"n": 1}))  # the group knows the topic now
            keys = Keys().queue(topic, 0)
            client = open_client(url)
            for msg_id, (kind, what) in halves.items():
                await client.hset(keys.half(group), msg_id, _half_value(kind, what))  # type: ignore[arg-type]
                await client.zadd(keys.half_checks(group), {msg_id: 0})
            for _ in range(4):  # one look more than check_max: every pending half decided
                await admin.pending_transactions(group)  # the listings never fail
                await admin.discarded_transactions(group)
                await producer.check_once()
                due = await client.zrange(keys.half_checks(group), 0, -1)
                if due:
                    await client.zadd(keys.half_checks(group), dict.fromkeys(due, 0), xx=True)  # leases over
            left = await client.hgetall(keys.half(group))
            assert [m for m, v in left.items() if v.startswith(b"1:h")] == []  # nothing pending sticks
            dead = await client.hgetall(keys.tx_discarded(group))
            committed = {fields[b"i"] for _, fields in await client.xrange(keys.stream)}
            for msg_id, (kind, what) in halves.items():
                if kind == "entry" and msg_id not in dead:
                    assert msg_id in committed  # well-formed: committed by its check
                elif msg_id in dead:
                    if kind != "entry":
                        assert b"bad_half" in dead[msg_id]
                else:  # a garbage value that reads as a resolution: forgotten
                    assert kind == "garbage" and bytes(what)[:3] in (b"1:c", b"1:r"), (msg_id, kind)
            listed = await admin.discarded_transactions(group)
            for record in listed:
                if halves.get(record.msg_id.encode(), ("entry",))[0] != "entry":
                    assert "bad_half" in record.message.properties
            await client.aclose()
            await producer.close()

    with capture_logs() as logs:
        asyncio.run(main())
    assert [e for e in logs if e["event"] in FAILURES] == []


@given(st.dictionaries(st.binary(max_size=8), st.binary(max_size=20), max_size=MAX_KEY_HELD + 20))
@example({b"r": b"\xb2", b"\xff": b"-1", b"1-0": b"99999999999999999"})
def test_hostile_key_held_records_are_shown(held: dict[bytes, bytes]) -> None:
    """Whatever a kheld hash holds, progress (CLI, console) shows its fields, at most MAX_KEY_HELD a queue;
    a count that is not a decimal number is shown as unknown, never a crash."""
    rows = parse_key_held(held)
    assert len(rows) == min(len(held), MAX_KEY_HELD)
    assert all(r.attempts is None or 0 <= r.attempts < 10**15 for r in rows)
    # an orderly queue's held record (same keys as written, any values): shown, never a crash
    values = list(held.values())[:3]
    names = (b"attempts", b"since", b"owner")[: len(values)]
    record = {b"offset": b"1-0", **dict(zip(names, values, strict=True))}
    shown = parse_held(MessageQueue("t", 0), record, None)
    assert shown is not None and shown.attempts >= 0 and shown.since_ms >= 0
