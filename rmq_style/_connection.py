"""Connection URLs: redis://, rediss:// (TLS), unix://, redis+sentinel://, redis+cluster:// and memory://.

>>> parse_url("memory://").memory_name
'default'
>>> parse_url("redis://user:pw@localhost:6380/2").scheme
'redis'
>>> target = parse_url("redis+sentinel://s1:26379,s2/mymaster/2").sentinel
>>> target.sentinels, target.master_name, target.db
((('s1', 26379), ('s2', 26379)), 'mymaster', 2)
>>> parse_url("redis+cluster://n1:7000,n2").cluster.nodes
(('n1', 7000), ('n2', 6379))
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from ._errors import InvalidUrlError

__all__ = ["ClusterTarget", "ConnectionSpec", "SentinelTarget", "memory_server", "parse_url"]

_SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
_SCHEMES = ("redis", "rediss", "unix", "memory", *_SENTINEL_SCHEMES, *_CLUSTER_SCHEMES)
_SENTINEL_PORT = 26379
_REDIS_PORT = 6379

# RESP2: the scripts see the same reply shapes on real Redis and fakeredis, and
# it is the faster protocol for stream reads (reference/fakeredis.md).
_COMMON_OPTIONS: dict[str, Any] = {"protocol": 2, "health_check_interval": 30}
_TCP_OPTIONS: dict[str, Any] = {"socket_connect_timeout": 5, "socket_keepalive": True}


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """A redis+sentinel:// URL: the sentinels to ask, the master they name, and how to log in to each.

    The URL's user and password are the master's; the sentinels get
    sentinel_username/sentinel_password, or no credentials (Sentinel has its
    own requirepass/ACL, and a sentinel without one refuses AUTH).
    """

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    tls: tuple[tuple[str, str], ...] | None = None  # ssl_* options (rediss+sentinel), for both

    def master_options(self) -> dict[str, Any]:
        """Options of the master's connections, beside ConnectionSpec.client_options."""
        options: dict[str, Any] = {"db": self.db, "username": self.username, "password": self.password}
        return {**options, **self._tls_options()}

    def sentinel_options(self) -> dict[str, Any]:
        """Options of the connections to the sentinels (a hung sentinel must not hang discovery)."""
        options: dict[str, Any] = {
            "protocol": 2,
            "socket_timeout": 5,
            "username": self.sentinel_username,
            "password": self.sentinel_password,
            **_TCP_OPTIONS,
        }
        return {**options, **self._tls_options()}

    def _tls_options(self) -> dict[str, Any]:
        return {} if self.tls is None else {"ssl": True, **dict(self.tls)}


@dataclass(frozen=True, slots=True)
class ClusterTarget:
    """A redis+cluster:// URL: nodes to discover the cluster from, and the login for every node."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: tuple[tuple[str, str], ...] | None = None  # ssl_* options (rediss+cluster)

    def node_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"username": self.username, "password": self.password}
        return options if self.tls is None else {**options, "ssl": True, **dict(self.tls)}


@dataclass(frozen=True, slots=True)
class ConnectionSpec:
    url: str
    scheme: str
    memory_name: str | None = None
    sentinel: SentinelTarget | None = None
    cluster: ClusterTarget | None = None

    @property
    def client_options(self) -> dict[str, Any]:
        """Options of every client: from_url, or master_for of a sentinel URL (TCP ones not for unix)."""
        if self.scheme == "unix":
            return dict(_COMMON_OPTIONS)
        return {**_COMMON_OPTIONS, **_TCP_OPTIONS}


def parse_url(url: str) -> ConnectionSpec:
    if not isinstance(url, str):
        raise InvalidUrlError(f"a connection URL must be a string, got {type(url).__name__}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed "[" of an IPv6 address
        raise InvalidUrlError(f"URL {url!r} is malformed: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise InvalidUrlError(
            f"unsupported URL scheme {parts.scheme!r} in {url!r}: use redis://, rediss:// (TLS), "
            "unix:///path/to/redis.sock, redis+sentinel://host:26379/mymaster, "
            "redis+cluster://host:6379[,host2:6379] or memory:// (in-process, for tests and the demo)"
        )
    if scheme == "memory":
        return ConnectionSpec(url, scheme, (parts.netloc + parts.path).strip("/") or "default")
    if scheme in _SENTINEL_SCHEMES:
        return ConnectionSpec(
            url, scheme, sentinel=_sentinel_target(url, parts, tls=scheme.startswith("rediss"))
        )
    if scheme in _CLUSTER_SCHEMES:
        target = _cluster_target(url, parts, tls=scheme.startswith("rediss"))
        return ConnectionSpec(url, scheme, cluster=target)
    if scheme in ("redis", "rediss") and not parts.hostname:
        raise InvalidUrlError(f"URL {url!r} names no host: use e.g. redis://localhost:6379/0")
    if scheme == "unix" and not parts.path:
        raise InvalidUrlError(f"URL {url!r} names no socket path: use unix:///run/redis.sock")
    return ConnectionSpec(url, scheme)


_SENTINEL_FORM = "redis+sentinel://[user:password@]host:26379[,host2:26379...]/<master name>[/<db>]"
_SENTINEL_QUERY = ("sentinel_username", "sentinel_password")
_TLS_QUERY = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")


def _login_and_hosts(netloc: str) -> tuple[str | None, str | None, list[str]]:
    """A multi-host URL's "[user:password@]host[:port][,host...]": user, password, host list."""
    userinfo, _, hosts = netloc.rpartition("@")
    username, has_password, password = userinfo.partition(":")
    return unquote(username) or None, unquote(password) if has_password else None, hosts.split(",")


