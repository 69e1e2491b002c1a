"""Work-around for fakeredis' blocking XREADGROUP (broken in 2.26 .. 2.40).

Upstream, ``XREADGROUP ... BLOCK`` with COUNT never blocks (it answers empty at
once, so a consumer loop busy-spins), without COUNT it moves entries that are
already there into the PEL and returns nothing (they are lost to the reader),
and a read of the consumer's own history (an id instead of ``>``) waits for the
whole timeout. A missing stream also answers with an XGROUP error instead of
``NOGROUP``, which hides a lost group. This module replaces the command with
one that keeps Redis 7 semantics; ``tests/test_fakeredis_fix.py`` fails if the
defect comes back (e.g. when the version guard below is widened).

Applied only to the fakeredis versions known to need it.
"""

from __future__ import annotations

import functools
import threading
from importlib.metadata import version
from typing import Any

__all__ = ["AFFECTED", "apply", "is_applied"]

_lock = threading.Lock()
_applied = False


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())


def AFFECTED(fakeredis_version: str) -> bool:
    """True for the fakeredis releases whose blocking XREADGROUP is broken."""
    return (2, 26) <= _version_tuple(fakeredis_version) < (2, 41)


def is_applied() -> bool:
    return _applied


def apply() -> None:
    """Install the fixed XREADGROUP into fakeredis (idempotent, version-guarded)."""
    global _applied
    with _lock:
        if _applied or not AFFECTED(version("fakeredis")):
            return
        _install()
        _applied = True


def _install() -> None:
    import fakeredis._msgs as msgs  # noqa: PLC0415
    from fakeredis._command_args_parsing import extract_args  # noqa: PLC0415
    from fakeredis._core import CommandItem  # noqa: PLC0415
    from fakeredis._helpers import SimpleError, casematch  # noqa: PLC0415
    from fakeredis.commands_mixins.streams_mixin import StreamsCommandsMixin  # noqa: PLC0415

    def read(
        self: Any,
        consumer: bytes,
        params: list[tuple[Any, bytes, bytes]],
        count: int | None,
        noack: bool,
        blocking: bool,
        first_pass: bool,
    ) -> dict[bytes, Any] | None:
        res: dict[bytes, Any] = {}
        for group, stream_name, start_id in params:
            entries = group.group_read(consumer, start_id, count, noack)
            if entries or start_id != b">":
                res[stream_name] = entries
        if blocking and not res:
            return None  # keep waiting; nothing was moved into the PEL
        return res

    def xreadgroup(self: Any, group_const: bytes, group_name: bytes, consumer: bytes, *args: bytes) -> Any:
        if not casematch(b"GROUP", group_const):
            raise SimpleError(msgs.SYNTAX_ERROR_MSG)
        (count, timeout, noack), left = extract_args(
            args, ("+count", "+block", "noack"), error_on_unexpected=False
        )
        if len(left) < 3 or not casematch(left[0], b"STREAMS") or len(left) % 2 != 1:
            raise SimpleError(msgs.SYNTAX_ERROR_MSG)
        left = left[1:]
        half = len(left) // 2
        if count is not None and count <= 0:
            count = None  # Redis: COUNT 0 means no limit
        params: list[tuple[Any, bytes, bytes]] = []
        for i in range(half):
            item = CommandItem(left[i], self._db, item=self._db.get(left[i]), default=None)
            group = item.value.group_get(group_name) if item.value is not None else None
            if not group:
                raise SimpleError(
                    msgs.XREADGROUP_KEY_OR_GROUP_NOT_FOUND_MSG.format(left[i].decode(), group_name.decode())
                )
            params.append((group, left[i], left[i + half]))
        if timeout is None or any(start != b">" for _, _, start in params):
            return self._xreadgroup_reply(read(self, consumer, params, count, noack, False, False))
        return self._blocking(
            timeout / 1000.0,
            functools.partial(read, self, consumer, params, count, noack, True),
            self._xreadgroup_reply,
        )

    StreamsCommandsMixin.xreadgroup = xreadgroup  # type: ignore[method-assign]
