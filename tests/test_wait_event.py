"""wait_event: a wait for an event that a racing cancellation never loses."""

from __future__ import annotations

import asyncio

from rmq_style._wait_event import wait_event


def test_a_cancel_that_races_the_event_a_loop_waits_for_is_never_lost() -> None:
    async def main() -> int:
        lost = 0
        for _ in range(200):
            event = asyncio.Event()
            waiter = asyncio.create_task(wait_event(event, 10))
            await asyncio.sleep(0)  # the waiter is now blocked on the event
            event.set()
            waiter.cancel()  # arrives together with the wake-up (a stop() during a heartbeat wait)
            try:
                await waiter
                lost += 1
            except asyncio.CancelledError:
                pass
        return lost

    assert asyncio.run(main()) == 0
