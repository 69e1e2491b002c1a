"""Hostile entries, fuzzed: raw XADDs of arbitrary fields among good messages, on both backends.

For concurrent, orderly, key-ordered and batch listeners, with and without a tag filter:
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
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs
from typer.testing import CliRunner

from rmq_style import AsyncProducer, Keys, Message, PushConsumer, ReceivedMessage
from rmq_style._async._io import open_client
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
                     b"{}", b'{"a":1}', b'{"a":"b"}', b"[[[[", b"null", b"a" * 129, b"z" * (MAX_SIZE + 1)]),
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
    settings = fast_settings(
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
        tasks = [*consumer._tasks, *(consumer._ctx.pool._workers if consumer._ctx.pool else [])]
        if consumer._ctx.orderly is not None:
            tasks += [q.task for q in consumer._ctx.orderly.queues.values() if q.task is not None]
        assert not [t for t in tasks if t.done()]  # no task of the runtime died
    gc.collect()  # a task that died reports "Task exception was never retrieved" when collected
    assert errors == []
    return handled, consumer.stats


async def _left(url: str, topic: str, group: str) -> tuple[int, list[dict[bytes, bytes]]]:
    """Entries pending in the group (queue and retry streams), and the dead letters."""
    client = open_client(url)
    pending, dead = 0, []
    for q in range(QUEUES):
        keys = Keys().queue(topic, q)
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
@pytest.mark.parametrize("kind", ["concurrent", "orderly", "key", "batch"])
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
    pending, dead = asyncio.run(_left(url, topic, group))
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
