"""`wait_event`: wait for an asyncio event at most so long (push runtime, app, transaction check loop)."""

from __future__ import annotations

import asyncio

__all__ = ["wait_event"]


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait for *event* at most *seconds*; True if it is set."""
    if event.is_set():
        return True
    # asyncio.timeout, not wait_for: no task per wait, and on 3.11 wait_for can swallow a
    # cancellation that arrives as the event is set (a stop() that never lands)
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
