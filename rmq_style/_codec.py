"""Body encoding: bytes, text, JSON (default) or msgpack; never pickle.

The content type travels with the entry as one letter so any reader can
decode it: ``b`` raw bytes, ``s`` UTF-8 text, ``j`` JSON, ``m`` msgpack.

>>> encode_body({"id": 1})
('j', b'{"id":1}')
>>> encode_body("héllo")
('s', b'h\\xc3\\xa9llo')
>>> decode_value("j", b'[1, 2]')
[1, 2]
"""

from __future__ import annotations

import json
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, Literal, TypeVar, cast

from pydantic import BaseModel, TypeAdapter, ValidationError

from ._errors import SerializationError

__all__ = ["Codec", "decode_model", "decode_value", "encode_body"]

Codec = Literal["json", "msgpack"]
M = TypeVar("M")

RAW, TEXT, JSON, MSGPACK = "b", "s", "j", "m"
_STRUCTURED = {"json": JSON, "msgpack": MSGPACK}
_CONTENT_TYPES = (RAW, TEXT, JSON, MSGPACK)
_ANY: tuple[Any, ...] = (Any, object)
# one encoder, built once: json.dumps with non-default options builds a new one per call
_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_JSON_ENCODE = _JSON_ENCODER.encode


def _c_encoder(markers: dict[int, Any] | None) -> Any:
    return c_make_encoder(
        markers, _JSON_ENCODER.default, encode_basestring_ascii, None, ":", ",", False, False, False
    )


# Without a circular-reference memo: stateless, so one instance serves every call and thread.
_UNCHECKED = _c_encoder(None) if c_make_encoder is not None else None


def _json_bytes(value: dict[Any, Any] | list[Any]) -> bytes:
    """_JSON_ENCODE(value).encode() for a dict or list, without JSONEncoder's per-call Python layer.

    The encoder runs without the circular-reference memo; a circular (or very deep)
    value exhausts the recursion limit instead, and is then encoded again with the
    memo, as JSONEncoder does, to fail the same way (ValueError: Circular reference).
    """
    if _UNCHECKED is None:  # pragma: no cover - CPython always has the C accelerator
        return _JSON_ENCODE(value).encode()
    try:
        chunks = _UNCHECKED(value, 0)
    except RecursionError:
        chunks = _c_encoder({})(value, 0)
    return "".join(chunks).encode()


def _msgpack() -> Any:
    try:
        import msgpack  # noqa: PLC0415 - optional extra
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SerializationError(
            "the msgpack codec needs the msgpack package: pip install 'rmq_style[msgpack]'"
        ) from exc
    return msgpack


def encode_body(body: object, codec: Codec = "json") -> tuple[str, bytes]:
    """Return (content type, bytes) for a message body."""
    exact = type(body)
    if exact is bytes:
        return RAW, cast(bytes, body)
    if (exact is dict or exact is list) and codec == "json":  # the common case, first
        try:
            return JSON, _json_bytes(cast("dict[Any, Any]", body))
        except (TypeError, ValueError, OverflowError) as exc:
            raise _unencodable(body, codec, exc) from exc
    if isinstance(body, bytes | bytearray | memoryview):
        return RAW, bytes(body)
    if isinstance(body, str):
        return TEXT, body.encode()
    kind = _STRUCTURED.get(codec)
    if kind is None:
        raise SerializationError(f"unknown codec {codec!r}: use 'json' or 'msgpack'")
    try:
        if kind == JSON:
            if isinstance(body, BaseModel):
                return JSON, body.model_dump_json().encode()
            return JSON, _JSON_ENCODE(body).encode()
        value = body.model_dump(mode="json") if isinstance(body, BaseModel) else body
        return MSGPACK, bytes(_msgpack().packb(value))
    except (TypeError, ValueError, OverflowError) as exc:
        raise _unencodable(body, codec, exc) from exc


def _unencodable(body: object, codec: str, exc: Exception) -> SerializationError:
    return SerializationError(
        f"cannot encode a body of type {type(body).__name__} as {codec}: {exc}; "
        "send bytes, str, a pydantic model or JSON-able data"
    )


def decode_value(content_type: str, data: bytes) -> Any:
    """Decode a body into plain Python data (bytes stay bytes, text becomes str)."""
    try:
        if content_type == RAW:
            return data
        if content_type == TEXT:
            return data.decode()
        if content_type == JSON:
            return json.loads(data)
        if content_type == MSGPACK:
            return _msgpack().unpackb(data, raw=False)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise SerializationError(f"undecodable body (content type {content_type!r}): {exc}") from exc
    raise SerializationError(f"unknown content type {content_type!r}")


def decode_model(content_type: str, data: bytes, model: type[M]) -> M:
    """Decode and validate a body into *model* (a pydantic model or any type pydantic can validate).

    ``bytes`` takes the body as stored, whatever its content type. ``str`` and
    ``Any``/``object`` take a text or raw body as text (raw: if it is UTF-8);
    every other type parses a text or raw body as JSON. A JSON or msgpack body
    is decoded, then validated (a ``str`` handler takes a JSON string, not an object).

    >>> decode_model("s", b"now", str), decode_model("j", b'{"id":1}', bytes)
    ('now', b'{"id":1}')
    >>> decode_model("s", b'{"id": 1}', dict), decode_model("b", b"now", object)
    ({'id': 1}, b'now')

    Raises SerializationError whose ``__cause__`` is the pydantic ValidationError.
    """
    if model is bytes and content_type in _CONTENT_TYPES:
        return cast(M, data)
    if model in _ANY:
        return cast(M, decode_value(content_type, data))
    if model is str and content_type in (RAW, TEXT):
        return cast(M, decode_value(TEXT, data))
    try:
        if content_type in (JSON, RAW, TEXT):
            if isinstance(model, type) and issubclass(model, BaseModel):
                return model.model_validate_json(data)
            return TypeAdapter(model).validate_json(data)
        value = decode_value(content_type, data)
        return TypeAdapter(model).validate_python(value)
    except ValidationError as exc:
        raise SerializationError(
            f"body does not validate as {getattr(model, '__name__', model)}: "
            f"{exc.error_count()} error(s), first: {exc.errors()[0]['msg']}"
        ) from exc
