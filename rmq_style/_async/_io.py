"""Clients, and the driver that runs flows (rmq_style._call_values) against Redis."""

from __future__ import annotations

import asyncio
import os
import traceback
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import redis.asyncio as redis_asyncio
from hiredis import pack_command
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ClusterDownError, NoScriptError, RedisError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .._call_values import Call, Command, Flow, Pause, refusal
from .._connection import ClusterTarget, memory_server, parse_url
from .._errors import BrokerUnavailableError
from ._lane import LaneClient, direct_round_trip, is_unblocked, pack_calls
from ._master import master_client
from ._replicated import cluster_waited_round_trip

__all__ = [
    "TRANSIENT_ERRORS",
    "AsyncClient",
    "ClientHolder",
    "LaneClient",
    "drive",
    "drive_with_retries",
    "execute",
    "execute_unparsed",
    "is_cluster",
    "open_client",
]

T = TypeVar("T")
AsyncClient = redis_asyncio.Redis
# Redis (or, on a cluster, a node or the slots of one) away for now: worth another try later
TRANSIENT_ERRORS = (RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError)
# any refusal or failure of the client: what the runtime's task boundary treats as weather
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError,)
_ATTENTION = (NoScriptError, *TRANSIENT_ERRORS)  # replies that are not a call's own outcome


def open_client(url: str) -> AsyncClient:
    """A client for *url*; memory:// gives an in-process fakeredis shared by the same name."""
    spec = parse_url(url)
    if spec.memory_name is not None:
        from fakeredis import FakeAsyncRedis  # noqa: PLC0415 - optional extra

        server = memory_server(spec.memory_name)
        return FakeAsyncRedis(server=server, protocol=2)  # type: ignore[no-any-return,unused-ignore]
    if spec.sentinel is not None:
        return master_client(spec.sentinel, spec.client_options, LaneClient)
    if spec.cluster is not None:
        return _cluster_client(spec.cluster, spec.client_options)
    return LaneClient.from_url(url, **spec.client_options)


class ClusterClient(RedisCluster):
    """redis-py's cluster client, which learns the slots before its first command.

    redis-py 8's asyncio client picks the node of a command before it reads the
    slot table, so a new client's first command goes to a random node (MOVED);
    five MOVED and it closes every connection, breaking the other commands in flight.
    """

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_initialize", False):  # the sync client reads the table when it is made
            await cast(Any, self).initialize()
        try:
            return await cast(Any, super()).execute_command(*args, **kwargs)
        except ResponseError as exc:
            if is_unblocked(exc):
                raise RedisConnectionError(f"the server changed role during a blocking read: {exc}") from exc
            raise
        except AttributeError as exc:
            if _closed_under_us(exc):
                raise RedisConnectionError(f"connection closed by a cluster topology refresh: {exc}") from exc
            raise


def _cluster_client(target: ClusterTarget, options: dict[str, Any]) -> AsyncClient:
    """A Redis Cluster client: commands go to the node of their keys' slot (one queue: one slot)."""
    nodes = [cast(Any, ClusterNode)(host, port) for host, port in target.nodes]
    return cast(AsyncClient, ClusterClient(startup_nodes=nodes, **options, **target.node_options()))


def is_cluster(client: AsyncClient) -> bool:
    """Whether *client* talks to a Redis Cluster: a multi-key read must then stay within one queue."""
    return isinstance(client, RedisCluster)


def _closed_under_us(exc: AttributeError) -> bool:
    """redis-py's asyncio cluster client closes a node's connections when it drops the node from its
    slot table (a failover), also one another task is writing on: that task fails with AttributeError
    ("'NoneType' object has no attribute 'writelines'"). A connection error for that call; any other
    AttributeError is ours and goes on as it is."""
    frames = traceback.extract_tb(exc.__traceback__)
    in_redis = bool(frames) and f"{os.sep}redis{os.sep}" in frames[-1].filename
    return in_redis and str(exc).startswith("'NoneType' object has no attribute")


def _args(call: Call) -> tuple[Any, ...]:
    return call.args if isinstance(call, Command) else call.evalsha_args


async def _load_scripts(client: AsyncClient, calls: Sequence[Call]) -> None:
    for source in {c.script.source for c in calls if not isinstance(c, Command)}:
        await client.script_load(source)


