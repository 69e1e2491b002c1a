"""Delays: RocketMQ's 18 delay levels and the retry schedule built on them.

>>> delay_level_ms(3)
10000
>>> RetrySchedule().delay_ms(0), RetrySchedule().delay_ms(15), RetrySchedule().delay_ms(40)
(10000, 7200000, 7200000)
>>> RetrySchedule.of_ms([5, 10]).delay_ms(7)
10
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from ._errors import UsageError

__all__ = ["DELAY_LEVELS_MS", "RetrySchedule", "delay_level_ms", "due_spec"]

_S, _M, _H = 1000, 60_000, 3_600_000
# "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h"
DELAY_LEVELS_MS: tuple[int, ...] = (
    1 * _S, 5 * _S, 10 * _S, 30 * _S,
    1 * _M, 2 * _M, 3 * _M, 4 * _M, 5 * _M, 6 * _M, 7 * _M, 8 * _M, 9 * _M, 10 * _M, 20 * _M, 30 * _M,
    1 * _H, 2 * _H,
)  # fmt: skip


def delay_level_ms(level: int) -> int:
    """Delay of RocketMQ delay level 1..18 (higher levels clamp to 18, as RocketMQ does)."""
    if isinstance(level, bool) or not isinstance(level, int) or level < 1:
        raise UsageError(f"delay level must be an int from 1 to 18, got {level!r}")
    return DELAY_LEVELS_MS[min(level, len(DELAY_LEVELS_MS)) - 1]


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """Delay before retry number ``reconsume_times + 1``.

    Default: RocketMQ's, level ``3 + reconsume_times`` (10 s, 30 s, 1 min ... 2 h),
    the last step repeating. Tests pass milliseconds with ``of_ms``.
    """

    delays_ms: tuple[int, ...] = DELAY_LEVELS_MS[2:]

    @classmethod
    def of_ms(cls, delays: Sequence[int]) -> RetrySchedule:
        if not delays or any(d < 0 for d in delays):
            raise UsageError("a retry schedule needs at least one delay, none negative")
        return cls(tuple(int(d) for d in delays))

    def delay_ms(self, reconsume_times: int) -> int:
        return self.delays_ms[min(max(reconsume_times, 0), len(self.delays_ms) - 1)]


def due_spec(
    delay: timedelta | None = None, deliver_at: datetime | None = None, delay_level: int | None = None
) -> tuple[int, int] | None:
    """(relative ms, absolute epoch ms) for the send script; None when the message is not delayed.

    Exactly one of *delay*, *deliver_at*, *delay_level* may be given. A relative
    delay is added to the Redis server clock by the script.
    """
    if delay is None and deliver_at is None and delay_level is None:
        return None
    if (delay is not None) + (deliver_at is not None) + (delay_level is not None) > 1:
        raise UsageError("give at most one of delay, deliver_at and delay_level")
    if delay is not None:
        ms = int(delay.total_seconds() * 1000)
        if ms < 0:
            raise UsageError(f"delay must not be negative, got {delay}")
        return (ms, 0)
    if deliver_at is not None:
        if deliver_at.tzinfo is None:
            raise UsageError("deliver_at must be timezone-aware (e.g. datetime.now(UTC) + ...)")
        return (0, int(deliver_at.timestamp() * 1000))
    assert delay_level is not None
    return (delay_level_ms(delay_level), 0)
