"""Each handler annotation against each body kind a producer writes (docs/push.md's table), both backends."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from pydantic import BaseModel

from rmq_style import App, ReceivedMessage
from rmq_style.testing import AppTester


class Order(BaseModel):
    order_id: int
    user: str


ORDER = {"order_id": 1, "user": "ann"}
ORDER_JSON = b'{"order_id":1,"user":"ann"}'
BODIES: dict[str, Any] = {
    "bytes": b"now",
    "binary": b"\xff\x00",  # not UTF-8
    "str": "now",
    "bytes-json": ORDER_JSON,
    "str-json": ORDER_JSON.decode(),
    "dict": ORDER,
    "list": [1, 2],
    "model": Order(**ORDER),
}
DEAD = "dead"  # dead-lettered on the first delivery with a SerializationError


def expected(codec: str) -> dict[str, dict[str, Any]]:
    """Per annotation, what each body kind gives the handler."""
    structured = {"dict": ORDER, "list": [1, 2], "model": ORDER}  # what dict/list/model bodies decode to
    if codec == "json":
        stored = {"dict": ORDER_JSON, "list": b"[1,2]", "model": ORDER_JSON}
    else:
        stored = {k: msgpack.packb(v) for k, v in structured.items()}
    raw = {"bytes": b"now", "str": b"now", "bytes-json": ORDER_JSON, "str-json": ORDER_JSON}
    text = {k: v.decode() for k, v in raw.items()}
    raw["binary"], text["binary"] = b"\xff\x00", DEAD
    return {
        "bytes": raw | stored,
        "str": text | dict.fromkeys(structured, DEAD),
        "dict": {
            "bytes": DEAD,
            "binary": DEAD,
            "str": DEAD,
            "bytes-json": ORDER,
            "str-json": ORDER,
            "list": DEAD,
        }
        | {"dict": ORDER, "model": ORDER},
        "list": dict.fromkeys([*raw, "dict", "model"], DEAD) | {"list": [1, 2]},
        "model": {
            "bytes": DEAD,
            "binary": DEAD,
            "str": DEAD,
            "bytes-json": Order(**ORDER),
            "str-json": Order(**ORDER),
        }
        | {"dict": Order(**ORDER), "list": DEAD, "model": Order(**ORDER)},
        "any": {
            "bytes": b"now",
            "binary": b"\xff\x00",
            "str": "now",
            "bytes-json": ORDER_JSON,
            "str-json": ORDER_JSON.decode(),
        }
        | structured,
        "message": raw | stored,  # ReceivedMessage.body: the stored bytes
    }


def _app(url: str, codec: str, seen: dict[str, dict[str, Any]]) -> App:
    app = App(url, auto_create_topics=True, codec=codec, max_reconsume_times=0)

    def record(group: str, value: Any, msg: ReceivedMessage) -> None:
        seen.setdefault(group, {})[msg.keys[0]] = value

    @app.subscribe("bodies", group="bytes")
    def as_bytes(body: bytes, msg: ReceivedMessage) -> None:
        record("bytes", body, msg)

    @app.subscribe("bodies", group="str")
    async def as_str(msg: ReceivedMessage, body: str) -> None:
        record("str", body, msg)

    @app.subscribe("bodies", group="dict")
    def as_dict(body: dict[str, Any], msg: ReceivedMessage) -> None:
        record("dict", body, msg)

    @app.subscribe("bodies", group="list")
    def as_list(body: list, msg: ReceivedMessage) -> None:  # type: ignore[type-arg] # bare list: a JSON array
        record("list", body, msg)

    @app.subscribe("bodies", group="model")
    async def as_model(body: Order, msg: ReceivedMessage) -> None:
        record("model", body, msg)

    @app.subscribe("bodies", group="any")
    def as_any(body: Any, msg: ReceivedMessage) -> None:
        record("any", body, msg)

    @app.subscribe("bodies", group="message")
    def as_message(msg: ReceivedMessage) -> None:
        record("message", msg.body, msg)

    return app


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_each_annotation_gets_each_body_kind_or_dead_letters_it(url: str, codec: str) -> None:
    seen: dict[str, dict[str, Any]] = {}
    app = _app(url, codec, seen)
    with AppTester(app) as tester:
        for kind, body in BODIES.items():
            tester.send("bodies", body, keys=[kind])
        tester.drain()
        dead = {g: {d.message.keys[0]: d.reason for d in tester.dead_letters(g)} for g in expected(codec)}
    for group, table in expected(codec).items():
        got = seen.get(group, {}) | dict.fromkeys(dead[group], DEAD)
        assert got == table, group
        assert all(r.startswith("SerializationError") for r in dead[group].values()), dead[group]


def test_batch_handlers_take_lists_of_each_annotation(url: str) -> None:
    app = App(url, auto_create_topics=True)
    seen: dict[str, list[Any]] = {}

    @app.subscribe("texts", group="str", batch=10)
    def texts(bodies: list[str]) -> None:
        seen.setdefault("str", []).extend(bodies)

    @app.subscribe("texts", group="bytes", batch=10)
    async def raw(msgs: list[ReceivedMessage], bodies: list[bytes]) -> None:
        seen.setdefault("bytes", []).extend(bodies)
        seen.setdefault("message", []).extend(m.body for m in msgs)

    @app.subscribe("orders", group="model", batch=10)
    def orders(bodies: list[Order]) -> None:
        seen.setdefault("model", []).extend(bodies)

    with app.admin() as admin:
        admin.create_topic("texts", queues=1)
        admin.create_topic("orders", queues=1)
    with AppTester(app) as tester:
        for n in range(3):
            tester.send("texts", f"t{n}")
            tester.send("orders", Order(order_id=n, user="u") if n % 2 else {"order_id": n, "user": "u"})
        tester.drain()
    assert seen == {
        "str": ["t0", "t1", "t2"],
        "bytes": [b"t0", b"t1", b"t2"],
        "message": [b"t0", b"t1", b"t2"],
        "model": [Order(order_id=n, user="u") for n in range(3)],
    }
