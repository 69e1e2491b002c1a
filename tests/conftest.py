"""Fixtures: every integration test runs on a private real redis-server and on fakeredis.

The real server is started by the suite on a free loopback port (never the
machine's 127.0.0.1:6379), so tests may flush, kill and restart it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from rmq_style._connection import drop_memory_server
from rmq_style.testing import RedisServer, redis_server_available
from tests.fronts import SyncView

BACKENDS = ["real", "fake"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    if not redis_server_available():
        pytest.fail("redis-server is not installed: .ci/run installs it with apt-get")
    with RedisServer() as server:
        yield server


@pytest.fixture
def real_url(redis_server: RedisServer) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.script_flush()
    client.close()
    yield redis_server.url


@pytest.fixture
def fake_url() -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex}"
    yield f"memory://{name}"
    drop_memory_server(name)


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest) -> str:
    """A fresh, empty backend: a private redis-server, then in-process fakeredis."""
    fixture = "real_url" if request.param == "real" else "fake_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test alone (with AOF), to kill and restart."""
    if not redis_server_available():
        pytest.fail("redis-server is not installed")
    with RedisServer(appendonly=True) as server:
        yield server


@pytest.fixture(params=["sync", "async"])
def front(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Factory of producers/admins: the sync classes, or the async ones seen through SyncView."""
    import rmq_style

    if request.param == "sync":
        yield rmq_style
        return
    with asyncio.Runner() as runner:

        class AsyncFront:
            def __getattr__(self, name: str) -> Any:
                cls = getattr(rmq_style, "Async" + name)
                return lambda *a, **k: SyncView(runner.run(_construct(cls, a, k)), runner)

        yield AsyncFront()


async def _construct(cls: Any, args: Any, kwargs: Any) -> Any:
    # clients bind to the running loop on first use; build them inside it
    return cls(*args, **kwargs)
