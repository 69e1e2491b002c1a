"""Push consumer configuration, with RocketMQ's defaults (reference: DefaultMQPushConsumer)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .._delay import RetrySchedule
from .._errors import ConfigurationError
from .._membership import MembershipSettings
from .._message import DEFAULT_MAX_MESSAGE_SIZE
from .._names import check_instance
from .._offsets import ConsumeFrom
from .._trace import DEFAULT_TRACE_MAXLEN

__all__ = ["ConsumeFrom", "PushSettings"]


class PushSettings(BaseModel):
    """How a PushConsumer fetches, runs and retries messages.

    Durations are in milliseconds so tests can shrink them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    namespace: str = "rmq"
    concurrency: int = Field(20, ge=1, description="handlers running at once (consumeThreadMax)")
    consume_message_batch_max_size: int = Field(1, ge=1, description="messages per listener call")
    pull_batch_size: int = Field(32, ge=1, description="entries per stream per fetch")
    pull_threshold_for_queue: int = Field(1000, ge=1, description="in-flight messages per queue")
    pull_threshold_size_for_queue: int = Field(100 * 1024 * 1024, ge=1, description="in-flight body bytes")
    pull_threshold_for_all: int = Field(10_000, ge=1, description="in-flight messages per consumer")
    poll_timeout_ms: int = Field(1000, ge=1, description="long-poll BLOCK of one fetch")
    consume_timeout_ms: int = Field(15 * 60_000, ge=1, description="a handler running longer fails")
    max_reconsume_times: int = Field(
        16, ge=-1, description="retries before the dead-letter queue; -1: 16 (concurrent), forever (orderly)"
    )
    suspend_current_queue_time_ms: int = Field(
        1000, ge=0, description="orderly: wait before a failed message is tried again"
    )
    orderly_lease_ms: int = Field(
        10_000, ge=30, description="orderly: lease of a queue lock, renewed every third"
    )
    retry_delays_ms: tuple[int, ...] = Field(RetrySchedule().delays_ms, min_length=1)
    retry_poll_ms: int = Field(1000, ge=1, description="longest wait between checks for due retries")
    consume_from: ConsumeFrom = ConsumeFrom.LAST
    consume_timestamp: datetime | None = Field(None, description="with consume_from='timestamp'")
    membership: MembershipSettings = MembershipSettings()
    shutdown_timeout_ms: int = Field(30_000, ge=0, description="graceful stop: wait for handlers")
    loop_crash_limit: int = Field(
        5, ge=0, description="an internal loop crashing (a bug) more often in a row fails the consumer"
    )
    reconnect_backoff_ms: int = Field(100, ge=1)
    reconnect_backoff_max_ms: int = Field(2000, ge=1)
    trace_messages: bool = Field(False, description="log every consumed message at debug level")
    message_model: Literal["clustering", "broadcasting"] = Field(
        "clustering", description="broadcasting: every member gets every message (docs/push.md)"
    )
    instance_name: str | None = Field(
        None, description="broadcasting: the member's stable name, its positions' key (default: the host)"
    )
    max_message_size: int = Field(
        DEFAULT_MAX_MESSAGE_SIZE, gt=0, description="larger entries are dead-lettered (the producer's limit)"
    )
    message_trace: Literal["follow", "all", "off"] = Field(
        "follow",
        description="trace records (docs/trace.md): of messages their producer sampled, of all, or none",
    )
    trace_maxlen: int = Field(
        DEFAULT_TRACE_MAXLEN, ge=1, description="trace records kept per queue (XADD MAXLEN ~)"
    )
    trace_max_age_ms: int = Field(
        0, ge=0, description="trace records older than this are trimmed; 0: no age bound"
    )

    @model_validator(mode="after")
    def _check(self) -> PushSettings:
        if self.consume_message_batch_max_size > self.pull_threshold_for_queue:
            raise ConfigurationError("consume_message_batch_max_size cannot exceed pull_threshold_for_queue")
        if any(d < 0 for d in self.retry_delays_ms):
            raise ConfigurationError("retry_delays_ms must not be negative")
        if self.membership.member_expiry_ms <= self.membership.heartbeat_interval_ms:
            raise ConfigurationError("membership.member_expiry_ms must be longer than heartbeat_interval_ms")
        if self.instance_name is not None:
            check_instance(self.instance_name)
        if self.consume_timestamp is not None and self.consume_timestamp.tzinfo is None:
            raise ConfigurationError("consume_timestamp must be timezone-aware")
        return self

    @property
    def concurrent_max_reconsume_times(self) -> int:
        """RocketMQ: -1 means 16 for concurrent listeners."""
        return 16 if self.max_reconsume_times < 0 else self.max_reconsume_times

    @property
    def retry_schedule(self) -> RetrySchedule:
        return RetrySchedule.of_ms(self.retry_delays_ms)
