"""Pure core: offsets, codec, delays, packing, handler signatures. No Redis."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hiredis import pack_command
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from rmq_style import (
    ConfigurationError,
    InvalidOffsetError,
    Message,
    ReceivedMessage,
    Retention,
    RetrySchedule,
    SerializationError,
)
from rmq_style._call_values import ScriptCall
from rmq_style._codec import decode_model, decode_value, encode_body
from rmq_style._delay import DELAY_LEVELS_MS, delay_level_ms
from rmq_style._errors import UsageError
from rmq_style._handlers import inspect_handler
from rmq_style._message import pack_fields, unpack_fields
from rmq_style._offsets import MAX_SEQ, Offset, parse_offset
from rmq_style._producing import ProducerCore, ProducerSettings
from rmq_style._sync._lane import pack_calls
from rmq_style._topics import TopicRoute


class Order(BaseModel):
    id: int


@given(st.integers(0, 2**48), st.integers(0, MAX_SEQ), st.integers(0, 2**48), st.integers(0, MAX_SEQ))
def test_offsets_order_like_redis(ms1: int, s1: int, ms2: int, s2: int) -> None:
    a, b = Offset(ms1, s1), Offset(ms2, s2)
    assert (a < b) == ((ms1, s1) < (ms2, s2))
    assert parse_offset(str(a)) == a
    assert a < a.next() and (a == Offset(0, 0) or a.previous() < a)


@pytest.mark.parametrize("bad", ["", "12", "a-1", "1-b", "-1-0", "1-2-3", None, 5, f"{2**64}-0"])
def test_malformed_offsets(bad: Any) -> None:
    with pytest.raises(InvalidOffsetError, match="malformed offset"):
        parse_offset(bad)


@given(st.lists(st.binary(max_size=50), max_size=10))
def test_packed_fields_round_trip(values: list[bytes]) -> None:
    assert unpack_fields(pack_fields(values)) == values


def test_codec_round_trips_and_refuses() -> None:
    assert decode_value(*encode_body(b"\x00\xff")) == b"\x00\xff"
    assert decode_value(*encode_body({"a": [1, 2]}, "msgpack")) == {"a": [1, 2]}
    assert decode_model(*encode_body(Order(id=3), "msgpack"), Order) == Order(id=3)
    with pytest.raises(SerializationError, match="does not validate as Order"):
        decode_model(*encode_body({"id": "x"}), Order)
    with pytest.raises(SerializationError, match="undecodable body"):
        decode_value("j", b"{nope")
    with pytest.raises(SerializationError, match="unknown codec"):
        encode_body({}, "pickle")  # type: ignore[arg-type]


def test_json_bodies_encode_as_json_dumps_does() -> None:
    value: dict[str, Any] = {"a": [1, 2.5, None, True, "é\n"], "b": {"c": -0.0}, "d": (1,)}
    assert encode_body(value) == ("j", json.dumps(value, separators=(",", ":")).encode())
    assert encode_body([1e-7]) == ("j", b"[1e-07]")
    circular: dict[str, Any] = {}
    circular["self"] = [circular]
    with pytest.raises(SerializationError, match="Circular reference detected"):
        encode_body(circular)
    with pytest.raises(SerializationError, match="Out of range float"):
        encode_body({"x": float("nan")})
    with pytest.raises(SerializationError, match="Object of type set is not JSON serializable"):
        encode_body([{1}])


def test_retry_schedule_follows_rocketmq_levels() -> None:
    schedule = RetrySchedule()
    assert [schedule.delay_ms(r) for r in range(16)] == list(DELAY_LEVELS_MS[2:])
    assert schedule.delay_ms(99) == 7_200_000
    assert delay_level_ms(1) == 1000 and delay_level_ms(30) == 7_200_000
    with pytest.raises(UsageError, match="delay level"):
        delay_level_ms(0)


def test_handler_signatures() -> None:
    def both(msg: ReceivedMessage, order: Order) -> None: ...
    async def batch(orders: list[Order]) -> None: ...
    def plain(body: dict[str, int]) -> None: ...

    assert inspect_handler(both).roles == ("message", "body")
    spec = inspect_handler(batch)
    assert spec.batch and spec.is_async and spec.body_type is Order
    assert inspect_handler(plain).body_type == dict[str, int]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def h(): ...", "takes 0 parameters"),
        ("def h(a, b): ...", "has no annotation"),
        ("def h(a: Order, b: Order): ...", "two bodies"),
        ("def h(a: list[Order], b: ReceivedMessage): ...", "mixes list and single"),
        ("def h(a: ReceivedMessage, b: ReceivedMessage): ...", "twice"),
        ("def h(a: 'Missing'): ...", "cannot resolve"),
    ],
)
def test_handler_signatures_it_cannot_serve(source: str, message: str) -> None:
    namespace: dict[str, Any] = {"Order": Order, "ReceivedMessage": ReceivedMessage}
    exec(source, namespace)
    with pytest.raises(ConfigurationError, match=message):
        inspect_handler(namespace["h"])


_body = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=20),
    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
    st.lists(st.integers(), max_size=3),
)
_word = st.text(st.characters(blacklist_characters=" |", blacklist_categories=["Cs"]), min_size=1, max_size=6)


@given(
    st.lists(
        st.tuples(
            _body,
            st.none() | _word,
            st.lists(_word, max_size=2),
            st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
        ),
        min_size=1,
        max_size=12,
    ),
    st.integers(1, 5),
    st.booleans(),
)
def test_send_calls_carry_their_arguments_prepacked_exactly(
    specs: list[tuple[Any, str | None, list[str], dict[str, str]]], queues: int, maxlen: bool
) -> None:
    """The wire form the producer builds is what a generic packer makes of the same arguments,
    and round-robin by slices gives message j the queue (start + j) % queues, results in order."""
    core = ProducerCore(ProducerSettings())
    retention = Retention.max_entries(100) if maxlen else Retention()
    core._routes["t"] = (TopicRoute("t", queues, retention), time.monotonic())
    before = core._round_robin.take("t", 3)
    messages = [Message("t", body, tag=tag, keys=keys, properties=props) for body, tag, keys, props in specs]
    plan = core.plan(messages)
    flow = core.send_flow(plan)
    calls = next(flow)
    assert isinstance(calls, list)
    replies = []
    for call in calls:
        assert isinstance(call, ScriptCall)
        assert pack_calls([call]) == pack_command(call.evalsha_args)
        n = int(call.args[2])
        assert call.args[:2] == retention.script_args and len(call.args) == 3 + 8 * n
        replies.append([0, *(f"{k}-{call.keys[0]}".encode() for k in range(n))])
    try:
        flow.send(replies)
    except StopIteration as stop:
        results = stop.value
    start = before + 3
    assert [r.msg_id for r in results] == [entry[0] for entry in plan.entries]
    assert [r.queue.queue_id for r in results] == [(start + j) % queues for j in range(len(messages))]
    for j, result in enumerate(results):
        assert result.offset == f"{j // queues}-rmq:{{t:{result.queue.queue_id}}}:s"
        assert result.queue_offset == j // queues
