"""The CLI through typer's runner, on the in-process backend."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from rmq_style.cli import app

runner = CliRunner()


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_topic_lifecycle_and_send(fake_url: str) -> None:
    invoke("topic", "create", "orders", "--queues", "3", "--url", fake_url)
    assert json.loads(invoke("topic", "list", "--url", fake_url, "--json")) == [
        {"topic": "orders", "queues": 3, "retention": "minid"}
    ]
    sent = json.loads(invoke("send", "orders", '{"id": 1}', "--sharding-key", "u1", "--tag", "created",
                             "--url", fake_url, "--json"))  # fmt: skip
    assert sent["queue_offset"] == 0 and len(sent["msg_id"]) == 32
    described = json.loads(invoke("topic", "describe", "orders", "--url", fake_url, "--json"))
    assert sum(q["length"] for q in described["queues"]) == 1
    invoke("topic", "expand", "orders", "5", "--url", fake_url)
    assert len(json.loads(invoke("topic", "describe", "orders", "--url", fake_url, "--json"))["queues"]) == 5
    invoke("topic", "delete", "orders", "--url", fake_url)
    assert json.loads(invoke("topic", "list", "--url", fake_url, "--json")) == []


def test_demo_runs_on_memory() -> None:
    out = invoke("demo", "--messages", "50")
    assert "sent 50 orders" in out and "done in" in out


def test_examples_produce_runs(fake_url: str) -> None:
    import runpy

    module = runpy.run_path("examples/produce.py")
    module["main"](fake_url)
    module["main"](fake_url)  # a second run finds the topic created
