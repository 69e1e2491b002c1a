"""AsyncTransactionProducer: send a message if and only if a local transaction commits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Self, cast

import structlog

from .._call_values import Flow, ScriptCall
from .._errors import BrokerUnavailableError, UsageError
from .._message import Message, MessageQueue, SendResult
from .._producing import SendPlan, ShardingKey
from .._telemetry import active
from .._trace import TraceBound, mark_traced, sampled, tx_call
from .._transaction import (
    HalfMessage,
    TransactionCore,
    TransactionSendResult,
    TransactionSettings,
    TransactionState,
    TransactionStateError,
    as_state,
    refuse_extras,
)
from .._tx_runner import AsyncCheckRunner
from ._io import TRANSIENT_ERRORS, AsyncClient, ClientHolder, drive_with_retries, execute

__all__ = ["AsyncTransaction", "AsyncTransactionProducer", "CheckReport"]

log = structlog.get_logger("rmq_style.transaction")
Checker = Callable[[HalfMessage], Any]


@dataclass(slots=True)
class CheckReport:
    """What one look for due checks did."""

    checked: int = 0
    committed: int = 0
    rolled_back: int = 0
    unknown: int = 0
    deferred: int = 0
    expired: int = 0  # leased but not checked in time (checked again at a later look)


class AsyncTransactionProducer(ClientHolder):
    """A producer of group *group* whose messages become visible only when their transaction commits.

    *checker* answers for a half message whose transaction did not end (the
    producer died, or answered UNKNOWN): ``check(message) -> COMMIT | ROLLBACK |
    UNKNOWN`` (None and exceptions are UNKNOWN). While the producer is open it is
    a live instance of the group and runs the checks that fall to it. See
    docs/transactions.md.
    """

    def __init__(
        self,
        url: str | AsyncClient,
        group: str,
        checker: Checker,
        settings: TransactionSettings | None = None,
        **options: Any,
    ) -> None:
        if not callable(checker):
            raise TypeError("checker must be a callable: check(message) -> COMMIT | ROLLBACK | UNKNOWN")
        self.settings = settings or TransactionSettings(**options)
        self._core = TransactionCore(group, self.settings)
        self._bound = TraceBound(self.settings.trace_maxlen, self.settings.trace_max_age_ms)
        super().__init__(url)
        self._checker = checker
        self._telemetry = active()  # OpenTelemetry (rmq_style.otel), None when off
        self._executing: set[str] = set()  # msg ids whose local transaction runs now, in this process
        self._runner = AsyncCheckRunner(
            self.check_once, self.settings.check_poll_ms / 1000, f"rmq-tx-check-{group}"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} group={self.group!r} member={self.member!r}>"

    @property
    def group(self) -> str:
        return self._core.group

    @property
    def member(self) -> str:
        return self._core.member

    async def start(self) -> None:
        """Join the group's live instances and run its due checks in the background (until close)."""
        if self.settings.check_in_background:
            await self._runner.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def send_in_transaction(
        self,
        message: Message,
        execute: Callable[[HalfMessage, Any], Any],
        arg: Any = None,
        *,
        sharding_key: ShardingKey | None = None,
        queue_id: int | None = None,
        check_immunity: timedelta | None = None,
        delay: timedelta | None = None,
        deliver_at: datetime | None = None,
        delay_level: int | None = None,
    ) -> TransactionSendResult:
        """Store *message* as a half message, run ``execute(message, arg)``, then end the transaction.

        COMMIT makes the message visible, ROLLBACK drops it; None, UNKNOWN or an
        exception leave it to the check-back (the exception is logged, not raised).
        A delay (refused: RocketMQ clears it) or a list of messages is a UsageError.
        """
        message = refuse_extras(message, (delay, deliver_at, delay_level))
        if self.settings.trace_sample and sampled(self.settings.trace_sample):  # docs/trace.md
            message = mark_traced(message)
        if self._telemetry is not None:  # one send span around store, local transaction and end
            with self._telemetry.sending([message], "transaction") as sending:
                result = await self._send_in_transaction(
                    sending.messages[0], execute, arg, sharding_key, queue_id, check_immunity
                )
                sending.sent([result])
            return result
        return await self._send_in_transaction(message, execute, arg, sharding_key, queue_id, check_immunity)

    async def _send_in_transaction(
        self,
        message: Message,
        execute: Callable[[HalfMessage, Any], Any],
        arg: Any,
        sharding_key: ShardingKey | None,
        queue_id: int | None,
        check_immunity: timedelta | None,
    ) -> TransactionSendResult:
        await self.start()
        planned = self._core.half_plan(message, sharding_key, queue_id, check_immunity)
        msg_id = planned[0].entries[0][0]
        # marked before the store: a check due at once (a timeout of 0) is deferred, not answered
        self._executing.add(msg_id)
        try:
            half = await self._store(planned)
            ids = {"group": self.group, "msg_id": msg_id, "queue": str(half.queue)}  # bound when logged
            try:
                state = as_state(await self._runner.invoke(execute, half, arg))
            except Exception as exc:  # noqa: BLE001 - an exception is UNKNOWN (RocketMQ's rule)
                log.warning("transaction.execute_failed", **ids, error=repr(exc))
                state = TransactionState.UNKNOWN
            if state is TransactionState.UNKNOWN:
                return TransactionSendResult(half.msg_id, half.queue, state)
            try:
                sent = await self._end(half.queue, half.msg_id, state, "client")
            except TransactionStateError as exc:
                if exc.code != "TXCHECKED":
                    raise
                log.warning("transaction.end_after_check", **ids, state=str(state))
                return TransactionSendResult(half.msg_id, half.queue, state, checked=True)
            except BrokerUnavailableError as exc:  # the local transaction is done: the check-back ends it
                log.warning("transaction.end_unreachable", **ids, state=str(state), error=str(exc))
                return TransactionSendResult(half.msg_id, half.queue, state)
            await self._trace(half, state, sent)
            return TransactionSendResult(half.msg_id, half.queue, state, sent)
        finally:
            self._executing.discard(msg_id)

    async def begin(self) -> AsyncTransaction:
        """The explicit form: ``tx = begin(); tx.send(message); ...; tx.commit()`` (or ``rollback()``)."""
        await self.start()
        return AsyncTransaction(self)

    async def check_once(self) -> CheckReport:
        """Run the checks due now that fall to this instance (the background loop calls this)."""
        report = CheckReport()
        for claim in await self._drive(self._core.claim_flow()):
            half = claim.message
            if claim.expired:  # slow checks before it: its lease may have passed to another instance
                report.expired += 1
                continue
            defer = half.msg_id in self._executing
            if defer:  # the local transaction still runs here: its own end decides
                state = TransactionState.UNKNOWN
                report.deferred += 1
            else:
                report.checked += 1
                try:
                    state = as_state(await self._runner.check(self._checker, half))
                except Exception as exc:  # noqa: BLE001 - an exception is UNKNOWN: checked again later
                    log.warning(
                        "transaction.check_failed", group=self.group, msg_id=half.msg_id, error=repr(exc)
                    )
                    state = TransactionState.UNKNOWN
                if state is TransactionState.COMMIT:
                    report.committed += 1
                elif state is TransactionState.ROLLBACK:
                    report.rolled_back += 1
                else:
                    report.unknown += 1
            await self._drive(self._core.answer_flow(claim, state, defer=defer))
            if state is not TransactionState.UNKNOWN:
                await self._trace(half, state, None, from_check=True)
        return report

    async def close(self) -> None:
        """Stop checking, leave the group's live instances, close the connection."""
        try:
            await self._runner.stop()
            await self._drive(self._leave())
        except BrokerUnavailableError as exc:  # its heartbeat expires instead
            log.warning("transaction.leave_failed", group=self.group, member=self.member, error=str(exc))
        finally:
            await super().close()

    def _leave(self) -> Flow[None]:
        yield [self._core.leave_call()]

    async def _store(self, planned: tuple[SendPlan, int]) -> HalfMessage:
        core, s = self._core, self.settings
        half = await drive_with_retries(
            self._client, lambda: core.half_flow(planned), s.retries, s.retry_backoff_ms
        )
        if s.trace_sample:
            await self._record(tx_call(core.keys, self._bound, half, event="pub", outcome="ok",
                                       group=self.group, detail={"tx": "half"}))  # fmt: skip
        return half

    async def _trace(
        self, half: HalfMessage, state: TransactionState, sent: SendResult | None, *, from_check: bool = False
    ) -> None:
        """The ``tx`` record of a traced message's end (docs/trace.md)."""
        detail = {"from_check": "1" if from_check else "0"}
        if sent is not None and sent.offset is not None:
            detail["offset"] = sent.offset
            detail["queue_offset"] = str(sent.queue_offset)
        outcome = "commit" if state is TransactionState.COMMIT else "rollback"
        call = tx_call(self._core.keys, self._bound, half, event="tx", outcome=outcome,
                       group=self.group, detail=detail)  # fmt: skip
        await self._record(call)

    async def _record(self, call: ScriptCall | None) -> None:
        if call is None:
            return
        try:
            (reply,) = await execute(self._client, [call])
        except TRANSIENT_ERRORS as exc:  # best effort: the transaction is not affected
            log.warning("trace.write_failed", group=self.group, error=str(exc))
            return
        if isinstance(reply, Exception):
            log.warning("trace.write_failed", group=self.group, error=str(reply))

    async def _end(
        self, queue: MessageQueue, msg_id: str, state: TransactionState, source: str
    ) -> SendResult | None:
        s = self.settings
        return await drive_with_retries(
            self._client,
            lambda: self._core.end_flow(queue, msg_id, state, source),
            s.retries,
            s.retry_backoff_ms,
        )


