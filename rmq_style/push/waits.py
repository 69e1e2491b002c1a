"""Scoped waits of the push runtime: an event or a timeout, and the one reconnect backoff."""

from __future__ import annotations

import asyncio

from .._wait_event import wait_event

__all__ = ["Backoff", "wait_any", "wait_event"]


class Backoff:
    """Exponential backoff between two attempts, cut short by *stop*; reset after a success."""

    def __init__(self, first_ms: int, max_ms: int) -> None:
        self.first, self.max, self.next = first_ms, max_ms, first_ms

    def reset(self) -> None:
        self.next = self.first

    async def wait(self, stop: asyncio.Event) -> None:
        await wait_event(stop, self._step() / 1000)

    async def sleep(self) -> None:
        """Wait out the delay whatever happens (a write that must go out before anything else)."""
        await asyncio.sleep(self._step() / 1000)

    def _step(self) -> int:
        delay, self.next = self.next, min(self.next * 2, self.max)
        return delay


async def wait_any(a: asyncio.Event, b: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
