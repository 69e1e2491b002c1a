"""Every Lua script's header matches how it is called, and scripts survive a flush."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from rmq_style._scripts import SCRIPTS, script


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_header_declares_the_keys_the_registry_passes(name: str) -> None:
    source = resources.files("rmq_style").joinpath("lua", f"{name}.lua").read_text()
    header = source.split("]]", 1)[0]
    declared = sorted({int(n) for n in re.findall(r"KEYS\[(\d+)\]", header)})
    assert declared == list(range(1, SCRIPTS[name] + 1))
    assert "Output:" in header and "Input:" in header
    used = {int(n) for n in re.findall(r"KEYS\[(\d+)\]", script(name).source.split("]]", 1)[1])}
    assert used <= set(declared)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_scripts_assign_no_globals(name: str) -> None:
    # a global poisons fakeredis' shared Lua state; Redis refuses it
    body = script(name).source
    assigned = re.findall(r"^(\w+)\s*=", body, re.MULTILINE)
    assert assigned == []


def test_producer_recovers_after_script_flush(url: str) -> None:
    from rmq_style import Admin, Message, Producer
    from rmq_style._sync._io import open_client

    with Admin(url) as admin:
        admin.create_topic("t", queues=2)
    with Producer(url) as producer:
        producer.send(Message("t", b"1"))
        open_client(url).script_flush()
        results = producer.send_batch([Message("t", b"2"), Message("t", b"3")])
    assert [r.queue_offset for r in results] == [0, 1]
