"""Orderly consumption, the runtime: one task per owned queue, holding the queue's lease lock.

A queue task (OrderlyQueue) lives while its queue is allocated to this member:

1. acquire: ``SET lock member/token NX PX lease``, tried again every
   heartbeat interval while someone else holds it (an owner finishing its
   running message, or a dead one whose lease runs out);
2. consume: ``orderly_read`` acknowledges what was handled and returns the
   next entries in offset order (the group's pending ones first: a takeover
   re-handles the previous owner's unacknowledged entries), each handled one
   at a time; a failure holds the queue (``orderly_settle`` records it) and
   the same message is tried again after the suspend time, until it succeeds
   or goes to the dead-letter queue (``orderly_dead_letter``);
3. release: when the queue is no longer allocated (or on stop), after the
   running message finished: acknowledge, compare-and-delete the lock.

Every write checks the lease in the same script (fenced); a refused write
(FencedError) makes the task drop the queue at once. The runner renews every
lease every third of it in one round trip; an owner whose renewal failed or
is overdue starts no handler any more.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import structlog

from .._async._io import TRANSIENT_ERRORS, AsyncClient, execute
from .._message import MessageQueue, ReceivedMessage
from .._names import Keys
from .handler_times import HandlerTimes
from .key_acks import ACK_LINGER_S, AckRounds
from .key_order import KeyQueue
from .key_turns import KeyTurns
from .orderly_leases import (
    lease_deadline,
    renew_call,
)
from .orderly_queue import OrderlyQueue
from .runner import HandlerPool, Spawn
from .settings import PushSettings
from .state import Subscription
from .trace_recorder import TraceRecorder
from .waits import Backoff, wait_event

__all__ = ["OrderlyQueue", "OrderlyRunner"]

log = structlog.get_logger("rmq_style.orderly")
_TRANSIENT = (*TRANSIENT_ERRORS, OSError)


class OrderlyRunner:
    """The orderly queues of one PushConsumer: their tasks, the lease renewals, the listener calls."""

    def __init__(
        self,
        *,
        group: str,
        member: str,
        keys: Keys,
        settings: PushSettings,
        stats: Any,
        times: HandlerTimes,
        pool: HandlerPool,
        client: AsyncClient,
        wait_client: AsyncClient,
        start_position: Callable[[], tuple[str, str]],
        spawn: Spawn | None = None,
        recorder: TraceRecorder | None = None,
    ) -> None:
        """*spawn*: how a queue task is started (a child of the consumer's task group)."""
        self.group = group
        self.member = member
        self.keys = keys
        self.settings = settings
        self.stats = stats
        self.times = times
        self.pool = pool  # its budget and thread pool are shared with the concurrent listeners
        self.budget = pool.shared()
        self.client = client
        self.wait_client = wait_client
        self.start_position = start_position
        self.recorder = recorder  # message trace (docs/trace.md); None: off
        self.queues: dict[MessageQueue, OrderlyQueue] = {}
        backoff = functools.partial(Backoff, settings.reconnect_backoff_ms, settings.reconnect_backoff_max_ms)
        self.ack_rounds = AckRounds(client, ACK_LINGER_S, backoff)  # of the key-ordered queues
        self.key_turns = KeyTurns(self.budget)  # who runs the key-ordered queues' heads
        self.log = log.bind(group=group, member=member)
        self._stop = asyncio.Event()
        self._spawn = spawn

    @property
    def owned(self) -> list[MessageQueue]:
        return sorted(mq for mq, q in self.queues.items() if q.locked and not q.release.is_set())

    def assign(self, sub: Subscription, mine: set[MessageQueue]) -> None:
        """The queues of *sub*'s topic allocated to this member now: start new ones, hand back the others."""
        if self._stop.is_set():
            return
        for mq, q in list(self.queues.items()):
            if mq.topic == sub.topic and mq not in mine and not q.release.is_set():
                q.release.set()
        for mq in sorted(mine):
            if mq in self.queues:
                continue  # running, or still finishing a hand-back: a new task once it is gone
            q = (KeyQueue if sub.key_order is not None else OrderlyQueue)(self, mq, sub)
            self.queues[mq] = q
            if self._spawn is None:
                q.task = asyncio.create_task(q.run())
            else:  # not restarted: run() ends the queue's task, the next rebalance starts a new one
                q.task = self._spawn(f"orderly {mq}", q.run)

    async def renew_loop(self) -> None:
        """Renew every held lease every third of it, in one round trip."""
        s = self.settings
        period = s.orderly_lease_ms / 3000
        while not await wait_event(self._stop, period):
            held = [q for q in self.queues.values() if q.locked and not q.lost]
            if not held:
                continue
            sent = time.monotonic()
            try:
                replies = await execute(
                    self.client, [renew_call(q.keys, self.group, q.value, s.orderly_lease_ms) for q in held]
                )
            except _TRANSIENT as exc:
                self.log.warning("consumer.redis_unavailable", task="renew", error=str(exc))
                continue
            for q, reply in zip(held, replies, strict=True):
                if reply == 1:
                    q.valid_until = lease_deadline(sent, s.orderly_lease_ms)
                elif not isinstance(reply, Exception) and q.locked:
                    q.lost = True
                    q.log.warning("queue.lease_lost")

    async def call(self, q: OrderlyQueue, messages: list[ReceivedMessage]) -> object:
        """Run *q*'s listener once; its return value, or the exception it raised.

        A call running longer than consume_timeout is cut by the watchdog (no timer per call).
        """
        sub = q.sub
        args: list[Any]
        try:
            if sub.model is not None:
                bodies = [m.decode(sub.model) for m in messages]
                args = (
                    [bodies, messages]
                    if self.settings.consume_message_batch_max_size > 1
                    else [bodies[0], messages[0]]
                )
            else:
                args = [messages] if self.settings.consume_message_batch_max_size > 1 else [messages[0]]
        except Exception as exc:  # noqa: BLE001 - bad input: the decision sends it to the DLQ
            return exc
        async with self.budget:  # one budget with the consumer's concurrent listener calls
            q._check()  # the wait for a slot may have outlived the lease, or the queue must go
            # the runner's thread pool, timeout watchdog and exception boundary
            return await self.pool.run(sub.listener, sub.is_async, args, q.log, messages)

    async def background_loop(self) -> None:
        """The lease renewals."""
        await self.renew_loop()

    async def stop(self, deadline_s: float) -> int:
        """Hand every queue back once its running message finished; return how many were cut off."""
        self._stop.set()
        for q in self.queues.values():
            q.release.set()
        tasks = [q.task for q in self.queues.values() if q.task is not None]
        cut = 0
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(deadline_s, 0.1))
            cut = len(pending)
            for t in pending:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.key_turns.close()
        await self.ack_rounds.close()
        return cut
