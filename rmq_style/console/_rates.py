"""Message rates from two reads of a counter a few seconds apart, kept in a small ring per process.

Every page and live refresh records the counters it read (a topic's summed max
queue offset, a group's summed consumed offset). A rate is the difference
between the newest sample and the oldest one still in the window, over the
time between them. Memory is bounded: at most ``per_key`` samples per counter
and ``max_keys`` counters (the least recently written is dropped). Nothing is
stored in Redis; a restarted console starts with no rate until its second read.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable

__all__ = ["RateRing"]


class RateRing:
    """Samples of monotonic counters and their per-second rate.

    >>> now = [0.0]
    >>> ring = RateRing(clock=lambda: now[0])
    >>> ring.record("orders", 10)
    >>> ring.rate("orders") is None  # one read: no rate yet
    True
    >>> now[0] = 4.0
    >>> ring.record("orders", 30)
    >>> ring.rate("orders")
    5.0
    """

    def __init__(
        self,
        *,
        min_gap_s: float = 1.0,
        window_s: float = 60.0,
        per_key: int = 32,
        max_keys: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_gap_s, self.window_s, self.per_key, self.max_keys = min_gap_s, window_s, per_key, max_keys
        self._clock = clock
        self._samples: OrderedDict[Hashable, deque[tuple[float, int]]] = OrderedDict()

    def record(self, key: Hashable, value: int) -> None:
        """Remember *value* read now; reads closer than ``min_gap_s`` to the last sample are not kept."""
        now = self._clock()
        samples = self._samples.get(key)
        if samples is None:
            samples = self._samples[key] = deque(maxlen=self.per_key)
            while len(self._samples) > self.max_keys:
                self._samples.popitem(last=False)
        self._samples.move_to_end(key)
        if samples and now - samples[-1][0] < self.min_gap_s:
            return
        if samples and value < samples[-1][1]:
            samples.clear()  # the counter went back (topic recreated, offset reset): start again
        samples.append((now, value))

    def rate(self, key: Hashable) -> float | None:
        """Per second over the window, or None before two samples."""
        samples = self._samples.get(key)
        if not samples:
            return None
        newest_t, newest_v = samples[-1]
        recent = [(t, v) for t, v in samples if newest_t - t <= self.window_s]
        oldest_t, oldest_v = recent[0]
        if newest_t <= oldest_t:
            return None
        return round((newest_v - oldest_v) / (newest_t - oldest_t), 2)
