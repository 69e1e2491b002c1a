"""Typed reply codes: one classify function reads error replies; the core imports nothing from redis."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from redis.exceptions import (
    AuthenticationError,
    ClusterDownError,
    NoPermissionError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from rmq_style._replies import ReplyCode, classify, is_error_reply

PACKAGE = Path(__file__).resolve().parent.parent / "rmq_style"
# the I/O fronts and the modules that own a client: the only ones that may import redis
# the I/O layer (clients, sentinel-following masters, per-node replicated round trips, the
# sentinel listener), the test kit's server processes and the metrics endpoint
IO_MODULES = {
    *(
        f"{front}/{name}.py"
        for front in ("_async", "_sync")
        for name in ("_io", "_lane", "_master", "_replicated")
    ),
    "_sentinel_watch.py",
    "_kit_server.py",
    "_kit_sentinel.py",
    "_kit_cluster.py",
    "metrics.py",
    "testing.py",
}


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (ResponseError("NOTOPIC orders"), ReplyCode.NOTOPIC),
        (ResponseError("FENCED lease of q held by w2"), ReplyCode.FENCED),
        (ResponseError("OFFSETRANGE 12 > 10"), ReplyCode.OFFSETRANGE),
        (ResponseError("SUBCONFLICT CONCURRENTLY *"), ReplyCode.SUBCONFLICT),
        (ResponseError("NOGROUP No such key 'q' or consumer group 'g'"), ReplyCode.NOGROUP),
        (ResponseError("BUSYGROUP Consumer Group name already exists"), ReplyCode.BUSYGROUP),
        (ResponseError("TXCOMMITTED 1-0"), ReplyCode.TXCOMMITTED),
        (ResponseError("NOREPLICAS Not enough good replicas to write."), ReplyCode.NOREPLICAS),
        (ResponseError("WRONGPASS invalid username-password pair"), ReplyCode.AUTH),
        (AuthenticationError("Authentication required."), ReplyCode.AUTH),
        (NoPermissionError("this user has no permissions to run the 'xadd' command"), ReplyCode.NOPERM),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), None),
        (ResponseError("NOGROUPS is not a code"), None),
        (ClusterDownError("The cluster is down"), None),
        (RedisConnectionError("NOGROUP lookalike"), None),  # not an error reply: a lost connection
        (b"NOGROUP", None),
        (None, None),
    ],
)
def test_classify(reply: object, code: ReplyCode | None) -> None:
    assert classify(reply) is code


def test_error_replies_are_response_errors_only() -> None:
    assert is_error_reply(ResponseError("ERR no such key"))
    assert is_error_reply(ClusterDownError("x"))
    assert not is_error_reply(RedisConnectionError("x"))
    assert not is_error_reply("ERR no such key")


def _imports_redis(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "redis" for a in node.names):
            return True
        if (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").split(".")[0] == "redis"
        ):
            return True
    return False


def test_only_the_io_modules_import_redis() -> None:
    importing = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if _imports_redis(p)}
    assert importing <= IO_MODULES, sorted(importing - IO_MODULES)