class AsyncTransaction:
    """One transaction of the explicit form: one message, then commit or rollback.

    Left without an end (the process dies, or neither is called) the message
    is checked back like any UNKNOWN one.
    """

    def __init__(self, producer: AsyncTransactionProducer) -> None:
        self._producer = producer
        self.message: HalfMessage | None = None
        self.result: SendResult | None = None
        self.state = TransactionState.UNKNOWN

    async def send(
        self,
        message: Message,
        *,
        sharding_key: ShardingKey | None = None,
        queue_id: int | None = None,
        check_immunity: timedelta | None = None,
        delay: timedelta | None = None,
        deliver_at: datetime | None = None,
        delay_level: int | None = None,
    ) -> HalfMessage:
        """Store the transaction's one message as a half message (invisible until commit)."""
        message = refuse_extras(message, (delay, deliver_at, delay_level))
        if self.message is not None:
            raise UsageError("one message per transaction: begin another transaction for the next one")
        rate = self._producer.settings.trace_sample
        if rate and sampled(rate):  # docs/trace.md
            message = mark_traced(message)
        telemetry = self._producer._telemetry
        if telemetry is None:
            planned = self._producer._core.half_plan(message, sharding_key, queue_id, check_immunity)
            self.message = await self._producer._store(planned)
            return self.message
        with telemetry.sending([message], "transaction") as sending:
            traced = sending.messages[0]
            planned = self._producer._core.half_plan(traced, sharding_key, queue_id, check_immunity)
            self.message = await self._producer._store(planned)
            sending.sent([self.message])
        return self.message

    async def commit(self) -> SendResult:
        """Make the message visible (idempotent); TransactionStateError if that is no longer allowed."""
        half = self._sent()
        sent = await self._producer._end(half.queue, half.msg_id, TransactionState.COMMIT, "client")
        sent = cast(SendResult, sent)
        self.result, self.state = sent, TransactionState.COMMIT
        await self._producer._trace(half, TransactionState.COMMIT, sent)
        return sent

    async def rollback(self) -> None:
        """Drop the message for good; TransactionStateError if it was committed or checked."""
        half = self._sent()
        await self._producer._end(half.queue, half.msg_id, TransactionState.ROLLBACK, "client")
        self.state = TransactionState.ROLLBACK
        await self._producer._trace(half, TransactionState.ROLLBACK, None)

    def _sent(self) -> HalfMessage:
        if self.message is None:
            raise UsageError("the transaction has no message yet: send one before commit or rollback")
        return self.message
