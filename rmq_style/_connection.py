"""Connection URLs: redis://, rediss:// (TLS), unix:// and memory:// (in-process fakeredis).

>>> parse_url("memory://").memory_name
'default'
>>> parse_url("redis://user:pw@localhost:6380/2").scheme
'redis'
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ._errors import InvalidUrlError

__all__ = ["ConnectionSpec", "memory_server", "parse_url"]

_SCHEMES = ("redis", "rediss", "unix", "memory")

# RESP2: the scripts see the same reply shapes on real Redis and fakeredis, and
# it is the faster protocol for stream reads (reference/fakeredis.md).
_COMMON_OPTIONS: dict[str, Any] = {"protocol": 2, "health_check_interval": 30}
_TCP_OPTIONS: dict[str, Any] = {"socket_connect_timeout": 5, "socket_keepalive": True}


@dataclass(frozen=True, slots=True)
class ConnectionSpec:
    url: str
    scheme: str
    memory_name: str | None = None

    @property
    def client_options(self) -> dict[str, Any]:
        """Options for redis-py's from_url (TCP options do not apply to unix sockets)."""
        if self.scheme == "unix":
            return dict(_COMMON_OPTIONS)
        return {**_COMMON_OPTIONS, **_TCP_OPTIONS}


def parse_url(url: str) -> ConnectionSpec:
    if not isinstance(url, str):
        raise InvalidUrlError(f"a connection URL must be a string, got {type(url).__name__}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise InvalidUrlError(
            f"unsupported URL scheme {parts.scheme!r} in {url!r}: use redis://, rediss:// (TLS), "
            "unix:///path/to/redis.sock or memory:// (in-process, for tests and the demo)"
        )
    if scheme == "memory":
        return ConnectionSpec(url, scheme, (parts.netloc + parts.path).strip("/") or "default")
    if scheme in ("redis", "rediss") and not parts.hostname:
        raise InvalidUrlError(f"URL {url!r} names no host: use e.g. redis://localhost:6379/0")
    if scheme == "unix" and not parts.path:
        raise InvalidUrlError(f"URL {url!r} names no socket path: use unix:///run/redis.sock")
    return ConnectionSpec(url, scheme)


_servers: dict[str, Any] = {}
_servers_lock = threading.Lock()


def memory_server(name: str) -> Any:
    """The in-process fakeredis server called *name* (shared by every memory://name client)."""
    try:
        import fakeredis  # noqa: PLC0415 - the memory backend is an optional extra
    except ImportError as exc:
        raise InvalidUrlError(
            "memory:// needs the in-process backend: pip install 'rmq_style[memory]'"
        ) from exc
    from ._fakeredis_fix import apply  # noqa: PLC0415

    apply()
    with _servers_lock:
        server = _servers.get(name)
        if server is None:
            server = _servers[name] = fakeredis.FakeServer(version=(7, 0))
        return server


def drop_memory_server(name: str) -> None:
    """Forget the memory server *name* (its data goes with it)."""
    with _servers_lock:
        _servers.pop(name, None)
