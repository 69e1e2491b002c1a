"""Stateful model test: random sequences of everything a deployment does, checked against tests/model_ref.py.

Hypothesis drives topics (create, expand), sends (plain, keyed, batched,
delayed by ``delay=``, ``deliver_at=`` and ``delay_level=``), push members
(concurrent, orderly, key-ordered, and both in one consumer), lite pull members and
simple consumers (receive, ack some, let the others' leases end) starting
and stopping, listeners that succeed, fail n times, raise
DeadLetter or get a bad payload, DLQ replay and purge, offset resets and a
clock that fast-forwards delays; an idempotent group (duplicates made by
replays and resets are acked without a call); transactional sends that
commit, roll back or stay unknown, checks (their due time fast-forwarded)
that commit, roll back or leave them, commits repeated, and an operator's
resume, commit or rollback of discarded halves. After every step the consumers are let run
until idle (a bounded poll on progress and listener calls), then: every
message sent after its group existed was handled or is in the DLQ, nothing
lost or stuck; progress (lag, pending, retrying, dead letters) and the
delayed counts equal the model's, per queue; the DLQ holds exactly the
model's msg ids; first listener calls of orderly groups keep queue order, those
of key-ordered groups the order of each key in its queue;
no consumer ran more listener calls at once than its concurrency; nothing
was logged at error level.

Time is fast-forwarded, never slept: retries are due after 1 ms, delayed
messages are sent hours ahead and the clock rule moves their due time in
Redis to 0.

Machines: ``ModelMachine`` composes everything; a short run of it reaches some groups barely or
not at all, so focused subclasses restrict the groups and rules and start with members running and
one message of every kind sent (``first_steps``): ``PushMachine`` (concurrent, orderly, mix,
key-ordered), ``PullMachine`` (lite pull, simple, broadcasting) and ``FocusMachine`` (transactions
and the idempotent group, with two halves left unknown for the first checks). Each run counts what
it did (``reach``: listener calls, failures and dead letters per group, receives, acks and lease
ends of the simple consumer, polls, check-backs per answer, discarded halves, idempotent
duplicates...) and fails if a name of its ``must_reach`` stayed at 0: a change of rules or
profile that leaves a kind without work does not pass silently.

Profiles: CI runs a bounded, derandomized one (no example database) on both
backends. A longer search for local runs::

    RMQ_MODEL_PROFILE=long pytest tests/test_model.py -p no:cacheprovider

``KNOWN_BROKEN`` names the defects not fixed yet; each gates
the rule or check that finds it (remove the name once the fix is merged).
``RMQ_MODEL_CHECK=name,...`` checks those anyway, e.g. to see a defect's
shrunk example (``RMQ_MODEL_IDLE_TIMEOUT_S``, 20 s, bounds the wait for idle: shorter
shrinks quicker but may call a slow machine stuck)::

    RMQ_MODEL_CHECK=delay_to_push pytest tests/test_model.py -k fake -p no:cacheprovider
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, Verbosity, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from pydantic import BaseModel
from structlog.testing import capture_logs

from rmq_style import (
    AsyncAdmin,
    AsyncLitePullConsumer,
    AsyncProducer,
    AsyncSimpleConsumer,
    AsyncTransaction,
    AsyncTransactionProducer,
    DeadLetter,
    Message,
    PushConsumer,
    ReceivedMessage,
    SendResult,
    SerializationError,
    SubscriptionConflictError,
    TransactionState,
)
from rmq_style._async._io import open_client
from rmq_style._connection import drop_memory_server
from rmq_style._membership import MembershipSettings
from rmq_style._names import Keys
from rmq_style.testing import RedisServer
from tests.model_ref import KINDS, MAX_RECONSUME, TX_CHECK_MAX, GroupModel, Model, Msg, listener_outcome

# Defects known and not fixed yet; each name switches off the rule or check that finds it.
# Issue 11's six (delay_to_push, orderly_replay, one_budget, expand_running, expand_restart,
# kind_conflict) are fixed: RMQ_MODEL_CHECK is only needed for a name listed here.
KNOWN_BROKEN: frozenset[str] = frozenset()

# names given here (comma-separated) are checked anyway: to see a fix work, or a defect fail
KNOWN_BROKEN -= set(os.environ.get("RMQ_MODEL_CHECK", "").split(","))

PROFILES = {
    "ci": {"max_examples": 30, "stateful_step_count": 20},
    "long": {"max_examples": 300, "stateful_step_count": 40},
}
PROFILE = PROFILES[os.environ.get("RMQ_MODEL_PROFILE", "ci")]
IDLE_TIMEOUT_S = float(os.environ.get("RMQ_MODEL_IDLE_TIMEOUT_S", "20"))
PUSH = ("conc", "ord", "mix", "key", "idem")
# broadcasting members of one group: each is modelled as a group of its own (it owes every message
# of the topic sent after it first started), named by its instance name; b is orderly (per member)
BROADCAST = {"bca": "a", "bcb": "b"}
SETTLED = (*PUSH, "simple")  # groups that retry and dead-letter (replay, purge, reset)
FOCUS_PROFILE = {"max_examples": 5, "stateful_step_count": 20}  # the transactions machine's CI run
AREA_PROFILE = {"max_examples": 4, "stateful_step_count": 15}  # the push and pull machines' CI run
CONCURRENCY = 2
TRACED = ("conc", "ord")  # groups whose members trace every message (docs/trace.md)
MAX_QUEUES = 4
DELAYS: dict[str, Any] = {
    "delay": lambda: {"delay": timedelta(hours=1)},
    "deliver_at": lambda: {"deliver_at": datetime.now(UTC) + timedelta(hours=1)},
    "delay_level": lambda: {"delay_level": 18},
}


class Body(BaseModel):
    kind: str


class Member:
    """One running consumer and the listener calls it is running now (its peak)."""

    def __init__(self, group: str, consumer: Any, lite: bool) -> None:
        self.group, self.consumer, self.lite = group, consumer, lite
        self.running = self.peak = 0
        self.kinds: set[str] = set()


class ModelMachine(RuleBasedStateMachine):
    url = ""  # set by the test per backend
    reached: Counter[str] = Counter()  # what a run did ("call conc", "tx check commit", ...), by _run
    must_reach: tuple[str, ...] = ()  # what a run must have done (_run checks): the focused machines'
    focus = False  # True: fewer rules (no t1 creation, expansion, clock, purge nor conflicting member)
    groups = ("conc", "ord", "mix", "key", "lite", "bca", "bcb", "simple", "idem")  # members start in these
    initial: tuple[str, ...] = ()  # a member of each starts with the topics (the first step)
    transactions = True  # the transactional rules run

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.logs = capture_logs()
        self.events = self.logs.__enter__()
        uid = uuid.uuid4().hex[:8]
        self.t0, self.t1 = f"t0-{uid}", f"t1-{uid}"
        self.model = Model()
        self.names = {g: f"{g}-{uid}" for g in ("conc", "ord", "mix", "key", "lite", "simple", "idem")}
        self.names |= dict.fromkeys(BROADCAST, f"bc-{uid}")
        specs = {
            "conc": {self.t0: "concurrent"},
            "ord": {self.t0: "orderly"},
            "mix": {self.t0: "orderly", self.t1: "concurrent"},
            "key": {self.t0: "key"},  # keyed sends carry their key (keys=[key]); the others share one
            "lite": {self.t0: "lite"},
            "bca": {self.t0: "concurrent"},  # broadcasting members (BROADCAST)
            "bcb": {self.t0: "orderly"},
            "simple": {self.t0: "simple"},
            "idem": {self.t0: "concurrent"},  # idempotent=True
        }
        for g, subs in specs.items():
            self.model.groups[g] = GroupModel(g, subs, idempotent=g == "idem")
        self.members: dict[str, list[Member]] = {g: [] for g in specs}
        self.calls: dict[str, Counter[str]] = {g: Counter() for g in specs}  # group -> msg id -> calls
        # first calls of orderly groups per queue, of key-ordered ones per (queue, key): queue offsets
        self.firsts: dict[tuple[Any, ...], list[int]] = {}
        self.polled: dict[str, set[str]] = {"lite": set()}
        self.trail: list[str] = []  # what was done, for the failure message
        self.admin = self.run(_make(AsyncAdmin, self.url))
        # route_ttl_s=0: sends reach the queues of an expansion at once
        self.producer = self.run(_make(AsyncProducer, self.url, route_ttl_s=0))
        self.tx_group = f"txg-{uid}"
        self.tx: AsyncTransactionProducer | None = None  # made by the first transactional send
        self.tx_answer = TransactionState.UNKNOWN  # what the checker answers
        self.committed: list[tuple[AsyncTransaction, SendResult]] = []

    def run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    def reach(self, what: str, n: int = 1) -> None:
        type(self).reached[what] += n

    def teardown(self) -> None:
        try:  # the members stop side by side: each stop waits for its loops
            self.run(_close_all([m for members in self.members.values() for m in members]))
            self.run(self.producer.close())
            if self.tx is not None:
                self.run(self.tx.close())
            self.run(self.admin.close())
        finally:
            self.runner.close()
            self.logs.__exit__(None, None, None)

    # -- topics and sends -----------------------------------------------------------------------

    @initialize(queues=st.integers(1, 3), t1_queues=st.integers(0, 2))
    def create_t0(self, queues: int, t1_queues: int) -> None:
        """t0 at once; t1 too, or later by create_t1 (t1_queues=0)."""
        self.run(self.admin.create_topic(self.t0, queues=queues))
        self.model.topics[self.t0] = queues
        self.trail.append(f"create t0 queues={queues}")
        if t1_queues or any(self.t1 in self.model.groups[g].subs for g in self.initial):
            self.create_t1(t1_queues or 1)
        self.first_steps()

    def first_steps(self) -> None:
        """What a focused machine does before its random steps: start a member of each group of
        ``initial``, then send one message of every kind to each topic (every listener path is taken)."""
        for group in self.initial:
            self._start_member(group)
        if self.initial:
            for topic in self.model.topics:
                self._send(topic, "keyed", list(KINDS), "k1")

    @precondition(lambda self: not self.focus and self.t1 not in self.model.topics)
    @rule(queues=st.integers(1, 2))
    def create_t1(self, queues: int) -> None:
        self.run(self.admin.create_topic(self.t1, queues=queues))
        self.model.topics[self.t1] = queues
        self.trail.append(f"create t1 queues={queues}")

    def _expandable(self) -> list[str]:
        out = []
        for topic, count in self.model.topics.items():
            push = [g for g in PUSH if topic in self.model.groups[g].subs]
            if count >= MAX_QUEUES:
                continue
            if "expand_running" in KNOWN_BROKEN and any(self.model.groups[g].running for g in push):
                continue
            stopped = [g for g in push if self.model.groups[g].started and not self.model.groups[g].running]
            if "expand_restart" in KNOWN_BROKEN and stopped:
                continue
            out.append(topic)
        return out

    @precondition(lambda self: not self.focus and self._expandable())
    @rule(data=st.data(), extra=st.integers(1, 2))
    def expand(self, data: st.DataObject, extra: int) -> None:
        topic = data.draw(st.sampled_from(self._expandable()), label="topic")
        count = min(self.model.topics[topic] + extra, MAX_QUEUES)
        self.run(self.admin.expand_topic(topic, count))
        self.model.topics[topic] = count
        self.trail.append(f"expand {topic} to {count}")
        self.reach("expand")

    @rule(
        which=st.sampled_from(["t0", "t1", "both"]),
        how=st.sampled_from(["plain", "keyed", "batch", *DELAYS]),
        kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=4),
        key=st.sampled_from(["k1", "k2", "k3"]),
    )
    def send(self, which: str, how: str, kinds: list[str], key: str) -> None:
        """Send to t0, t1 (t0 while it does not exist) or both: the same kinds to each."""
        topics = [self.t0, self.t1] if which == "both" else [self.t1 if which == "t1" else self.t0]
        topics = [t for t in topics if t in self.model.topics] or [self.t0]
        for topic in topics:
            self._send(topic, how, kinds, key)

    def _send(self, topic: str, how: str, kinds: list[str], key: str) -> None:
        keys = [key] if how == "keyed" else []  # the key-ordered group's ordering key
        messages = [Message(topic, {"kind": k} if k != "bad" else b"\xff not json", keys=keys) for k in kinds]
        options: dict[str, Any] = DELAYS[how]() if how in DELAYS else {}
        if how == "keyed":
            options["sharding_key"] = key
        if how == "batch":
            results = self.run(self.producer.send_batch(messages, **options))
        else:
            results = [self.run(self.producer.send(m, **options)) for m in messages]
        sent = [(k, r.queue.queue_id, r.msg_id) for k, r in zip(kinds, results, strict=True)]
        self.trail.append(f"send {how} to {topic}: {sent}")
        for kind, r in zip(kinds, results, strict=True):
            self.model.send(Msg(r.msg_id, topic, r.queue.queue_id, kind, released=how not in DELAYS))

    @precondition(lambda self: not self.focus)
    @rule()
    def advance_clock(self) -> None:
        """Fast-forward: every delayed message is due now (its score in the delay zset becomes 0)."""
        self.run(self._fast_forward())
        self.trail.append("advance clock")
        self.reach("advance clock", sum(1 for m in self.model.msgs.values() if not m.released))
        self.model.advance_clock()
        if "delay_to_push" in KNOWN_BROKEN:  # the workaround: an operator's release
            for topic in self.model.topics:
                self.run(self.admin.release_due(topic))
                self.model.release_due(topic)

    async def _fast_forward(self) -> None:
        client = open_client(self.url)
        try:
            for topic, count in self.model.topics.items():
                for q in range(count):
                    key = Keys().queue(topic, q).delay
                    due = await client.zrange(key, 0, -1)
                    if due:
                        await client.zadd(key, dict.fromkeys(due, 0))
        finally:
            await client.aclose()

    # -- members --------------------------------------------------------------------------------

    def _can_start(self, group: str) -> bool:
        subs = self.model.groups[group].subs
        most = 1 if group in BROADCAST else 2  # a broadcasting member is one instance name
        return len(self.members[group]) < most and all(t in self.model.topics for t in subs)

    def _startable(self) -> list[str]:
        return [g for g in self.groups if g != "simple" and self._can_start(g)]

    @precondition(lambda self: self._startable())
    @rule(data=st.data())
    def start_member(self, data: st.DataObject) -> None:
        self._start_member(data.draw(st.sampled_from(self._startable()), label="group"))

    @precondition(lambda self: "simple" in self.groups and self._can_start("simple"))
    @rule()
    def start_simple(self) -> None:
        """A simple consumer (a rule of its own: as often as a push or lite member starts)."""
        self._start_member("simple")

    def _start_member(self, group: str) -> None:
        self.members[group].append(self.run(self._start(group)))
        self.trail.append(f"start {group} member {len(self.members[group])}")
        self.model.start_member(group)

    async def _start(self, group: str, flip: bool = False) -> Member:
        subs = self.model.groups[group].subs
        name = self.names[group]
        if "simple" in subs.values():
            simple = AsyncSimpleConsumer(
                self.url, name, {self.t0: "*"}, await_duration=0, max_attempts=MAX_RECONSUME + 1,
                route_ttl_s=0,
            )  # fmt: skip
            member = Member(group, simple, lite=False)
            await self._receive(member)  # its groups exist from now on (consume_from "last")
            return member
        if "lite" in subs.values():
            lite = AsyncLitePullConsumer(
                self.url, name, consume_from="first", heartbeat_interval_ms=100, member_expiry_ms=3000,
                route_ttl_s=0, bounds_ttl_ms=0, auto_commit=False, poll_timeout_s=0,
            )  # fmt: skip
            member = Member(group, lite, lite=True)
            for topic in subs:
                await lite.subscribe(topic, "*")
            return member
        model = (
            {"message_model": "broadcasting", "instance_name": BROADCAST[group]} if group in BROADCAST else {}
        )
        consumer = PushConsumer(
            self.url, name, **model, concurrency=CONCURRENCY, consume_from="last", poll_timeout_ms=100,
            retry_delays_ms=(1,), retry_poll_ms=20, max_reconsume_times=MAX_RECONSUME,
            suspend_current_queue_time_ms=5, orderly_lease_ms=3000, shutdown_timeout_ms=5000,
            reconnect_backoff_ms=20, reconnect_backoff_max_ms=200,
            membership=MembershipSettings(heartbeat_interval_ms=100, member_expiry_ms=3000),
            message_trace="all" if group in TRACED else "follow",  # docs/trace.md: see _trace_differences
        )  # fmt: skip
        member = Member(group, consumer, lite=False)
        for topic, kind in subs.items():
            if kind == "key" and not flip:
                member.kinds.add("key")
                consumer.subscribe(topic, "*", self._listener(member, "key"), model=Body, order="key")
                continue
            orderly = (kind == "orderly") != flip
            member.kinds.add("orderly" if orderly else "concurrent")
            consumer.subscribe(
                topic, "*", self._listener(member, "queue" if orderly else None), model=Body,
                orderly=orderly, idempotent=self.model.groups[group].idempotent or None,
            )  # fmt: skip
        await consumer.start()
        return member

    def _listener(self, member: Member, order: str | None) -> Any:
        calls = self.calls[member.group]

        async def on_message(body: Body, msg: ReceivedMessage) -> None:
            member.running += 1
            member.peak = max(member.peak, member.running)
            try:
                attempt = calls[msg.msg_id]
                calls[msg.msg_id] += 1
                if order is not None and attempt == 0:
                    where: tuple[Any, ...] = (member.group, msg.topic, msg.queue_id)
                    if order == "key":
                        where += (msg.keys[:1],)
                    self.firsts.setdefault(where, []).append(msg.queue_offset)
                await asyncio.sleep(0.005)  # long enough for calls to overlap
                outcome = listener_outcome(body.kind, attempt)
            finally:
                member.running -= 1
            self.reach(f"call {member.group}")
            if outcome != "ok":
                self.reach(f"{outcome} {member.group}")
            if outcome == "fail":
                raise RuntimeError("model: planned failure")
            if outcome == "dead":
                raise DeadLetter("model: planned dead letter")

        return on_message

    @precondition(lambda self: any(self.members.values()))
    @rule(data=st.data())
    def stop_member(self, data: st.DataObject) -> None:
        group = data.draw(st.sampled_from([g for g, ms in self.members.items() if ms]), label="group")
        members = self.members[group]
        member = members.pop(data.draw(st.integers(0, len(members) - 1), label="member"))
        self._check_peak(member)
        self.trail.append(f"stop {group} member")
        self.run(_close(member))
        self.model.groups[group].running -= 1

    @precondition(
        lambda self: (
            not self.focus and "kind_conflict" not in KNOWN_BROKEN and self._running(["conc", "ord", "key"])
        )
    )
    @rule(data=st.data())
    def conflicting_member(self, data: st.DataObject) -> None:
        """A member subscribing the group's topic with another listener kind is refused."""
        group = data.draw(st.sampled_from(self._running(["conc", "ord", "key"])), label="group")
        try:
            member = self.run(self._start(group, flip=True))
        except SubscriptionConflictError:
            return
        self.run(_close(member))
        raise AssertionError(f"{group}: a member with the other listener kind was not refused")

    # -- operations -----------------------------------------------------------------------------

    def _running(self, groups: list[str]) -> list[str]:
        return [g for g in groups if self.members[g]]

    def _started(self, broadcast: bool = False) -> list[str]:
        groups = [*SETTLED, *BROADCAST] if broadcast else SETTLED
        return [g for g in groups if self.model.groups[g].started]

    @precondition(lambda self: self._started(broadcast=True))
    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        group = data.draw(st.sampled_from(self._started(broadcast=True)), label="group")
        g = self.model.groups[group]
        records = self._dead_letters(group, self.run(self.admin.dead_letters(self.names[group])))
        if "orderly_replay" in KNOWN_BROKEN:
            records = [r for r in records if g.subs[r.message.topic] != "orderly"]
        # copies of one msg id replayed at once to the idempotent group: the first is claimed, the
        # others are "in progress" and retried, and a pending retry is one per msg id (docs/storage.md,
        # "Retry"): how many copies end in the DLQ again depends on timing; one copy per msg id does not
        if g.idempotent:
            records = list({r.message.msg_id: r for r in reversed(records)}.values())[::-1]
        self.trail.append(f"replay {group}: {[r.message.msg_id for r in records]}")
        self.reach(f"replay {group}", len(records))
        replayed = self.run(self.admin.replay_dead_letters(self.names[group], records))
        assert replayed == len(records)
        self.model.replay(group, Counter(r.message.msg_id for r in records))

    @precondition(lambda self: not self.focus and self._started(broadcast=True))
    @rule(data=st.data())
    def purge(self, data: st.DataObject) -> None:
        group = data.draw(st.sampled_from(self._started(broadcast=True)), label="group")
        self.run(self.admin.purge_dead_letters(self.names[group]))
        self.trail.append(f"purge {group}")
        self.reach(f"purge {group}")
        for same in BROADCAST if group in BROADCAST else (group,):  # every member's dead letters
            self.model.purge(same)

    def _dead_letters(self, group: str, records: list[Any]) -> list[Any]:
        """The records of *group*; of a broadcasting member: those naming it."""
        if group not in BROADCAST:
            return records
        return [r for r in records if r.member == BROADCAST[group]]

    @precondition(lambda self: self._started())
    @rule(data=st.data(), to=st.sampled_from(["first", "last"]))
    def reset_offset(self, data: st.DataObject, to: str) -> None:
        group = data.draw(st.sampled_from(self._started()), label="group")
        g = self.model.groups[group]
        for topic in g.subs:
            self.run(self.admin.reset_offset(self.names[group], topic, to))
        self.model.reset(group, to)
        # a reset starts a new pass: messages never called before may come before those called
        for where in [w for w in self.firsts if w[0] == group]:
            del self.firsts[where]
        self.trail.append(f"reset {group} to {to}")
        self.reach(f"reset {group}")

    @precondition(lambda self: self.model.groups["idem"].started)
    @rule()
    def redeliver_idem(self) -> None:
        """Every message of the idempotent group delivered again (reset to first): duplicates."""
        self.run(self.admin.reset_offset(self.names["idem"], self.t0, "first"))
        self.model.reset("idem", "first")
        self.trail.append("reset idem to first")

    # -- transactional messages -----------------------------------------------------------------

    @precondition(lambda self: self.transactions)
    @rule(end=st.sampled_from(["commit", "rollback", "unknown"]), kind=st.sampled_from(KINDS))
    def tx_send(self, end: str, kind: str) -> None:
        """A transaction of one message to t0 that commits, rolls back or is left to the checks."""
        if self.tx is None:
            self.tx = self.run(_make_tx(self.url, self.tx_group, lambda m: self.tx_answer))
        body: Any = {"kind": kind} if kind != "bad" else b"\xff not json"
        tx, half = self.run(_begin(self.tx, Message(self.t0, body)))
        msg = Msg(half.msg_id, self.t0, half.queue.queue_id, kind)
        self.trail.append(f"tx {end} {kind} {(half.queue.queue_id, half.msg_id)}")
        self.reach(f"tx {end}")
        self.model.tx_pending(msg)
        if end == "unknown":
            return
        if end == "commit":
            self.committed.append((tx, self.run(tx.commit())))
        else:
            self.run(tx.rollback())
        self.model.tx_end(half.msg_id, end == "commit")

    @precondition(lambda self: self.committed)
    @rule(data=st.data())
    def tx_commit_again(self, data: st.DataObject) -> None:
        """A repeated commit returns the first one's entry and sends nothing more."""
        tx, first = data.draw(st.sampled_from(self.committed), label="transaction")
        again = self.run(tx.commit())
        assert (again.msg_id, again.offset, again.queue_offset) == (
            first.msg_id,
            first.offset,
            first.queue_offset,
        )
        self.trail.append(f"tx commit again {first.msg_id}")
        self.reach("tx commit again")

    @precondition(lambda self: self.tx is not None)
    @rule(answer=st.sampled_from(list(TransactionState)))
    def tx_check(self, answer: TransactionState) -> None:
        """A check look with every pending half due now (their due time fast-forwarded)."""
        self._tx_looks(answer, 1)

    @precondition(lambda self: self.model.tx_ids(discarded=False))
    @rule()
    def tx_check_until_discarded(self) -> None:
        """Check looks answering UNKNOWN until every pending half is discarded."""
        self._tx_looks(TransactionState.UNKNOWN, TX_CHECK_MAX + 1)

    def _tx_looks(self, answer: TransactionState, looks: int) -> None:
        assert self.tx is not None
        self.tx_answer = answer
        for _ in range(looks):
            self.run(self._tx_fast_forward())
            report = self.run(self.tx.check_once())
            discarded = len(self.model.tx_ids(discarded=True))
            checked = self.model.tx_check(answer.name.lower())
            self.reach("tx discarded", len(self.model.tx_ids(discarded=True)) - discarded)
            self.reach(f"tx check {answer.name.lower()}", len(checked))
            self.trail.append(f"tx check {answer.name}: {checked}")
            assert report.checked == len(checked), (report, checked)

    async def _tx_fast_forward(self) -> None:
        client = open_client(self.url)
        try:
            for msg_id, half in self.model.halves.items():
                if not half.discarded:
                    key = Keys().queue(half.msg.topic, half.msg.queue).half_checks(self.tx_group)
                    await client.zadd(key, {msg_id: 0}, xx=True)
        finally:
            await client.aclose()

    @precondition(lambda self: self.model.tx_ids(discarded=True))
    @rule(data=st.data(), action=st.sampled_from(["resume", "commit", "rollback"]))
    def tx_admin(self, data: st.DataObject, action: str) -> None:
        """An operator resumes, commits or rolls back a discarded half."""
        msg_id = data.draw(st.sampled_from(sorted(self.model.tx_ids(discarded=True))), label="half")
        self.trail.append(f"tx admin {action} {msg_id}")
        self.reach(f"tx admin {action}")
        if action == "resume":
            self.run(self.admin.resume_transaction(self.tx_group, msg_id))
            self.model.tx_resume(msg_id)
        elif action == "commit":
            self.run(self.admin.commit_transaction(self.tx_group, msg_id))
            self.model.tx_end(msg_id, commit=True)
        else:
            self.run(self.admin.rollback_transaction(self.tx_group, msg_id))
            self.model.tx_end(msg_id, commit=False)

    # -- checks ---------------------------------------------------------------------------------

    @invariant()
    def idle_and_as_modelled(self) -> None:
        if not self.model.topics:
            return
        duplicates = self.model.groups["idem"].duplicates
        self.model.settle(self._releasing())
        self.reach("duplicate idem", self.model.groups["idem"].duplicates - duplicates)
        self.run(self._until_idle())
        for members in self.members.values():
            for m in members:
                self._check_peak(m)
        for where, offsets in self.firsts.items():
            assert offsets == sorted(offsets), f"{where} first calls out of queue order: {offsets}"
        errors = [
            e for e in self.events
            if e.get("log_level") in ("error", "critical") and e["event"] != "transaction.discarded"
        ]  # fmt: skip
        assert not errors, errors

    def _releasing(self) -> set[str]:
        """Topics whose due delayed messages a running member releases."""
        topics = set()
        for g in self.model.groups.values():
            if g.running and (g.lite or "delay_to_push" not in KNOWN_BROKEN):
                topics |= set(g.subs)
        return topics

    def _check_peak(self, m: Member) -> None:
        bound = CONCURRENCY
        if "one_budget" in KNOWN_BROKEN:
            bound *= len(m.kinds) or 1
        assert m.peak <= bound, f"{m.group}: {m.peak} listener calls at once, concurrency {CONCURRENCY}"

    async def _until_idle(self) -> None:
        deadline = time.monotonic() + IDLE_TIMEOUT_S
        while True:
            await self._poll_lite()
            for m in self.members["simple"]:
                await self._receive(m)
            differences = await self._differences()
            if not differences:
                differences = await self._trace_differences()
            if not differences:
                return
            if time.monotonic() > deadline:
                listed = "\n  ".join(differences)
                trail = "\n  ".join(self.trail)
                raise AssertionError(
                    f"not as modelled after {IDLE_TIMEOUT_S} s:\n  {listed}\nsteps:\n  {trail}"
                )
            await asyncio.sleep(0.02)

    async def _receive(self, member: Member) -> None:
        """A simple member's round: receive; ack what the push listener would handle; let the rest's
        leases end (half by changing the invisible duration to 0, half by fast-forwarding the lease)."""
        consumer, calls = member.consumer, self.calls[member.group]
        for msg in await consumer.receive(32, 30):
            self.reach("receive simple")
            attempt = calls[msg.msg_id]
            calls[msg.msg_id] += 1
            try:
                kind = msg.decode(Body).kind
            except SerializationError:
                kind = "bad"
            if kind != "bad" and listener_outcome(kind, attempt) == "ok":
                await consumer.ack(msg)
                self.reach("ack simple")
                continue
            self.reach("lease simple")
            if attempt % 2:
                await consumer.change_invisible_duration(msg, 0)
        client = open_client(self.url)
        try:  # the leases left: as if their invisible duration ended
            for q in range(self.model.topics[self.t0]):
                key = Keys().queue(self.t0, q).invisible(self.names[member.group])
                leased = await client.zrange(key, 0, -1)
                if leased:
                    await client.zadd(key, dict.fromkeys(leased, 0))
        finally:
            await client.aclose()

    async def _trace_differences(self) -> list[str]:
        """Groups conc and ord trace every message (message_trace="all"): one trace record per
        listener call, and one ``dead`` among them for a message in the group's DLQ."""
        out: list[str] = []
        for group in TRACED:
            if not self.model.groups[group].started:
                continue
            name, dead = self.names[group], self.model.dead_ids(group)
            for msg_id, calls in self.calls[group].items():
                traces = await self.admin.trace(msg_id, self.t0)
                steps = [s for t in traces for s in t.steps if s.event == "sub" and s.group == name]
                if len(steps) != calls:
                    out.append(f"{group}: {msg_id} has {calls} listener calls and {len(steps)} trace records")
                elif msg_id in dead and "dead" not in (outcomes := [s.outcome for s in steps]):
                    out.append(f"{group}: {msg_id} is a dead letter, its trace says {outcomes}")
        return out

    async def _poll_lite(self) -> None:
        for m in self.members["lite"]:
            for msg in await m.consumer.poll(timeout=0):
                self.reach("poll lite")
                self.polled["lite"].add(msg.msg_id)
            await m.consumer.commit_sync()

    async def _differences(self) -> list[str]:
        out: list[str] = []
        for group, g in self.model.groups.items():
            if not g.started:
                continue
            name = self.names[group]
            if g.lite:
                missing = self.model.polled(group) - self.polled[group]
                out += [f"lite: not polled {sorted(missing)}"] if missing else []
            else:
                want, got = self.model.attempts(group), {k: v for k, v in self.calls[group].items() if v}
                if want != got:
                    diff = {k: (want.get(k, 0), got.get(k, 0)) for k in want.keys() | got.keys()}
                    out.append(f"{group}: listener calls (model, seen) {_unequal(diff)}")
                records = self._dead_letters(group, await self.admin.dead_letters(name, limit=10_000))
                dead = Counter(r.message.msg_id for r in records)
                if dead != self.model.dead_ids(group):
                    out.append(
                        f"{group}: DLQ msg ids {dict(dead)} != model {dict(self.model.dead_ids(group))}"
                    )
            for topic in g.subs:
                for row in await self.admin.progress(name, topic):
                    p, q = row.progress, row.progress.queue.queue_id
                    got_row = (p.lag, p.pending, row.retrying, row.dead_letters)
                    if group in BROADCAST:
                        got_row = _member_row(group, row, records)
                    want_row = self.model.progress(group, topic, q)
                    assert min(got_row) >= 0, f"{group} {topic}:{q} negative progress {got_row}"
                    if got_row != want_row:
                        out.append(
                            f"{group} {topic}:{q} (lag, pending, retrying, dead) {got_row} != {want_row}"
                        )
        if self.tx is not None:
            for discarded in (False, True):
                records = await (
                    self.admin.discarded_transactions(self.tx_group)
                    if discarded
                    else self.admin.pending_transactions(self.tx_group)
                )
                got_ids, want_ids = {r.msg_id for r in records}, self.model.tx_ids(discarded)
                if got_ids != want_ids:
                    out.append(f"{'discarded' if discarded else 'pending'} halves {got_ids} != {want_ids}")
        for topic in self.model.topics:
            info = await self.admin.describe_topic(topic)
            for qi in info.queues:
                want = self.model.delayed(topic, qi.queue_id)
                if qi.delayed != want:
                    out.append(f"{topic}:{qi.queue_id} delayed {qi.delayed} != {want}")
        return out


