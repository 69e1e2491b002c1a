"""docs/storage.md is a contract: a foreign producer following it is read back identically.

The "foreign producer" here uses only raw Redis commands and what the document
says: it expands the Lua includes itself, builds the entry fields itself and
computes the sharding hash itself. rmq_style must then read exactly that.
"""

from __future__ import annotations

import json
import os
import re
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ResponseError, WatchError

from rmq_style import Admin, Keys, Message, Producer
from rmq_style._message import decode_entry, pack_fields
from rmq_style._sync._io import open_client

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "storage.md"
LUA = ROOT / "rmq_style" / "lua"
SAMPLE = {"T": "orders", "G": "billing", "M": "host-w0"}
SAMPLE_QUEUE = 3


# --- what the document says -------------------------------------------------------------


def key_table() -> list[tuple[str, str, str]]:
    """(sample key, Redis type, accessor) rows of the "Keys" table."""
    text = DOC.read_text()
    section = text.split("## Keys", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`rmq:"):
            rows.append((cells[0].strip("`"), cells[1], cells[2].strip("`")))
    return rows


def expanded(name: str) -> str:
    """A script with its includes expanded, as the document describes (not via rmq_style)."""
    source = (LUA / f"{name}.lua").read_text()
    return re.sub(
        r"^--@include (\w+)$",
        lambda m: (LUA / "includes" / f"{m.group(1)}.lua").read_text(),
        source,
        flags=re.MULTILINE,
    )


def foreign_fields(
    body: bytes,
    content_type: str,
    tag: str = "",
    keys: tuple[str, ...] = (),
    props: dict[str, str] | None = None,
) -> tuple[str, list[bytes]]:
    """msg id and the seven values r b t k p c d, built from the document's table."""
    born = int(time.time() * 1000)
    msg_id = f"{born:012x}{os.urandom(10).hex()}"
    p = json.dumps(props, separators=(",", ":")).encode() if props else b""
    values = [b"0", str(born).encode(), tag.encode(), " ".join(keys).encode(), p, content_type.encode(), body]
    return msg_id, values


def queue_keys(topic: str, queue: int) -> tuple[str, str, str]:
    tag = f"rmq:{{{topic}:{queue}}}"
    return f"{tag}:s", f"{tag}:seq", f"{tag}:trimmed"


def foreign_meta(r: Any, topic: str) -> tuple[int, str, str]:
    meta = r.hgetall(f"rmq:topic:{{{topic}}}")
    return int(meta[b"queues"]), meta[b"trim"].decode(), meta[b"trim_value"].decode()


def eval_send(r: Any, topic: str, queue: int, messages: list[tuple[str, list[bytes]]]) -> list[Any]:
    _, trim, trim_value = foreign_meta(r, topic)
    stream, seq, trimmed = queue_keys(topic, queue)
    args: list[Any] = [trim, trim_value, len(messages)]
    for msg_id, values in messages:
        args += [msg_id, *values]
    return list(r.eval(expanded("send"), 3, stream, seq, trimmed, *args))


def multi_send(r: Any, topic: str, queue: int, msg_id: str, values: list[bytes]) -> int:
    """The fallback without scripts: WATCH, GET, TYPE, MULTI, INCR, XADD, EXEC (then give back on error)."""
    stream, seq_key, _ = queue_keys(topic, queue)
    names = [b"r", b"b", b"t", b"k", b"p", b"c", b"d"]
    while True:
        with r.pipeline(transaction=True) as pipe:
            pipe.watch(seq_key, stream)
            current = pipe.get(seq_key)
            assert current is not None, "queue does not exist"
            assert pipe.type(stream) in (b"stream", b"none"), "broken layout"
            q = int(current)
            fields: dict[Any, Any] = {b"i": msg_id, b"q": q}
            fields.update(zip(names, values, strict=True))
            pipe.multi()
            pipe.incr(seq_key)
            pipe.xadd(stream, fields)  # never trims: the next script write that crosses 128 does
            try:
                _, added = pipe.execute(raise_on_error=False)
            except WatchError:
                continue  # another writer came first: read the counter again
            if isinstance(added, Exception):
                give_back(r, seq_key, q)
                raise added
            return q


def give_back(r: Any, seq_key: str, q: int) -> bool:
    """EXEC ran the INCR but refused the XADD: give offset *q* back unless the counter moved on."""
    while True:
        with r.pipeline(transaction=True) as pipe:
            pipe.watch(seq_key)
            if int(pipe.get(seq_key) or -1) != q + 1:
                pipe.unwatch()
                return False  # another writer took q + 1: q stays a gap
            pipe.multi()
            pipe.decr(seq_key)
            try:
                pipe.execute()
            except WatchError:
                continue
            return True


# --- the checks ---------------------------------------------------------------------------


def test_the_key_table_matches_rmq_style_names() -> None:
    rows = key_table()
    assert len(rows) >= 14
    keys = Keys()
    queue = keys.queue(SAMPLE["T"], SAMPLE_QUEUE)
    accessors = set()
    for sample, _type, accessor in rows:
        m = re.fullmatch(r"(Keys|QueueKeys)\.(\w+)(?:\(([^)]*)\))?", accessor)
        assert m, f"unparsable accessor {accessor!r}"
        owner = keys if m.group(1) == "Keys" else queue
        value = getattr(owner, m.group(2))
        if m.group(3) is not None:
            args = [SAMPLE[a.strip()] for a in m.group(3).split(",") if a.strip()]
            value = value(*args)
        assert value == sample, f"{accessor}: doc says {sample!r}, rmq_style makes {value!r}"
        accessors.add(f"{m.group(1)}.{m.group(2)}")
    # every key rmq_style can name is in the table
    for cls_name, cls in (("Keys", type(keys)), ("QueueKeys", type(queue))):
        for name, attr in vars(cls).items():
            is_key = isinstance(attr, property) or callable(attr)
            if name.startswith("_") or not is_key or name in ("queue", "tag"):
                continue
            assert f"{cls_name}.{name}" in accessors, f"{cls_name}.{name} is missing from docs/storage.md"


def test_queue_keys_share_one_hash_tag() -> None:
    for sample, _type, accessor in key_table():
        if accessor.startswith("QueueKeys."):
            assert re.search(r"\{orders:3\}", sample) and sample.count("{") == 1


def test_documented_examples_hold() -> None:
    text = DOC.read_text()
    assert "`1:013:17000000000007:created0:0:1:s2:hi`" in text
    assert pack_fields([b"0", b"1700000000000", b"created", b"", b"", b"s", b"hi"]) == (
        b"1:013:17000000000007:created0:0:1:s2:hi"
    )
    assert "`user-42` with 8\nqueues goes to queue 3" in text
    assert zlib.crc32(b"user-42") % 8 == 3


def test_a_foreign_eval_send_reads_back_identically(url: str) -> None:
    with Admin(url) as admin:
        admin.create_topic("orders", queues=8)
    r = open_client(url)
    queue_count, _, _ = foreign_meta(r, "orders")
    queue = zlib.crc32(b"user-42") % queue_count
    one = foreign_fields(b'{"order":7}', "j", tag="created", keys=("o-7", "u-42"), props={"src": "go"})
    two = foreign_fields("héllo".encode(), "s")
    reply = eval_send(r, "orders", queue, [one, two])
    assert int(reply[0]) == 0  # the first queue offset, then the entry ids

    entries = r.xrange(f"rmq:{{orders:{queue}}}:s")
    assert [e[0] for e in entries] == reply[1:]
    first = decode_entry("orders", queue, entries[0][0], entries[0][1])
    assert list(entries[0][1]) == [b"i", b"q", b"r", b"b", b"t", b"k", b"p", b"c", b"d"]
    assert first.msg_id == one[0]
    assert first.queue_offset == 0
    assert first.reconsume_times == 0
    assert first.born_timestamp == int(one[1][1])
    assert first.tag == "created"
    assert first.keys == ("o-7", "u-42")
    assert first.properties == {"src": "go"}
    assert first.content_type == "j" and first.value() == {"order": 7}
    second = decode_entry("orders", queue, entries[1][0], entries[1][1])
    assert (second.msg_id, second.queue_offset, second.tag, second.keys, second.properties) == (
        two[0],
        1,
        None,
        (),
        {},
    )
    assert second.value() == "héllo"

    # rmq_style's own producer continues the same queue offsets, with the same field layout
    with Producer(url) as producer:
        result = producer.send(Message("orders", {"order": 8}), sharding_key="user-42")
    assert (result.queue.queue_id, result.queue_offset) == (queue, 2)
    ours = r.xrange(f"rmq:{{orders:{queue}}}:s", min=result.offset, max=result.offset)
    assert list(ours[0][1]) == list(entries[0][1])

    with Admin(url) as admin:
        info = admin.describe_topic("orders").queues[queue]
    assert (info.min_queue_offset, info.max_queue_offset, info.length) == (0, 3, 3)
    assert info.first_offset == reply[1].decode()


def test_a_foreign_transaction_send_reads_back_identically(url: str) -> None:
    with Admin(url) as admin:
        admin.create_topic("orders", queues=2)
    r = open_client(url)
    sent = [foreign_fields(f"m{n}".encode(), "b", keys=(f"k{n}",)) for n in range(3)]
    assert [multi_send(r, "orders", 1, msg_id, values) for msg_id, values in sent] == [0, 1, 2]
    assert eval_send(r, "orders", 1, [foreign_fields(b"m3", "b")])[0] == 3
    entries = r.xrange("rmq:{orders:1}:s")
    decoded = [decode_entry("orders", 1, eid, fields) for eid, fields in entries]
    assert [m.queue_offset for m in decoded] == [0, 1, 2, 3]
    assert [m.body for m in decoded] == [b"m0", b"m1", b"m2", b"m3"]
    assert [m.msg_id for m in decoded[:3]] == [msg_id for msg_id, _ in sent]
    assert decoded[1].keys == ("k1",) and decoded[1].content_type == "b"
    with Admin(url) as admin:
        info = admin.describe_topic("orders").queues[1]
    assert (info.max_queue_offset, info.length, info.last_offset) == (4, 4, decoded[-1].offset)


def test_a_foreign_send_to_a_missing_queue_writes_nothing(url: str) -> None:
    with Admin(url) as admin:
        admin.create_topic("orders", queues=2)
    r = open_client(url)
    with pytest.raises(ResponseError, match="NOTOPIC"):
        r.eval(expanded("send"), 3, *queue_keys("orders", 5), "minid", 1000, 1, "x" * 32, *([b""] * 7))
    assert not r.exists("rmq:{orders:5}:s")


def test_a_foreign_delayed_message_is_released_identically(url: str) -> None:
    with Admin(url) as admin:
        admin.create_topic("orders", queues=2)
    r = open_client(url)
    msg_id, values = foreign_fields(b"later", "s", tag="t1")
    packed = b"".join(str(len(v)).encode() + b":" + v for v in values)
    keys = ("rmq:{orders:0}:delay", "rmq:{orders:0}:delayed", "rmq:{orders:0}:seq")
    due = int(r.eval(expanded("schedule"), 3, *keys, 0, 1, 1, msg_id, packed))
    assert due == 1
    assert r.zscore(keys[0], msg_id) == 1
    with Admin(url) as admin:
        assert admin.describe_topic("orders").queues[0].delayed == 1
        assert admin.release_due("orders") == 1
    (entry,) = r.xrange("rmq:{orders:0}:s")
    got = decode_entry("orders", 0, entry[0], entry[1])
    assert (got.msg_id, got.queue_offset, got.tag, got.body, got.content_type) == (
        msg_id,
        0,
        "t1",
        b"later",
        "s",
    )
    assert not r.exists(keys[0]) and not r.exists(keys[1])
