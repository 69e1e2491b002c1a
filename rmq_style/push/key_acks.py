"""Acknowledgement rounds of the key-ordered queues of one consumer: one round trip for all of them.

Key-ordered entries finish one by one, many at a time in every queue. Each
queue asks for its acknowledgements to be written (``AckRounds.flush``); the
first ask opens a round, which waits ``linger_s`` for the others, then sends
every waiting queue's ``key_settle`` (each fenced on its own queue's lease) in
one pipelined round trip, retried while Redis is away. Each queue gets its own
reply. A round runs in a task of its own, so a queue handed back meanwhile
does not cancel the others' acknowledgements.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import structlog

from .._async._io import TRANSIENT_ERRORS, AsyncClient, execute
from .._call_values import Call
from .waits import Backoff

__all__ = ["ACK_LINGER_S", "AckRounds"]

ACK_LINGER_S = 0.005  # a round waits this long for the other entries finishing with its first

log = structlog.get_logger("rmq_style.orderly")
_TRANSIENT = (*TRANSIENT_ERRORS, OSError)


class Acking(Protocol):
    def take_ack_call(self) -> Call | None:
        """The queue's acknowledgements as one call (taken: they are this round's now), or None."""
        ...


class AckRounds:
    """Writes the acknowledgements of many queues together, one round trip per round."""

    def __init__(self, client: AsyncClient, linger_s: float, backoff: Callable[[], Backoff]) -> None:
        self.client = client
        self.linger_s = linger_s
        self.backoff = backoff
        self._waiting: dict[Acking, None] = {}  # queues with acknowledgements for the next round
        self._next: asyncio.Future[dict[Acking, object]] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def flush(self, queue: Acking) -> object:
        """Write *queue*'s acknowledgements in the next round; its reply (a count, or an error reply)."""
        self._waiting[queue] = None
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            task = asyncio.create_task(self._round(self._next))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        replies = await asyncio.shield(self._next)
        return replies.get(queue, 0)

    async def _round(self, done: asyncio.Future[dict[Acking, object]]) -> None:
        try:
            await asyncio.sleep(self.linger_s)  # the others finishing meanwhile share the write
            self._next = None
            queues = list(self._waiting)
            self._waiting.clear()
            taken = [(q, q.take_ack_call()) for q in queues]
            sent = [(q, call) for q, call in taken if call is not None]
            backoff = self.backoff()
            while True:
                try:
                    replies = await execute(self.client, [call for _, call in sent]) if sent else []
                    break
                except _TRANSIENT as exc:
                    log.warning("consumer.redis_unavailable", task="key_acks", error=str(exc))
                    await backoff.sleep()
            done.set_result({q: reply for (q, _), reply in zip(sent, replies, strict=True)})
        except BaseException as exc:
            if self._next is done:
                self._next = None
            if not done.done():
                if isinstance(exc, asyncio.CancelledError):
                    done.cancel()  # closed: the queues waiting for it stop too
                else:
                    done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    async def close(self) -> None:
        """Give up the rounds still going (Redis away at stop: what they held stays pending)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