def _member_row(group: str, row: Any, records: list[Any]) -> tuple[int, int, int, int]:
    """(lag, pending, retrying, dead letters) of a broadcasting member in one queue: a member without
    a position there yet (the queue was added while it was stopped) will read it from its start."""
    queue = row.progress.queue
    dead = sum(1 for r in records if (r.message.topic, r.message.queue_id) == (queue.topic, queue.queue_id))
    for m in row.members:
        if m.instance == BROADCAST[group]:
            return m.lag, 0, m.retrying, dead
    return row.progress.max_queue_offset, 0, 0, dead


def _unequal(diff: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    return {k: v for k, v in sorted(diff.items()) if v[0] != v[1]}


async def _make(cls: Any, url: str, **options: Any) -> Any:
    return cls(url, **options)  # clients bind to the running loop: build them inside it


async def _make_tx(url: str, group: str, checker: Any) -> AsyncTransactionProducer:
    # checks due at once and 1 ms after an UNKNOWN (fast-forwarded anyway); no background loop
    return AsyncTransactionProducer(
        url, group, checker, transaction_timeout_ms=0, check_interval_ms=1, check_max=TX_CHECK_MAX,
        check_in_background=False, resolved_memory_ms=3_600_000,
    )  # fmt: skip


async def _begin(producer: AsyncTransactionProducer, message: Message) -> tuple[AsyncTransaction, Any]:
    tx = await producer.begin()
    return tx, await tx.send(message)


async def _close_all(members: list[Member]) -> None:
    await asyncio.gather(*(_close(m) for m in members))


async def _close(member: Member) -> None:
    if member.lite or isinstance(member.consumer, AsyncSimpleConsumer):
        await member.consumer.close()
    else:
        await member.consumer.stop()


@pytest.fixture(params=["real", "fake"])
def model_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """One server for every example: each example uses topics and groups of its own."""
    if request.param == "real":
        server: RedisServer = request.getfixturevalue("redis_server")
        yield server.url
        return
    name = f"model-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    drop_memory_server(name)


@pytest.mark.timeout(600)
def test_model(model_url: str) -> None:
    _run(ModelMachine, model_url, PROFILE)


class FocusMachine(ModelMachine):
    """Transactions, the idempotent and an orderly group; no topic changes."""

    focus, groups, initial = True, ("idem", "ord"), ("idem",)
    must_reach = (
        "call idem", "fail idem", "duplicate idem", "tx commit", "tx rollback", "tx check commit",
        "tx check rollback", "tx check unknown", "tx discarded",
    )  # fmt: skip

    def first_steps(self) -> None:
        """The idempotent group's member and messages, and two transactions left unknown: the first
        checks have halves to check back."""
        super().first_steps()
        self.tx_send("unknown", "ok")
        self.tx_send("unknown", "fail1")


@pytest.mark.timeout(600)
def test_model_transactions_and_idempotence(model_url: str) -> None:
    """The same machine with fewer rules, so a short run reaches discarded halves and redeliveries
    to the idempotent group."""
    _run(FocusMachine, model_url, FOCUS_PROFILE)


class PushMachine(ModelMachine):
    """The push groups only, each with a member from the start; no transactions."""

    groups = initial = ("conc", "ord", "mix", "key")
    transactions = False
    must_reach = tuple(f"{what} {g}" for g in groups for what in ("call", "fail", "dead"))


@pytest.mark.timeout(600)
def test_model_push(model_url: str) -> None:
    _run(PushMachine, model_url, AREA_PROFILE)


class PullMachine(ModelMachine):
    """Lite pull, simple and broadcasting members only, each running from the start; no transactions."""

    groups = initial = ("lite", "simple", "bca", "bcb")
    transactions = False
    must_reach = (
        "poll lite", "receive simple", "ack simple", "lease simple", "call bca", "fail bca", "call bcb",
        "fail bcb",
    )  # fmt: skip


@pytest.mark.timeout(600)
def test_model_pull_and_broadcast(model_url: str) -> None:
    _run(PullMachine, model_url, AREA_PROFILE)


def _run(machine_class: type[ModelMachine], url: str, profile: dict[str, int]) -> None:
    machine_class.url = url
    machine = machine_class.TestCase
    machine.settings = settings(
        **(profile if os.environ.get("RMQ_MODEL_PROFILE", "ci") == "ci" else PROFILES["long"]),
        deadline=None,
        derandomize=os.environ.get("RMQ_MODEL_PROFILE", "ci") == "ci",
        database=None,
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.verbose if os.environ.get("RMQ_MODEL_VERBOSE") else Verbosity.normal,
    )
    machine_class.reached = Counter()
    machine().runTest()
    missing = [what for what in machine_class.must_reach if not machine_class.reached[what]]
    assert not missing, f"{machine_class.__name__} never reached {missing}: {dict(machine_class.reached)}"
