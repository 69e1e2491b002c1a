"""What the parts of one PushConsumer share: settings, clients, queues, in-flight counts, events.

The fetcher, the rebalancer, the settler and the retry loop each hold this
object; the in-flight counts change here only (``register``, ``release``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any

import structlog

from .._async._io import TRANSIENT_ERRORS, AsyncClient
from .._membership import new_member_id
from .._message import MessageQueue
from .._names import Keys
from .._telemetry import ConsumerHooks, active
from .._trace import TraceBound
from .handler_times import HandlerTimes
from .outcomes import RetryPolicy
from .runner import HandlerPool
from .settings import PushSettings
from .state import Delivery, PushStats, QueueState, StreamState, Subscription
from .tasks import TaskTree
from .trace_recorder import TraceRecorder
from .waits import Backoff

if TYPE_CHECKING:
    from .marks import MarkBook
    from .orderly import OrderlyRunner

__all__ = ["TRANSIENT", "Context"]

log = structlog.get_logger("rmq_style.push")
TRANSIENT = (*TRANSIENT_ERRORS, OSError)


class Context:
    def __init__(self, url: str, group: str, settings: PushSettings) -> None:
        self.url = url
        self.group = group
        self.settings = settings
        self.member = new_member_id()
        self.keys = Keys(settings.namespace)
        self.stats = PushStats()
        self.handler_times = HandlerTimes()  # listener call durations, for the metrics histogram
        self.policy = RetryPolicy(settings.retry_schedule, settings.concurrent_max_reconsume_times)
        self.subs: dict[str, Subscription] = {}
        self.orderly_topics: set[str] = set()
        self.orderly: OrderlyRunner | None = None
        self.queues: dict[MessageQueue, QueueState] = {}
        self.streams: dict[bytes, StreamState] = {}
        self.total = 0  # entries read and not settled yet, over every queue
        self.client: AsyncClient | None = None
        self.fetch_client: AsyncClient | None = None  # blocking reads get their own connection
        self.pool: HandlerPool | None = None
        self.stopping = asyncio.Event()
        self.capacity = asyncio.Event()  # room for more reads
        self.queues_changed = asyncio.Event()  # queues were acquired (cluster: each gets a fetch loop)
        self.settle_wakeup = asyncio.Event()
        self.retry_wakeup = asyncio.Event()
        self.drained = asyncio.Event()  # the pool is closed: no outcome will come any more
        self.log = log.bind(group=group, member=self.member)
        # monotonic: until then the group counts this member as live (its last heartbeat + expiry)
        self.member_valid_until = 0.0
        self.dropped = 0  # listener calls dropped since the last report
        self.tree = self.new_tree()  # every task of the consumer, and their one exception boundary
        telemetry = active()  # OpenTelemetry (rmq_style.otel): the listener calls and settle rounds
        self.observer: ConsumerHooks | None = telemetry.consumer(group) if telemetry is not None else None
        self.recorder: TraceRecorder | None = None  # message trace (docs/trace.md); None: off
        if settings.message_trace != "off":
            every = settings.message_trace == "all"
            bound = TraceBound(settings.trace_maxlen, settings.trace_max_age_ms)
            self.recorder = TraceRecorder(group, self.member, trace_all=every, bound=bound)
        self.marks: MarkBook | None = None  # idempotent subscriptions' marks (push/dedup.py)

    def membership_current(self) -> bool:
        return time.monotonic() < self.member_valid_until

    def wanted(self, token: Delivery | list[Delivery]) -> bool:
        """Whether a queued listener call may start: its queue is still ours as when it was read.

        A worker resumed after a SIGSTOP past member expiry has lost its queues, and a
        survivor has taken over their pending entries: what it read ahead is not run.
        """
        d = token[0] if isinstance(token, list) else token
        if d.epoch == d.stream.queue.epoch and monotonic() < self.member_valid_until:
            if self.recorder is not None and (type(token) is list or d.traceable):
                self.recorder.start(token)
            return True
        return False

    def drop(self, token: Delivery | list[Delivery]) -> None:
        """Forget a call that will not start; its entries, if still pending at us, are read again."""
        for d in token if isinstance(token, list) else [token]:
            self.dropped += 1
            self.release(d)
            d.stream.scan_from = b"0-0"

    def lapse(self) -> None:
        """The membership lapsed (silent past member expiry): every queue's calls read so far are dropped."""
        for q in self.queues.values():
            q.epoch += 1
            for st in q.streams:
                st.scan_from = b"0-0"
        self.capacity.set()

    def redis(self) -> AsyncClient:
        assert self.client is not None, "the consumer is not started"
        return self.client

    def backoff(self) -> Backoff:
        return Backoff(self.settings.reconnect_backoff_ms, self.settings.reconnect_backoff_max_ms)

    def owned_queues(self) -> list[MessageQueue]:
        """The queues this member consumes now (orderly ones: while it holds their lease)."""
        orderly = self.orderly.owned if self.orderly is not None else []
        return sorted([q.mq for q in self.queues.values() if q.owned] + orderly)

    def new_tree(self) -> TaskTree:
        """The task tree of one run of the consumer (a start that failed leaves a fresh one)."""
        self.tree = TaskTree(
            self.log,
            self.backoff,
            self.stopping,
            self.settings.loop_crash_limit,
            self.settings.membership.member_expiry_ms / 1000,
        )
        return self.tree

    async def guard(self, name: str, loop: Callable[[], Any]) -> None:
        """Run a loop inside the consumer's exception boundary (``TaskTree.guard``)."""
        await self.tree.guard(name, loop)

    def start_position(self) -> tuple[str, str]:
        s = self.settings
        if s.consume_from == "timestamp":
            at = s.consume_timestamp
            ms = int(at.timestamp() * 1000) if at is not None else int(time.time() * 1000) - 30 * 60_000
            return "timestamp", str(ms)
        return s.consume_from.value, ""

    # -- in-flight accounting: the only place the counts change -----------------------------------

    def register(self, stream: StreamState, count: int, size: int) -> None:
        """*count* entries (*size* body bytes) of *stream* read and handed on."""
        queue = stream.queue
        queue.count += count
        queue.size += size
        self.total += count

    def release(self, d: Delivery) -> None:
        stream = d.stream
        stream.in_flight.discard(d.entry_id)
        stream.queue.count -= 1
        stream.queue.size -= d.size
        self.total -= 1
        self.capacity.set()

    def release_acked(self, deliveries: list[Delivery]) -> None:
        """``release`` of deliveries of one stream acknowledged together (the common case, in bulk)."""
        stream = deliveries[0].stream
        discard = stream.in_flight.discard
        size = 0
        for d in deliveries:
            discard(d.entry_id)
            size += d.size
        queue = stream.queue
        queue.count -= len(deliveries)
        queue.size -= size
        self.total -= len(deliveries)
        self.capacity.set()
