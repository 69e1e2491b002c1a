"""Message ids (RocketMQ's MessageClientIDSetter): made at send time, kept across retries and replays.

>>> len(new_msg_id()), new_msg_id(0)[:12]
(32, '000000000000')
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

__all__ = ["msg_ids_with_prefix", "new_msg_id", "new_msg_ids"]


def new_msg_id(now_ms: int | None = None) -> str:
    """32 hex chars: 48 bits of ms time then 80 random bits (sortable by birth, unique)."""
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    return f"{now_ms:012x}{os.urandom(10).hex()}"


def new_msg_ids(count: int, now_ms: int) -> list[str]:
    """*count* msg ids born at *now_ms*, with one call for the randomness of them all."""
    return msg_ids_with_prefix(f"{now_ms:012x}", count)


def msg_ids_with_prefix(prefix: str, count: int) -> list[str]:
    if count == 1:
        return [prefix + _random_part()]
    entropy = os.urandom(10 * count).hex()
    return [prefix + entropy[n : n + 20] for n in range(0, 20 * count, 20)]


# Random parts of single msg ids, drawn 256 at a time (one os.urandom call, not one per send).
_entropy: Iterator[str] = iter(())


def _random_part() -> str:
    """80 random bits as 20 hex chars; next() on a list iterator is atomic, so threads never share one."""
    global _entropy
    part = next(_entropy, None)
    if part is None:
        hexed = os.urandom(2560).hex()
        fresh = iter([hexed[n : n + 20] for n in range(0, 5120, 20)])
        part = next(fresh)
        _entropy = fresh
    return part


def _forget_entropy() -> None:
    global _entropy
    _entropy = iter(())


os.register_at_fork(after_in_child=_forget_entropy)  # a forked child must not reuse the parent's draws
