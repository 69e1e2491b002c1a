"""The plain-Python reference model of tests/test_model.py: what each consumer group owes.

Pure bookkeeping, no I/O. A message is *released* when it enters its queue's
stream (at once, or when its delay is due and something releases it). Each
group keeps, per message, how many deliveries it still owes (``owed``: unread
in the stream; ``retrying``: replayed into its retry stream while no member
ran), how many copies sit in its dead-letter queue, and how many listener
calls it has seen. A running group settles at once: every owed delivery
becomes a cycle of up to ``MAX_RECONSUME + 1`` listener calls that ends
handled or dead-lettered, decided by the message's kind. An idempotent group
calls its listener for none of the cycles of a message it handled already
(a redelivery or a replay of it is a duplicate, acked without a call).

Transactional messages (a producer group's half messages) are pending until a
commit (the message is sent then), a rollback or a check decides; a pending
half found due after ``TX_CHECK_MAX`` checks is discarded, and an operator may
resume (checks 0), commit or roll back a discarded one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

MAX_RECONSUME = 2  # the consumers' max_reconsume_times: 3 listener calls per delivery
TX_CHECK_MAX = 2  # the transactional producer's check_max
KINDS = ("ok", "fail1", "fail2", "fail5", "dead", "bad")
_FAILS = {"ok": 0, "fail1": 1, "fail2": 2, "fail5": 5, "dead": 0, "bad": 0}


def listener_outcome(kind: str, attempt: int) -> str:
    """What a listener does at its *attempt*-th call (0-based, per group) of a message: ok, fail, dead.

    ``fail5`` outlives one delivery (dead-lettered), then succeeds once replayed;
    ``dead`` raises DeadLetter at its first call only; ``bad`` never reaches a listener.
    """
    if kind == "dead":
        return "dead" if attempt == 0 else "ok"
    return "fail" if attempt < _FAILS[kind] else "ok"


def run_cycle(kind: str, attempts: int) -> tuple[int, bool]:
    """One delivery of a message: (listener calls so far after it, handled?)."""
    if kind == "bad":
        return attempts, False  # the payload does not validate: straight to the DLQ
    for _ in range(MAX_RECONSUME + 1):
        outcome = listener_outcome(kind, attempts)
        attempts += 1
        if outcome != "fail":
            return attempts, outcome == "ok"
    return attempts, False


def run_simple_cycle(kind: str, attempts: int) -> tuple[int, bool]:
    """One delivery of a message to a simple consumer: (deliveries so far after it, acknowledged?).

    The member acks when the push listener would succeed and lets the lease end otherwise (also for
    ``bad``, whose body does not decode): after ``MAX_RECONSUME + 1`` deliveries the next receive
    dead-letters it.
    """
    for _ in range(MAX_RECONSUME + 1):
        outcome = "fail" if kind == "bad" else listener_outcome(kind, attempts)
        attempts += 1
        if outcome == "ok":
            return attempts, True
    return attempts, False


@dataclass(slots=True)
class Msg:
    msg_id: str
    topic: str
    queue: int
    kind: str
    released: bool = True
    due: bool = False  # delayed and fast-forwarded past its due time, not yet released


@dataclass(slots=True)
class Half:
    """A transactional message not committed nor rolled back yet."""

    msg: Msg
    checks: int = 0
    discarded: bool = False


@dataclass(slots=True)
class Fate:
    """One message as one group sees it."""

    owed: int = 0  # unread in the queue stream (0 or 1)
    retrying: int = 0  # replayed into the retry stream while the group did not run
    dlq: int = 0  # copies in the group's dead-letter queue
    attempts: int = 0  # listener calls
    handled: int = 0  # successful listener calls (lite pull: polls)


@dataclass(slots=True)
class GroupModel:
    name: str
    subs: dict[str, str]  # topic -> "concurrent" | "orderly" | "key" | "lite" | "simple"
    running: int = 0  # members running now
    started: bool = False
    idempotent: bool = False  # listener calls deduplicated by msg id
    duplicates: int = 0  # deliveries an idempotent group acked without a call
    fates: dict[str, Fate] = field(default_factory=dict)

    @property
    def lite(self) -> bool:
        return "lite" in self.subs.values()

    @property
    def simple(self) -> bool:
        return "simple" in self.subs.values()


@dataclass
class Model:
    topics: dict[str, int] = field(default_factory=dict)  # queue counts
    msgs: dict[str, Msg] = field(default_factory=dict)
    groups: dict[str, GroupModel] = field(default_factory=dict)
    halves: dict[str, Half] = field(default_factory=dict)  # msg id -> pending or discarded half

    def send(self, msg: Msg) -> None:
        self.msgs[msg.msg_id] = msg
        if msg.released:
            self._enter_stream(msg)

    def _enter_stream(self, msg: Msg) -> None:
        msg.released, msg.due = True, False
        for g in self.groups.values():
            if g.started and msg.topic in g.subs:
                g.fates.setdefault(msg.msg_id, Fate()).owed = 1

    def advance_clock(self) -> None:
        for m in self.msgs.values():
            if not m.released:
                m.due = True

    def release_due(self, topic: str) -> None:
        for m in self.msgs.values():
            if m.topic == topic and m.due:
                self._enter_stream(m)

    def start_member(self, group: str) -> None:
        g = self.groups[group]
        if not g.started and g.lite:  # lite members start at the first entry, push groups after the last
            for m in self.msgs.values():
                if m.released and m.topic in g.subs:
                    g.fates.setdefault(m.msg_id, Fate()).owed = 1
        g.started = True
        g.running += 1

    def settle(self, releasing: set[str]) -> None:
        """What the running members do before they are idle: release due delays of *releasing* topics
        (those a running member releases), handle or dead-letter everything owed."""
        for topic in releasing:
            self.release_due(topic)
        for g in self.groups.values():
            if not g.running:
                continue
            for msg_id, fate in g.fates.items():
                cycles, fate.owed, fate.retrying = fate.owed + fate.retrying, 0, 0
                for _ in range(cycles):
                    if g.lite:
                        fate.handled += 1
                        continue
                    if g.idempotent and fate.handled:
                        g.duplicates += 1
                        continue  # a duplicate: acked without a call
                    cycle = run_simple_cycle if g.simple else run_cycle
                    fate.attempts, handled = cycle(self.msgs[msg_id].kind, fate.attempts)
                    if handled:
                        fate.handled += 1
                    else:
                        fate.dlq += 1

    def replay(self, group: str, ids: Counter[str]) -> None:
        """The dead letters *ids* (msg id -> copies) go back to the group's retry stream."""
        g = self.groups[group]
        for msg_id, copies in ids.items():
            fate = g.fates[msg_id]
            assert fate.dlq >= copies, (msg_id, fate)
            fate.dlq -= copies
            fate.retrying += copies

    def purge(self, group: str) -> None:
        for fate in self.groups[group].fates.values():
            fate.dlq = 0

    def reset(self, group: str, to: str) -> None:
        """reset-offset to ``first`` (every released message unread again) or ``last`` (none)."""
        g = self.groups[group]
        for m in self.msgs.values():
            if m.released and m.topic in g.subs:
                if to == "first":
                    g.fates.setdefault(m.msg_id, Fate()).owed = 1
                elif m.msg_id in g.fates:
                    g.fates[m.msg_id].owed = 0

    # -- transactional messages ---------------------------------------------------------------------

    def tx_pending(self, msg: Msg) -> None:
        self.halves[msg.msg_id] = Half(msg)

    def tx_end(self, msg_id: str, commit: bool) -> None:
        half = self.halves.pop(msg_id)
        if commit:
            self.send(half.msg)

    def tx_check(self, answer: str) -> list[str]:
        """A look of the checker answering *answer* to every due half; the msg ids it checked."""
        checked = []
        for msg_id, half in list(self.halves.items()):
            if half.discarded:
                continue
            if half.checks >= TX_CHECK_MAX:
                half.discarded = True
                continue
            half.checks += 1
            checked.append(msg_id)
            if answer != "unknown":
                self.tx_end(msg_id, answer == "commit")
        return checked

    def tx_resume(self, msg_id: str) -> None:
        half = self.halves[msg_id]
        half.discarded, half.checks = False, 0

    def tx_ids(self, discarded: bool) -> set[str]:
        return {i for i, h in self.halves.items() if h.discarded == discarded}

    # -- expectations -------------------------------------------------------------------------------

    def progress(self, group: str, topic: str, queue: int) -> tuple[int, int, int, int]:
        """(lag, pending, retrying, dead letters) of the group in one queue, once idle."""
        lag = retrying = dead = 0
        for msg_id, fate in self.groups[group].fates.items():
            m = self.msgs[msg_id]
            if m.topic == topic and m.queue == queue:
                lag, retrying, dead = lag + fate.owed, retrying + fate.retrying, dead + fate.dlq
        return lag, 0, retrying, dead

    def delayed(self, topic: str, queue: int) -> int:
        return sum(1 for m in self.msgs.values() if m.topic == topic and m.queue == queue and not m.released)

    def dead_ids(self, group: str) -> Counter[str]:
        return Counter({i: f.dlq for i, f in self.groups[group].fates.items() if f.dlq})

    def attempts(self, group: str) -> dict[str, int]:
        return {i: f.attempts for i, f in self.groups[group].fates.items() if f.attempts}

    def polled(self, group: str) -> set[str]:
        return {i for i, f in self.groups[group].fates.items() if f.handled}