def _sentinel_target(url: str, parts: SplitResult, *, tls: bool) -> SentinelTarget:
    username, password, hosts = _login_and_hosts(parts.netloc)
    sentinels = tuple(_sentinel_address(url, h) for h in hosts)
    master_name, db = _master_and_db(url, parts.path)
    query = _sentinel_query(url, parts.query, tls=tls)
    return SentinelTarget(
        sentinels=sentinels,
        master_name=master_name,
        db=db,
        username=username,
        password=password,
        sentinel_username=query.pop("sentinel_username", None),
        sentinel_password=query.pop("sentinel_password", None),
        tls=tuple(sorted(query.items())) if tls else None,
    )


_CLUSTER_FORM = "redis+cluster://[user:password@]host:6379[,host2:6379...]"


def _cluster_target(url: str, parts: SplitResult, *, tls: bool) -> ClusterTarget:
    username, password, hosts = _login_and_hosts(parts.netloc)
    if parts.path.strip("/") not in ("", "0"):
        raise InvalidUrlError(f"URL {url!r} names a database: a cluster has db 0 only ({_CLUSTER_FORM})")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - set(_TLS_QUERY if tls else ()))
    if unknown:
        raise InvalidUrlError(
            f"URL {url!r} has unknown options {unknown}: a cluster URL takes none (rediss+cluster: ssl_*)"
        )
    return ClusterTarget(
        nodes=tuple(_address(url, h, _REDIS_PORT, "node", _CLUSTER_FORM) for h in hosts),
        username=username,
        password=password,
        tls=tuple(sorted(options.items())) if tls else None,
    )


def _sentinel_address(url: str, host_port: str) -> tuple[str, int]:
    return _address(url, host_port, _SENTINEL_PORT, "sentinel", _SENTINEL_FORM)


def _address(url: str, host_port: str, default_port: int, what: str, form: str) -> tuple[str, int]:
    """One "host[:port]" of a list of nodes ("[::1]:26379" for IPv6)."""
    if host_port.startswith("["):
        host, bracket, rest = host_port[1:].partition("]")
        colon, port = rest[:1], rest[1:]
        if not bracket or colon not in ("", ":"):
            host = ""  # "[::1" or "[::1]x": refused as no host
    else:
        host, colon, port = host_port.partition(":")
    if not host:
        raise InvalidUrlError(f"URL {url!r} has a {what} with no host ({host_port!r}): use {form}")
    if not colon:
        return host, default_port
    if not _is_number(port) or not 0 < int(port) < 65536:
        raise InvalidUrlError(f"URL {url!r} has a bad {what} port {port!r}: use a number 1..65535")
    return host, int(port)


def _master_and_db(url: str, path: str) -> tuple[str, int]:
    name, _, db = path.removeprefix("/").removesuffix("/").partition("/")
    if not name:
        raise InvalidUrlError(f"URL {url!r} names no master: use {_SENTINEL_FORM}")
    if not db:
        return unquote(name), 0
    if not _is_number(db):
        raise InvalidUrlError(
            f"URL {url!r} has a bad database {db!r}: use a number (0, 1 ...) after the name"
        )
    return unquote(name), int(db)


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _sentinel_query(url: str, query: str, *, tls: bool) -> dict[str, str]:
    allowed = _SENTINEL_QUERY + _TLS_QUERY if tls else _SENTINEL_QUERY
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        hint = (
            " (ssl_* options need rediss+sentinel://)" if any(k.startswith("ssl_") for k in unknown) else ""
        )
        raise InvalidUrlError(
            f"URL {url!r} has unknown options {unknown}: a sentinel URL takes {', '.join(allowed)}{hint}"
        )
    return options


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
