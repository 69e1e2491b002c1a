"""The pure decision core of push consumption (no Redis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from rmq_style import ConsumeResult, DeadLetter, RetrySchedule, SerializationError
from rmq_style.push.outcomes import Ack, DeadLetterIt, RetryLater, RetryPolicy, decide

POLICY = RetryPolicy(RetrySchedule(), max_reconsume_times=16)


@given(st.integers(0, 15))
def test_failures_retry_on_rocketmq_levels_until_the_limit(r: int) -> None:
    decision = decide(RuntimeError("x"), r, POLICY)
    assert isinstance(decision, RetryLater)
    assert decision.reconsume_times == r + 1
    assert decision.delay_ms == RetrySchedule().delay_ms(r)


def test_default_schedule_is_10s_30s_1m_up_to_2h_and_17_deliveries() -> None:
    delays = [decide(ConsumeResult.RECONSUME_LATER, r, POLICY) for r in range(17)]
    assert [d.delay_ms for d in delays[:3] if isinstance(d, RetryLater)] == [10_000, 30_000, 60_000]
    assert isinstance(delays[15], RetryLater) and delays[15].delay_ms == 7_200_000
    assert isinstance(delays[16], DeadLetterIt) and "after 16 retries" in delays[16].reason


@pytest.mark.parametrize("result", [None, ConsumeResult.SUCCESS, "anything", 42])
def test_returning_normally_acks(result: object) -> None:
    assert decide(result, 3, POLICY) == Ack()


def test_bad_input_and_dead_letter_requests_skip_retries() -> None:
    class M(BaseModel):
        id: int

    with pytest.raises(ValidationError) as info:
        M.model_validate({"id": "x"})
    for outcome in (info.value, SerializationError("bad"), DeadLetter("why"), ConsumeResult.DEAD_LETTER):
        assert isinstance(decide(outcome, 0, POLICY), DeadLetterIt)


def test_reason_names_type_message_and_where_it_was_raised() -> None:
    def handler() -> None:
        raise KeyError("sku-9")

    try:
        handler()
    except KeyError as exc:
        decision = decide(exc, 0, POLICY)
    assert isinstance(decision, RetryLater)
    assert decision.reason.startswith("KeyError: 'sku-9' [")
    assert "in handler]" in decision.reason
