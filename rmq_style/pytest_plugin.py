"""pytest plugin of rmq_style (loaded automatically once rmq_style is installed).

Fixtures:

- ``rmq_url``: a fresh in-process backend (``memory://...``), dropped after the test.
- ``rmq_tester``: ``rmq_tester(app)`` runs the app's handlers on ``rmq_url``
  (topics created on demand, retry delays fast-forwarded) and returns an
  ``AppTester``: ``send``, ``drain``, ``dead_letters``. Stopped after the test.

Example (examples/test_example_app.py)::

    def test_billing(rmq_tester):
        tester = rmq_tester(app)
        tester.send("orders", {"order_id": 1, "amount_cents": 500})
        tester.drain()
        assert billed == [1]
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ._connection import drop_memory_server
from .testing import AppTester


@pytest.fixture
def rmq_url() -> Iterator[str]:
    name = f"pytest-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    drop_memory_server(name)


@pytest.fixture
def rmq_tester(rmq_url: str) -> Iterator[Callable[..., AppTester]]:
    testers: list[AppTester] = []

    def make(app: Any, **settings: Any) -> AppTester:
        tester = AppTester(app.clone(url=rmq_url, auto_create_topics=True), **settings)
        testers.append(tester.start())
        return tester

    yield make
    for tester in testers:
        tester.stop()
