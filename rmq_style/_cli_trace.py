"""``rmq-style trace``: what happened to one message (RocketMQ's queryMsgTraceById)."""

from __future__ import annotations

from typing import Annotated

import typer

from ._cli_common import DEFAULT_URL, JsonOption, UrlOption, console, emit_json
from ._errors import UsageError
from ._sync.admin import Admin


def trace(
    msg_id: Annotated[str | None, typer.Argument(help="msg id (SendResult.msg_id)")] = None,
    topic: Annotated[str | None, typer.Option(help="its topic (default: every topic)")] = None,
    key: Annotated[str | None, typer.Option(help="business key (with --topic)")] = None,
    url: UrlOption = DEFAULT_URL,
    as_json: JsonOption = False,
) -> None:
    """Show the journey of a traced message: sent, each delivery per group, retries, dead letter, replay."""
    if (msg_id is None) == (key is None):
        raise UsageError("give a MSG_ID or --key (with --topic)")
    with Admin(url) as admin:
        if key is not None:
            if topic is None:
                raise UsageError("--key needs --topic (keys are looked up per topic)")
            traces = admin.trace_by_key(topic, key)
        else:
            assert msg_id is not None
            traces = admin.trace(msg_id, topic)
    if as_json:
        emit_json([t.as_dict() for t in traces])
        return
    if not traces:
        console.print(f"no trace of {msg_id or key}: not traced (docs/trace.md), or its records are gone",
                      markup=False, highlight=False)  # fmt: skip
        return
    for t in traces:
        for line in t.lines():  # recorded text is data: printed as it is, no markup
            console.print(line, markup=False, highlight=False, soft_wrap=True)