async def execute(client: AsyncClient, calls: Sequence[Call]) -> list[Any]:
    """Run *calls* in one round trip; a failed call's reply is its ResponseError.

    Scripts go by EVALSHA; after NOSCRIPT (a restarted or flushed server) they
    are loaded and the refused calls run again: NOSCRIPT means nothing ran.
    """
    replies = await _round_trip(client, calls)
    for reply in replies:
        if isinstance(reply, _ATTENTION):
            break
    else:
        return replies  # the usual case, checked without building a list
    for reply in replies:
        if isinstance(reply, TRANSIENT_ERRORS):
            raise reply  # a cluster node away: as a whole pipeline fails on one server
    refused = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
    if refused:
        # a WAIT after them counted replicas before they wrote anything: it runs again after them
        refused = sorted({*refused, *(i for i in range(refused[0] + 1, len(calls)) if _is_wait(calls[i]))})
        await _load_scripts(client, [calls[i] for i in refused])
        again = await _round_trip(client, [calls[i] for i in refused])
        for i, reply in zip(refused, again, strict=True):
            replies[i] = reply
    return replies


def _is_wait(call: Call) -> bool:
    return type(call) is Command and call.args[0] in ("WAIT", "WAITAOF")


def _packs(client: AsyncClient) -> bool:
    """Whether calls may go packed on *client*'s own connections (redis-py's plain client or ours)."""
    return (type(client) is LaneClient or type(client) is redis_asyncio.Redis) and client.connection is None


async def execute_unparsed(client: AsyncClient, cmd: Command) -> Any:
    """*cmd*'s reply (a failed call's: its ResponseError), left as Redis sent it where the client packs
    calls (a plain, lane or Sentinel-managed client), else as redis-py's reply callback makes it.

    An XREADGROUP's entries keep their fields as a flat list ``[name, value, ...]``
    there, instead of a dict per entry built before anyone asked: the caller reads
    both shapes (a cluster or fakeredis client gives the dicts).
    """
    if _packs(client):
        (reply,) = await direct_round_trip(client, pack_command(cmd.args), 1)
        if isinstance(reply, ResponseError) and is_unblocked(reply):  # as LaneClient.execute_command
            raise RedisConnectionError(f"the server changed role during a blocking read: {reply}") from reply
        return reply
    (reply,) = await execute(client, [cmd])
    return reply


async def _round_trip(client: AsyncClient, calls: Sequence[Call]) -> list[Any]:
    if _packs(client):
        packed = pack_calls(calls)
        if packed is not None:
            return await direct_round_trip(client, packed, len(calls))
    if calls and _is_wait(calls[-1]) and isinstance(client, RedisCluster):  # WAIT on the writes' connections
        try:
            return await cluster_waited_round_trip(client, calls)
        except AttributeError as exc:  # its node's connections closed by another task's slot refresh
            if _closed_under_us(exc):
                raise RedisConnectionError(f"connection closed by a cluster topology refresh: {exc}") from exc
            raise
    if len(calls) == 1:
        try:
            return [await cast(Any, client).execute_command(*_args(calls[0]))]
        except ResponseError as exc:
            return [exc]
    pipe = client.pipeline(transaction=False)
    for call in calls:
        cast(Any, pipe).execute_command(*_args(call))
    try:
        return list(await pipe.execute(raise_on_error=False))
    except AttributeError as exc:
        if _closed_under_us(exc):
            raise RedisConnectionError(f"connection closed by a cluster topology refresh: {exc}") from exc
        raise


async def drive(client: AsyncClient, flow: Flow[T]) -> T:
    """Run a flow: send each batch of calls, hand the replies back, return its result."""
    try:
        step = next(flow)
        while True:
            if isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
                step = flow.send([])
            else:
                step = flow.send(await execute(client, step))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    except RedisError as exc:  # raised by the I/O itself (a refused AUTH at connect, ...)
        refused = refusal(exc)
        if refused is None:
            raise
        raise refused from exc


async def drive_with_retries(
    client: AsyncClient, make_flow: Callable[[], Flow[T]], retries: int, backoff_ms: int
) -> T:
    """Run a fresh flow again after a connection error, up to *retries* times, then raise."""
    attempt = 0
    while True:
        try:
            return await drive(client, make_flow())
        except TRANSIENT_ERRORS as exc:
            if attempt >= retries:
                raise BrokerUnavailableError(
                    f"Redis unreachable after {attempt + 1} attempt(s): {exc}; the operation may not have "
                    "taken effect"
                ) from exc
            await asyncio.sleep(backoff_ms * (2**attempt) / 1000)
            attempt += 1


class ClientHolder:
    """Base of the fronts: holds a client (its own, from a URL, or the caller's) and closes what it owns."""

    def __init__(self, url: str | AsyncClient) -> None:
        self._owns_client = isinstance(url, str)
        self._client = open_client(url) if isinstance(url, str) else url

    async def _drive(self, flow: Flow[T]) -> T:
        """Run *flow* once; a Redis that cannot be reached is BrokerUnavailableError, as for producers."""
        try:
            return await drive(self._client, flow)
        except TRANSIENT_ERRORS as exc:
            raise BrokerUnavailableError(
                f"Redis unreachable: {exc}; the operation may not have taken effect"
            ) from exc

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
