"""The CLI through typer's runner, on the in-process backend."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rmq_style import Admin, App, Message, Producer, ReceivedMessage
from rmq_style.cli import app
from rmq_style.testing import AppTester

app_cli = app

runner = CliRunner()


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_topic_lifecycle_and_send(url: str) -> None:
    invoke("topic", "create", "orders", "--queues", "3", "--url", url)
    assert json.loads(invoke("topic", "list", "--url", url, "--json")) == [
        {"topic": "orders", "queues": 3, "retention": "minid"}
    ]
    sent = json.loads(invoke("send", "orders", '{"id": 1}', "--sharding-key", "u1", "--tag", "created",
                             "--url", url, "--json"))  # fmt: skip
    assert sent["queue_offset"] == 0 and len(sent["msg_id"]) == 32
    described = json.loads(invoke("topic", "describe", "orders", "--url", url, "--json"))
    assert sum(q["length"] for q in described["queues"]) == 1
    invoke("topic", "expand", "orders", "5", "--url", url)
    assert len(json.loads(invoke("topic", "describe", "orders", "--url", url, "--json"))["queues"]) == 5
    invoke("topic", "delete", "orders", "--url", url)
    assert json.loads(invoke("topic", "list", "--url", url, "--json")) == []


def test_demo_runs_on_memory() -> None:
    out = invoke("demo", "--messages", "60")
    assert "billed 60 of 61 orders; 3 succeeded on a retry; 1 dead letter(s)" in out
    assert "per user in order: True" in out and "analytics pulled 61 messages" in out


def test_demo_runs_on_real_redis(real_url: str) -> None:
    out = invoke("demo", "--messages", "60", "--redis-url", real_url)
    assert "billed 60 of 61 orders" in out


def test_examples_produce_runs(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    import runpy

    module = runpy.run_path("examples/produce.py")
    module["main"](url)
    module["main"](url)  # a second run finds the topic created
    printed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert len(printed) == 20 and len({words[0] for words in printed}) == 20  # a msg id each
    with Admin(url) as admin:
        queues = admin.describe_topic("orders").queues
    assert len(queues) == 8 and sum(q.length for q in queues) == 20
    per_user = {(n % 10 % 3, words[1]) for n, words in enumerate(printed)}  # a user's orders: one queue
    assert len(per_user) == 3


def test_pull_progress_reset_and_dead_letter_commands(url: str) -> None:
    with Admin(url) as admin:
        admin.create_topic("orders", queues=1)
    with Producer(url) as producer:
        sent = producer.send_batch([Message("orders", {"n": n}, tag="created") for n in range(4)])
    pulled = json.loads(invoke("pull", "orders", "--queue", "0", "--count", "3", "--url", url, "--json"))
    assert [m["body"]["n"] for m in pulled["messages"]] == [0, 1, 2]
    assert pulled["status"] == "FOUND" and pulled["next_offset"] == sent[2].offset
    after = json.loads(invoke("pull", "orders", "--queue", "0", "--from", sent[2].offset, "--url", url,
                              "--json"))  # fmt: skip
    assert [m["body"]["n"] for m in after["messages"]] == [3]
    by_time = json.loads(invoke("pull", "orders", "--queue", "0", "--from", str(sent[3].offset.split("-")[0]),
                                "--url", url, "--json"))  # fmt: skip
    assert by_time["messages"][-1]["body"]["n"] == 3

    app = App(url)

    @app.subscribe("orders", group="billing", max_reconsume_times=0)
    def bill(body: dict[str, int], msg: ReceivedMessage) -> None:
        if body["n"] == 2:
            raise ValueError("two is bad")

    with AppTester(app) as tester:
        tester.drain()
        progress = json.loads(invoke("progress", "--group", "billing", "--url", url, "--json"))
        assert [(p["lag"], p["pending"], p["dead_letters"]) for p in progress] == [(0, 0, 1)]
        assert "total lag 0" in invoke("progress", "--group", "billing", "--url", url)
        dead = json.loads(invoke("dlq", "list", "--group", "billing", "--url", url, "--json"))
        assert [(d["body"]["n"], d["reason"].split(":")[0]) for d in dead] == [(2, "ValueError")]
        shown = json.loads(invoke("dlq", "show", dead[0]["msg_id"], "--group", "billing", "--url", url))
        assert shown["origin_offset"] == sent[2].offset
        assert "replayed 1 of 1" in invoke("dlq", "replay", "--group", "billing", "--url", url)
        tester.drain()
    assert json.loads(invoke("dlq", "list", "--group", "billing", "--url", url, "--json"))[0]["body"] == {
        "n": 2
    }
    purge = ["dlq", "purge", "--group", "billing", "--url", url]
    refused = runner.invoke(app_cli, purge, input="y\n")
    assert refused.exit_code != 0 and "exactly one of" in str(refused.exception)
    kept = runner.invoke(app_cli, [*purge, "--all"], input="n\n")
    assert kept.exit_code == 1
    assert len(json.loads(invoke("dlq", "list", "--group", "billing", "--url", url, "--json"))) == 1
    assert "deleted 0 dead letters" in invoke(*purge, "--older-than-hours", "1", "--yes")
    assert "deleted 1 dead letters" in invoke(*purge, "--all", "--yes")
    assert json.loads(invoke("dlq", "list", "--group", "billing", "--url", url, "--json")) == []
    invoke("reset-offset", "--group", "billing", "--topic", "orders", "--to-first", "--url", url)
    progress = json.loads(invoke("progress", "--group", "billing", "--url", url, "--json"))
    assert progress[0]["lag"] == 4
    bad = runner.invoke(app_cli, ["reset-offset", "--group", "billing", "--topic", "orders", "--url", url])
    assert bad.exit_code != 0


def test_errors_are_reported_without_traceback(fake_url: str) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "rmq_style.cli", "progress", "--group", "g", "--topic", "nope", "--url", "memory://x"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        "error:" in result.stdout and "does not exist" in result.stdout and "Traceback" not in result.stderr
    )
