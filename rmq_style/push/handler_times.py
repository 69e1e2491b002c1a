"""Handler durations in fixed buckets: the shape of a Prometheus histogram, counted per listener call."""

from __future__ import annotations

from bisect import bisect_left

__all__ = ["BUCKETS_S", "HandlerTimes"]

# upper bounds in seconds; a call longer than the last one counts in +Inf
BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class HandlerTimes:
    """How long listener calls took (a batch call is one observation).

    >>> times = HandlerTimes()
    >>> for seconds in (0.0003, 0.002, 0.002, 75.0):
    ...     times.observe(seconds)
    >>> times.count, round(times.sum_s, 4)
    (4, 75.0043)
    >>> times.cumulative()[:4]
    [('0.0005', 1), ('0.001', 1), ('0.0025', 3), ('0.005', 3)]
    >>> times.cumulative()[-1]
    ('+Inf', 4)
    """

    __slots__ = ("counts", "sum_s")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS_S) + 1)
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS_S, seconds)] += 1  # the first bound >= seconds (le semantics)
        self.sum_s += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, calls at most that long) per bucket, as Prometheus exposes them."""
        out, running = [], 0
        for bound, n in zip((*map(str, BUCKETS_S), "+Inf"), list(self.counts), strict=True):
            running += n
            out.append((bound, running))
        return out
