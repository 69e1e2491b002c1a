"""Connection URLs: every scheme against a real server, and the errors for the rest."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pytest
import redis

from rmq_style import Admin, BrokerRefusedError, BrokerUnavailableError, InvalidUrlError, Message, Producer
from rmq_style._connection import parse_url
from rmq_style.testing import RedisServer, free_port


def roundtrip(url: str) -> int | None:
    with Admin(url) as admin:
        admin.create_topic("conn", queues=1)
    with Producer(url) as producer:
        return producer.send(Message("conn", b"x")).queue_offset


@pytest.fixture(scope="module")
def special_server() -> Iterator[RedisServer]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the TLS test certificate (.ci/run installs it)")
    with RedisServer(unixsocket=True, tls=True) as server:
        yield server


def test_tls_url(special_server: RedisServer) -> None:
    redis.Redis.from_url(special_server.url).flushall()
    assert roundtrip(special_server.tls_url) == 0


def test_unix_socket_url(special_server: RedisServer) -> None:
    redis.Redis.from_url(special_server.url).flushall()
    assert roundtrip(f"unix://{special_server.unixsocket}?db=0") == 0


def test_acl_user_and_password_in_url(special_server: RedisServer) -> None:
    admin = redis.Redis.from_url(special_server.url)
    admin.flushall()
    admin.acl_setuser("alice", enabled=True, passwords=["+s3cret"], keys=["*"], commands=["+@all"])
    url = f"redis://alice:s3cret@127.0.0.1:{special_server.port}/0"
    assert roundtrip(url) == 0
    with pytest.raises(BrokerRefusedError, match=r"\(AUTH\): invalid username-password") as refused:
        roundtrip(f"redis://alice:wrong@127.0.0.1:{special_server.port}/0")
    assert refused.value.code == "AUTH"


def test_memory_urls_share_a_server_by_name() -> None:
    assert roundtrip("memory://conn-shared") == 0
    with Producer("memory://conn-shared") as producer:
        assert producer.send(Message("conn", b"y")).queue_offset == 1
    with Admin("memory://conn-other") as admin:
        assert admin.list_topics() == []


def test_unix_url_without_a_path_is_refused() -> None:
    with pytest.raises(InvalidUrlError, match="names no socket path"):
        Producer("unix://")


def test_sentinel_url_names_the_sentinels_the_master_its_db_and_the_logins() -> None:
    url = "redis+sentinel://alice:p%40ss@s1:26380,[::1],s3/my%20master/2?sentinel_password=s-secret"
    target = parse_url(url).sentinel
    assert target is not None
    assert target.sentinels == (("s1", 26380), ("::1", 26379), ("s3", 26379))
    assert (target.master_name, target.db) == ("my master", 2)
    assert target.master_options() == {"db": 2, "username": "alice", "password": "p@ss"}
    asking = target.sentinel_options()
    assert (asking["username"], asking["password"], asking["protocol"]) == (None, "s-secret", 2)
    assert "p@ss" not in repr(target) and "s-secret" not in repr(target)


def test_sentinels_get_no_login_unless_given_and_tls_goes_to_both() -> None:
    target = parse_url("rediss+sentinel://:pw@s1/m?ssl_ca_certs=/ca.pem").sentinel
    assert target is not None
    assert target.master_options() == {
        "db": 0, "username": None, "password": "pw", "ssl": True, "ssl_ca_certs": "/ca.pem"
    }  # fmt: skip
    asking = target.sentinel_options()
    assert (asking["username"], asking["password"]) == (None, None)
    assert (asking["ssl"], asking["ssl_ca_certs"]) == (True, "/ca.pem")


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("redis+sentinel://127.0.0.1:26379", "names no master"),
        ("redis+sentinel://127.0.0.1:26379/", "names no master"),
        ("redis+sentinel:///mymaster", "sentinel with no host"),
        ("redis+sentinel://s1:26379,/mymaster", "sentinel with no host"),
        ("redis+sentinel://user:pw@/mymaster", "sentinel with no host"),
        ("redis+sentinel://s1:port/mymaster", "bad sentinel port 'port'"),
        ("redis+sentinel://s1:70000/mymaster", "bad sentinel port '70000'"),
        ("redis+sentinel://s1:/mymaster", "bad sentinel port ''"),
        ("redis+sentinel://s1/mymaster/zero", "bad database 'zero'"),
        ("redis+sentinel://s1/mymaster/-1", "bad database '-1'"),
        ("redis+sentinel://s1/mymaster/0/extra", "bad database '0/extra'"),
        ("redis+sentinel://s1/mymaster?socket_timeout=1", r"unknown options \['socket_timeout'\]"),
        ("redis+sentinel://s1/mymaster?ssl_ca_certs=/ca.pem", r"need rediss\+sentinel://"),
        ("redis+sentinel://[::1/mymaster", "malformed"),
    ],
)
def test_invalid_sentinel_urls_are_refused_clearly(url: str, match: str) -> None:
    with pytest.raises(InvalidUrlError, match=match):
        Producer(url)


@pytest.mark.parametrize("url", ["http://localhost", "kafka://x:9092", "localhost:6379", "redis://", ""])
def test_unsupported_urls_are_refused_clearly(url: str) -> None:
    with pytest.raises(InvalidUrlError, match="redis://"):
        Producer(url)


def test_unreachable_redis_at_send_time_is_a_clear_error_after_retries() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    start = time.monotonic()
    with (
        Producer(url, retries=2, retry_backoff_ms=10) as producer,
        pytest.raises(BrokerUnavailableError, match="after 3 attempt"),
    ):
        producer.send(Message("conn", b"x"))
    assert time.monotonic() - start < 5


def test_send_retries_across_a_redis_restart(private_redis: RedisServer) -> None:
    with Admin(private_redis.url) as admin:
        admin.create_topic("conn", queues=1)
    with Producer(private_redis.url, retries=5, retry_backoff_ms=20) as producer:
        first = producer.send(Message("conn", b"1"))
        private_redis.restart()  # AOF: the topic and the first message survive
        second = producer.send(Message("conn", b"2"))
    assert (first.queue_offset, second.queue_offset) == (0, 1)
    assert redis.Redis.from_url(private_redis.url).xlen("rmq:{conn:0}:s") == 2


@pytest.mark.parametrize("shared", ["redis://127.0.0.1:6379/0", "redis://localhost", "redis://[::1]:6379"])
def test_benchmarks_refuse_the_shared_redis(shared: str) -> None:
    from rmq_style.testing import private_redis_url

    with (
        pytest.raises(SystemExit, match=r"refusing .* the shared Redis on port 6379 would be flushed"),
        private_redis_url(shared),
    ):
        pass


def test_benchmarks_use_a_given_private_redis_or_start_one(redis_server: RedisServer) -> None:
    from rmq_style.testing import private_redis_url

    with private_redis_url(redis_server.url) as url:
        assert url == redis_server.url
    with private_redis_url() as url:
        assert url != redis_server.url and redis.Redis.from_url(url).ping()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()  # stopped after use
