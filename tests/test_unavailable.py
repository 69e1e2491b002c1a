"""Redis down: every front raises BrokerUnavailableError (not redis-py's errors), and recovers after."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import redis

from rmq_style import BrokerUnavailableError, Message, MessageQueue, Producer
from rmq_style._async import _lane as async_lane
from rmq_style._sync import _lane as sync_lane
from rmq_style.cli import main
from rmq_style.testing import RedisServer, free_port

QUEUE = MessageQueue("conn", 0)


def test_admin_and_pull_fronts_raise_broker_unavailable_then_recover(
    front: Any, private_redis: RedisServer
) -> None:
    url = private_redis.url
    with (
        front.Admin(url) as admin,
        front.PullConsumer(url, "g") as pull,
        front.LitePullConsumer(url, "g", consume_from="first") as lite,
    ):
        admin.create_topic("conn", queues=1)
        with Producer(url) as producer:
            producer.send(Message("conn", b"before"))
        lite.assign([QUEUE])
        assert [m.body for m in pull.pull(QUEUE, "0-0").messages] == [b"before"]
        private_redis.kill()
        calls = {
            "admin.list_topics": admin.list_topics,
            "admin.describe_topic": lambda: admin.describe_topic("conn"),
            "admin.release_due": lambda: admin.release_due("conn"),
            "admin.progress": lambda: admin.progress("g", "conn"),
            "pull.pull": lambda: pull.pull(QUEUE, "0-0"),
            "pull.commit": lambda: pull.commit(QUEUE, "0-0"),
            "lite.poll": lambda: lite.poll(0.05),
        }
        failed = {}
        for name, call in calls.items():
            with pytest.raises(BrokerUnavailableError, match="Redis unreachable") as caught:
                call()
            failed[name] = type(caught.value.__cause__).__module__.split(".")[0]
        assert failed == dict.fromkeys(calls, "redis")  # the redis-py error stays as the cause
        private_redis.start()  # AOF: the topic and the message survive
        assert [t.topic for t in admin.list_topics()] == ["conn"]
        assert [m.body for m in pull.pull(QUEUE, "0-0").messages] == [b"before"]
        assert [m.body for m in lite.poll(1.0)] == [b"before"]


@pytest.mark.parametrize("closer", ["restart", "client kill"])
def test_a_connection_the_server_closed_while_idle_is_replaced_before_use(
    front: Any, private_redis: RedisServer, closer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if closer == "client kill":
        # a kill can follow the last use within the idle window (2 ms) that skips the check
        for lane in (sync_lane, async_lane):
            monkeypatch.setattr(lane, "LANE_IDLE_CHECK_S", 0.0)
    # no retries: a send written to the closed connection would fail
    with front.Admin(private_redis.url) as admin, front.Producer(private_redis.url, retries=0) as producer:
        admin.create_topic("conn", queues=1)
        assert producer.send(Message("conn", b"1")).queue_offset == 0
        if closer == "restart":
            private_redis.restart()  # AOF: the topic and the first message survive
        else:
            with redis.Redis.from_url(private_redis.url) as other:
                assert other.client_kill_filter(_type="normal", skipme=True) >= 2
        assert producer.send(Message("conn", b"2")).queue_offset == 1
        assert [q.length for q in admin.describe_topic("conn").queues] == [2]


def test_cli_says_redis_is_unreachable_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    monkeypatch.setattr(sys, "argv", ["rmq-style", "topic", "list", "--url", url])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    out = capsys.readouterr().out
    assert out.startswith("error: Redis unreachable") and "Traceback" not in out
