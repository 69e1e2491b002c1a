"""The FastAPI example under test: the lifespan starts the consumer on an in-process backend."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from examples import fastapi_app
from rmq_style.testing import is_drained


def test_publish_consume_and_health(rmq_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastapi_app, "app", fastapi_app.app.clone(url=rmq_url))
    fastapi_app.confirmed.clear()
    with TestClient(fastapi_app.web) as client:
        for n in range(3):
            response = client.post("/orders", json={"order_id": n, "user_id": f"u{n}", "amount_cents": 100})
            assert response.status_code == 200 and len(response.json()["msg_id"]) == 32
        client.portal.call(wait_drained, fastapi_app.app)
        health = client.get("/health").json()
    assert sorted(fastapi_app.confirmed) == [0, 1, 2]
    assert health["running"] is True
    assert health["groups"]["confirmations"]["consumed"] == 3
    assert client.app is fastapi_app.web


async def wait_drained(app: fastapi_app.App) -> None:
    import anyio

    with anyio.fail_after(10):
        while not await is_drained(app):
            await anyio.sleep(0.01)  # bounded poll of Redis state
