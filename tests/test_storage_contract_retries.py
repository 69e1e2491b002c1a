"""docs/storage.md, continued: topic creation, properties, sharding keys, the fallback's give-back,
and retries and dead letters, each followed by a foreign client that knows only the document.
"""

from __future__ import annotations

import json
import threading
import zlib
from typing import Any

import pytest
import redis

from rmq_style import Admin, App, DeadLetter, Message, Producer, ReceivedMessage, TopicExistsError, UsageError
from rmq_style._sync._io import open_client
from rmq_style.testing import AppTester
from tests.test_storage_contract import (
    DOC,
    eval_send,
    expanded,
    foreign_fields,
    give_back,
    multi_send,
    queue_keys,
)

ENTRY = [b"i", b"q", b"r", b"b", b"t", b"k", b"p", b"c", b"d"]
DEAD_LETTER = [*ENTRY, b"topic", b"queue", b"offset", b"group", b"reason", b"dead_at"]


def pack(values: list[bytes]) -> bytes:
    """The document's `<len>:<bytes>` packing."""
    return b"".join(str(len(v)).encode() + b":" + v for v in values)


def unpack(blob: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(blob):
        colon = blob.index(b":", pos)
        end = colon + 1 + int(blob[pos:colon])
        out.append(blob[colon + 1 : end])
        pos = end
    return out


def retry_section() -> str:
    return DOC.read_text().split("## Retries and dead letters\n", 1)[1].split("\n## ", 1)[0]


def dead_letter_fields_of_the_doc() -> list[bytes]:
    """The field column of the dead-letter table, in order."""
    fields: list[bytes] = []
    for line in retry_section().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            fields += [f.encode() for f in cells[0].strip("`").split()]
    return fields


def server_ms(r: Any) -> int:
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


def creation_steps() -> list[str]:
    """The commands of the document's topic creation block, in order."""
    block = DOC.read_text().split("**Creating a topic**", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    return [line.split()[1] for line in block.splitlines()]


def test_a_topic_created_as_the_document_says_is_a_topic(url: str) -> None:
    assert creation_steps() == ["HSETNX", "HSET", "SET", "SADD"]  # the order run below
    r = open_client(url)
    meta = "rmq:topic:{orders}"
    assert r.hsetnx(meta, "queues", 2) == 1
    r.hset(meta, mapping={"trim": "minid", "trim_value": 259200000, "layout": 1, "created_ms": 1})
    for i in range(2):
        r.set(f"rmq:{{orders:{i}}}:seq", 0, nx=True)
    r.sadd("rmq:topics", "orders")
    assert r.hsetnx(meta, "queues", 5) == 0  # the guard: a second creator stops here
    with Admin(url) as admin, Producer(url) as producer:
        with pytest.raises(TopicExistsError):
            admin.create_topic("orders", queues=3)
        assert [t.topic for t in admin.list_topics()] == ["orders"]
        assert admin.describe_topic("orders").queue_count == 2
        sent = producer.send(Message("orders", b"x"), queue_id=1)
        assert (sent.queue.queue_id, sent.queue_offset) == (1, 0)
        admin.create_topic("other", queues=1)
    assert sorted(r.hgetall("rmq:topic:{other}")) == [
        b"created_ms",
        b"layout",
        b"queues",
        b"trim",
        b"trim_value",
    ]


def test_a_topic_between_the_guard_and_its_counters_refuses_writes(url: str) -> None:
    r = open_client(url)
    r.hsetnx("rmq:topic:{orders}", "queues", 2)  # step 1 only: defaults apply, queues do not exist yet
    with Admin(url) as admin:
        route = admin.topic("orders")
    assert (route.queue_count, route.retention.mode, route.retention.max_age.total_seconds()) == (
        2,
        "minid",
        259200,
    )
    msg_id, values = foreign_fields(b"x", "b")
    with pytest.raises(Exception, match="NOTOPIC"):
        r.eval(expanded("send"), 3, *queue_keys("orders", 0), "minid", 259200000, 1, msg_id, *values)
    assert not r.exists("rmq:{orders:0}:s")


def test_properties_are_written_as_documented_and_read_back_from_any_json(url: str) -> None:
    props = {"src": "go", "note": "café 🎉", "q": 'a"b\nc'}
    written = b'{"src":"go","note":"caf\\u00e9 \\ud83c\\udf89","q":"a\\"b\\nc"}'
    text = DOC.read_text()
    assert '`{"src": "go", "note": "café 🎉", "q": "a\\"b\\nc"}` is written as' in text
    assert f"`{written.decode()}`" in text
    with Admin(url) as admin:
        admin.create_topic("orders", queues=1)
    with Producer(url) as producer:
        producer.send(Message("orders", b"x", properties=props))
    r = open_client(url)
    msg_id, values = foreign_fields(b"y", "b")
    values[4] = json.dumps(props, ensure_ascii=False).encode()  # UTF-8 unescaped, with spaces
    eval_send(r, "orders", 0, [(msg_id, values)])
    ours, _ = r.xrange("rmq:{orders:0}:s")
    assert ours[1][b"p"] == written
    with Admin(url) as admin:
        found = admin.find_messages("orders", msg_id=msg_id)
    assert found[0].properties == props


def test_sharding_keys_hash_as_documented_and_other_types_are_refused(url: str) -> None:
    with Admin(url) as admin:
        admin.create_topic("orders", queues=8)
    with Producer(url) as producer:
        by_int = producer.send(Message("orders", b"a"), sharding_key=-42)
        by_text = producer.send(Message("orders", b"b"), sharding_key="-42")
        by_bytes = producer.send(Message("orders", b"c"), sharding_key=bytearray(b"user-42"))
        for bad in (True, 1.5, object()):
            with pytest.raises(UsageError, match="a sharding key is a str, bytes or int"):
                producer.send(Message("orders", b"d"), sharding_key=bad)  # type: ignore[arg-type]
    assert by_int.queue == by_text.queue and by_int.queue.queue_id == zlib.crc32(b"-42") % 8
    assert by_bytes.queue.queue_id == 3
    with Admin(url) as admin:
        assert (
            sum(q.max_queue_offset for q in admin.describe_topic("orders").queues) == 3
        )  # nothing else written


@pytest.mark.real_only
def test_the_fallback_gives_the_offset_back_when_exec_refuses_the_xadd(real_url: str) -> None:
    """The one case the document leaves: the writer's ACL changes between MULTI and EXEC."""
    with Admin(real_url) as admin:
        admin.create_topic("orders", queues=1)
    r = open_client(real_url)
    multi_send(r, "orders", 0, *foreign_fields(b"m0", "b"))
    r.execute_command("ACL", "SETUSER", "writer", "on", ">pw", "~*", "+@all")
    writer = redis.Redis.from_url(real_url, username="writer", password="pw", single_connection_client=True)
    stream, seq_key, _ = queue_keys("orders", 0)
    msg_id, values = foreign_fields(b"m1", "b")
    try:
        writer.execute_command("WATCH", seq_key, stream)
        q = int(writer.get(seq_key))
        assert writer.type(stream) == b"stream"
        writer.execute_command("MULTI")
        writer.execute_command("INCR", seq_key)
        fields = [x for pair in zip(ENTRY, [msg_id.encode(), b"%d" % q, *values], strict=True) for x in pair]
        writer.execute_command("XADD", stream, "*", *fields)
        r.execute_command("ACL", "SETUSER", "writer", "-xadd")
        counter, refused = writer.execute_command("EXEC")
    finally:
        writer.close()
        r.execute_command("ACL", "DELUSER", "writer")
    assert (q, counter, type(refused).__name__) == (1, 2, "NoPermissionError")
    assert give_back(r, seq_key, q) is True
    multi_send(r, "orders", 0, *foreign_fields(b"m2", "b"))
    assert eval_send(r, "orders", 0, [foreign_fields(b"m3", "b")])[0] == 2
    assert [int(f[b"q"]) for _, f in r.xrange(stream)] == [0, 1, 2]  # no gap
    assert [f[b"d"] for _, f in r.xrange(stream)] == [b"m0", b"m2", b"m3"]


# --- retries and dead letters ----------------------------------------------------------------


def test_a_foreign_consumer_retries_dead_letters_and_gets_a_replay(url: str) -> None:
    """A foreign member of group G runs the document's retry cycle; rmq_style's Admin sees each step."""
    with Admin(url) as admin:
        admin.create_topic("orders", queues=2)
    r = open_client(url)
    msg_id, values = foreign_fields(b'{"n":1}', "j", tag="created", keys=("o-1",), props={"src": "go"})
    (_, entry_id) = eval_send(r, "orders", 1, [(msg_id, values)])
    tag = "rmq:{orders:1}"
    stream, retry, body, rs, dlq = (
        f"{tag}:s",
        f"{tag}:retry:G",
        f"{tag}:retrymsg:G",
        f"{tag}:rs:G",
        f"{tag}:dlq:G",
    )
    r.xgroup_create(stream, "G", "0")
    r.xgroup_create(rs, "G", "0", mkstream=True)

    def read(source: str) -> tuple[bytes, dict[bytes, bytes]]:
        ((_, [(eid, fields)]),) = r.xreadgroup("G", "foreign", {source: ">"}, count=10)
        return eid, fields

    eid, fields = read(stream)
    assert eid == entry_id
    record = [fields[f] for f in ENTRY[1:]] + [eid]  # q r b t k p c d o
    record[1] = b"1"  # r + 1
    before = server_ms(r)
    due = int(r.eval(expanded("retry"), 3, stream, retry, body, "G", eid, "0", msg_id, 0, pack(record)))
    assert before <= due <= server_ms(r)
    assert (r.zscore(retry, msg_id), r.hget(body, msg_id)) == (due, pack(record))
    assert r.xpending(stream, "G")["pending"] == 0
    with Admin(url) as admin:
        assert admin.progress("G", "orders")[1].retrying == 1

    assert r.eval(expanded("release_retries"), 3, retry, body, rs, 10) == [1, -1]
    assert not r.exists(retry) and not r.exists(body)
    retried_id, retried = read(rs)
    assert "`rmq:{T:i}:rs:G`: fields `i q r b t k p c d o`, in that order" in " ".join(
        retry_section().split()
    )
    assert list(retried) == [*ENTRY, b"o"]
    assert (retried[b"i"], retried[b"q"], retried[b"r"], retried[b"o"]) == (
        msg_id.encode(),
        b"0",
        b"1",
        entry_id,
    )

    record = [retried[f] for f in ENTRY[1:]] + [retried[b"o"]]  # r as read: the last delivery's
    args = ["G", retried_id, "1", msg_id, pack(record), "orders", 1, "ValueError: foreign failure"]
    dead_id = r.eval(expanded("dead_letter"), 2, rs, dlq, *args)
    assert r.xlen(rs) == 0  # a retry stream entry is deleted once settled
    with Admin(url) as admin:
        (letter,) = admin.dead_letters("G", "orders")
        report = admin.progress("G", "orders")[1]
    assert (report.retrying, report.dead_letters) == (0, 1)
    assert letter.dlq_id == dead_id.decode() and letter.origin_offset == entry_id.decode()
    assert (letter.message.msg_id, letter.message.reconsume_times, letter.reason) == (
        msg_id,
        1,
        "ValueError: foreign failure",
    )
    assert (letter.message.properties, letter.message.keys, letter.message.value()) == (
        {"src": "go"},
        ("o-1",),
        {"n": 1},
    )

    with Admin(url) as admin:
        assert admin.replay_dead_letters("G", [letter]) == 1
    replay_id, replayed = read(rs)
    assert (replayed[b"i"], replayed[b"r"], replayed[b"o"]) == (msg_id.encode(), b"0", entry_id)
    assert r.xlen(dlq) == 0
    r.xack(rs, "G", replay_id)  # success on a retry stream entry: XACK, then XDEL
    r.xdel(rs, replay_id)
    with Admin(url) as admin:
        report = admin.progress("G", "orders")[1]
    assert (report.retrying, report.dead_letters, report.progress.pending) == (0, 0, 0)


def test_a_foreign_reader_reads_rmq_style_retries_and_dead_letters(url: str) -> None:
    """rmq_style's push consumer fails; a foreign client reads the retry record and the dead letter."""
    app = App(url)
    failed = threading.Event()

    @app.subscribe("orders", group="holder", max_reconsume_times=3)
    def hold(msg: ReceivedMessage) -> None:
        failed.set()
        raise RuntimeError("try later")

    @app.subscribe("orders", group="dropper")
    def drop(msg: ReceivedMessage) -> None:
        raise DeadLetter("never")

    with Admin(url) as admin:
        admin.create_topic("orders", queues=1)
    with Producer(url) as producer:
        sent = producer.send(Message("orders", {"n": 1}, tag="created", keys=["o-1"], properties={"a": "b"}))
    r = open_client(url)
    tag = "rmq:{orders:0}"
    with AppTester(app, retry_delays_ms=(3_600_000,)):
        assert failed.wait(10)
        deadline = server_ms(r) + 10_000
        while not (r.zcard(f"{tag}:retry:holder") and r.xlen(f"{tag}:dlq:dropper")):
            assert server_ms(r) < deadline, "no retry record or dead letter"
            threading.Event().wait(0.01)  # bounded poll of Redis state
    entry_id, entry = r.xrange(f"{tag}:s")[0]
    ((held_id, due),) = r.zrange(f"{tag}:retry:holder", 0, -1, withscores=True)
    assert held_id.decode() == sent.msg_id
    assert due - server_ms(r) > 3_000_000  # held for the schedule's first delay
    record = unpack(r.hget(f"{tag}:retrymsg:holder", sent.msg_id))
    expected = [entry[f] for f in ENTRY[1:]] + [entry_id]
    expected[1] = b"1"
    assert record == expected  # q r b t k p c d o, r incremented

    ((_, letter),) = r.xrange(f"{tag}:dlq:dropper")
    assert list(letter) == DEAD_LETTER == dead_letter_fields_of_the_doc()
    assert [letter[f] for f in ENTRY] == [entry[f] for f in ENTRY]  # r: the delivery's, 0
    assert (letter[b"topic"], letter[b"queue"], letter[b"offset"], letter[b"group"]) == (
        b"orders",
        b"0",
        entry_id,
        b"dropper",
    )
    assert letter[b"reason"].decode().startswith("DeadLetter: never [")
    assert int(entry_id.split(b"-")[0]) <= int(letter[b"dead_at"]) <= server_ms(r)
