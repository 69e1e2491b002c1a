"""Pure core: offsets, codec, delays, packing, handler signatures. No Redis."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from rmq_style import (
    ConfigurationError,
    InvalidOffsetError,
    ReceivedMessage,
    RetrySchedule,
    SerializationError,
)
from rmq_style._codec import decode_model, decode_value, encode_body
from rmq_style._delay import DELAY_LEVELS_MS, delay_level_ms
from rmq_style._handlers import inspect_handler
from rmq_style._message import pack_fields, unpack_fields
from rmq_style._offsets import MAX_SEQ, Offset, parse_offset


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


def test_retry_schedule_follows_rocketmq_levels() -> None:
    schedule = RetrySchedule()
    assert [schedule.delay_ms(r) for r in range(16)] == list(DELAY_LEVELS_MS[2:])
    assert schedule.delay_ms(99) == 7_200_000
    assert delay_level_ms(1) == 1000 and delay_level_ms(30) == 7_200_000
    with pytest.raises(Exception, match="delay level"):
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
