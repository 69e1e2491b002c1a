"""What a decorated handler wants, read from its annotations (pure).

A handler takes the body (validated into the annotated type: a pydantic model,
``dict``, ``str``, ``bytes`` ...), the received message, or both, in any
order; a batch handler takes lists of them.

>>> from pydantic import BaseModel
>>> class Order(BaseModel):
...     id: int
>>> async def on_order(order: Order, msg: ReceivedMessage) -> None: ...
>>> spec = inspect_handler(on_order)
>>> spec.is_async, spec.body_type is Order, spec.batch
(True, True, False)
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._codec import decode_model
from ._errors import ConfigurationError
from ._message import ReceivedMessage

__all__ = ["HandlerSpec", "inspect_handler"]


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    func: Callable[..., Any]
    is_async: bool
    batch: bool
    # per positional parameter: "message" or "body"
    roles: tuple[str, ...]
    body_type: Any

    @property
    def name(self) -> str:
        return f"{getattr(self.func, '__module__', '?')}.{getattr(self.func, '__qualname__', self.func)}"

    def arguments(self, messages: Sequence[ReceivedMessage]) -> list[Any]:
        """The call's arguments; SerializationError when a body does not decode into body_type."""
        bodies: list[Any] = []
        if "body" in self.roles:
            bodies = [decode_model(m.content_type, m.body, self.body_type) for m in messages]
        args: list[Any] = []
        for role in self.roles:
            values = list(messages) if role == "message" else bodies
            args.append(values if self.batch else values[0])
        return args


def _unwrap_list(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (list, Sequence, typing.Sequence):
        (inner,) = typing.get_args(annotation) or (Any,)
        return inner, True
    return annotation, False


def inspect_handler(func: Callable[..., Any]) -> HandlerSpec:
    """Read the handler's signature; ConfigurationError says what to change when it cannot be served."""
    if not callable(func):
        raise ConfigurationError(f"a handler must be callable, got {func!r}")
    name = getattr(func, "__qualname__", repr(func))
    try:
        hints = typing.get_type_hints(func)
    except (NameError, TypeError) as exc:
        raise ConfigurationError(f"cannot resolve the annotations of handler {name}: {exc}") from exc
    params = [
        p for p in inspect.signature(func).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]  # fmt: skip
    if not 1 <= len(params) <= 2:
        raise ConfigurationError(
            f"handler {name} takes {len(params)} parameters: give it the body, the ReceivedMessage, or both"
        )
    roles: list[str] = []
    batches: set[bool] = set()
    body_type: Any = None
    for param in params:
        if param.name not in hints:
            raise ConfigurationError(
                f"parameter {param.name!r} of handler {name} has no annotation: annotate it with the body "
                "type (a pydantic model, dict, str, bytes ...) or ReceivedMessage"
            )
        inner, is_list = _unwrap_list(hints[param.name])
        batches.add(is_list)
        if inner is ReceivedMessage:
            roles.append("message")
        elif body_type is None:
            roles.append("body")
            body_type = inner
        else:
            raise ConfigurationError(
                f"handler {name} asks for two bodies; one parameter may be the ReceivedMessage"
            )
    if len(batches) > 1:
        raise ConfigurationError(
            f"handler {name} mixes list and single parameters; use lists for a batch handler"
        )
    if roles.count("message") > 1:
        raise ConfigurationError(f"handler {name} asks for the ReceivedMessage twice")
    return HandlerSpec(func, inspect.iscoroutinefunction(func), batches == {True}, tuple(roles), body_type)
