"""Features composed: orderly and concurrent listeners in one group or one consumer, replays of
an orderly group's dead letters. Each runs on a private redis-server and on fakeredis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from rmq_style import Message, PushConsumer, ReceivedMessage, SubscriptionConflictError
from tests.pushkit import create_topic, fast_settings, send, until


def run(coro: Any) -> None:
    with capture_logs():
        asyncio.run(coro)


# -- members that disagree on the listener kind ------------------------------------------------


@pytest.mark.parametrize("first_orderly", [True, False], ids=["orderly-first", "concurrent-first"])
def test_a_member_with_another_listener_kind_is_refused_and_the_running_one_goes_on(
    url: str, first_orderly: bool
) -> None:
    async def main() -> None:
        await create_topic(url, queues=2)
        seen: list[str] = []

        async def listener(msg: ReceivedMessage) -> None:
            seen.append(msg.msg_id)

        first = PushConsumer(url, "billing", fast_settings(orderly_lease_ms=1000))
        first.subscribe("orders", "*", listener, orderly=first_orderly)
        joiner = PushConsumer(url, "billing", fast_settings(orderly_lease_ms=1000))
        joiner.subscribe("orders", "*", listener, orderly=not first_orderly)
        kinds = ("orderly", "concurrent") if first_orderly else ("concurrent", "orderly")
        async with first:
            await until(lambda: len(first.queues) == 2, what="the first member owns both queues")
            with pytest.raises(SubscriptionConflictError) as refused:
                await joiner.start()
            assert str(refused.value) == (
                f"group 'billing' already subscribes topic 'orders' with '*' ({kinds[0]}), not '*' "
                f"({kinds[1]}): live members of one group must use the same expression and listener "
                "kind (stop all the old members first to change it, or use another group)"
            )
            # the running member is not disrupted: it still owns everything and handles what comes
            ids = await send(url, [Message("orders", {"i": i}) for i in range(6)])
            await until(lambda: len(seen) == 6, what="six messages handled by the first member")
            assert sorted(seen) == sorted(ids)
            assert len(first.queues) == 2
        # every member stopped: the group may be restarted with the other kind on purpose
        seen.clear()
        changed = PushConsumer(url, "billing", fast_settings(orderly_lease_ms=1000))
        changed.subscribe("orders", "*", listener, orderly=not first_orderly)
        async with changed:
            ids = await send(url, [Message("orders", {"i": i}) for i in range(4)])
            await until(lambda: len(seen) == 4, what="four messages handled after the change")
        assert sorted(seen) == sorted(ids)

    run(main())
