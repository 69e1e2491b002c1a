"""Clients of a Sentinel-managed master that follow a failover as soon as the sentinels announce it."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar, cast

from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from .._connection import SentinelTarget
from .._sentinel_watch import SwitchWatch, acquire_watch, release_watch

__all__ = ["MasterConnection", "MasterPool", "master_client"]

C = TypeVar("C")


def master_client(target: SentinelTarget, options: dict[str, Any], client_class: type[C]) -> C:
    """A client of the master the sentinels name, following a failover as soon as they announce it.

    Each connection asks the sentinels when it connects (or takes the address
    the last +switch-master announced), and checks the shared SwitchWatch
    before each send: after a switch it leaves the old master before writing.
    A connection refused with READONLY (a demoted master: redis-py's sentinel
    connection disconnects and raises a ConnectionError) reconnects too.
    *client_class* is the I/O layer's client (it imports this module, not the reverse).
    """
    # one try per sentinel (redis-py's default is 3, with backoff): discovery moves on to the
    # next sentinel at once, and our callers retry with their own policy
    asking = {**target.sentinel_options(), "retry": Retry(NoBackoff(), 0)}
    sentinels = cast(Any, Sentinel)(list(target.sentinels), sentinel_kwargs=asking)
    client = sentinels.master_for(
        target.master_name,
        redis_class=client_class,
        connection_pool_class=MasterPool,
        sentinel_target=target,
        **options,
        **target.master_options(),
    )
    return cast(C, client)


class MasterConnection(SentinelManagedConnection):
    """A connection to the master that leaves it at once when the sentinels announce a switch."""

    def __init__(self, **kwargs: Any) -> None:
        self.watch: SwitchWatch = kwargs.pop("switch_watch")
        self.generation = -1  # the watch's generation when this connected; -1: not yet
        cast(Any, super()).__init__(**kwargs)

    async def _connect_retry(self) -> None:
        if self.is_connected:
            return
        watch = self.watch
        generation, address = watch.generation, watch.address  # read before connecting
        if address is None:
            address = await self.connection_pool.get_master_address()
        else:  # announced: a sentinel that has not heard yet may still name the old master
            self.connection_pool.master_address = address
        await cast(Any, self).connect_to(address)
        self.generation = generation
        watch.track(self)

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        watch = self.watch
        # a closed connection reconnects through the sentinels (redis-py's send would go back to
        # the old address, #3874); three reads when nothing happened
        if watch.generation != self.generation or watch.hold_until or not self.is_connected:
            await self._follow(watch)
        await cast(Any, super()).send_packed_command(command, check_health)

    async def _follow(self, watch: SwitchWatch) -> None:
        """Wait out a promotion under way, then leave a master the sentinels replaced."""
        while watch.held():
            await asyncio.sleep(0.005)
        if self.is_connected and watch.address not in (None, (self.host, self.port)):
            await cast(Any, self).disconnect()
        if not self.is_connected:
            await cast(Any, self).connect()
        self.generation = max(self.generation, watch.generation)

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except RedisConnectionError as exc:
            if str(exc) == "The previous master is now a slave":  # READONLY, as redis-py words it
                self.watch.refute((self.host, self.port))
            raise


class MasterSSLConnection(MasterConnection, SSLConnection):
    pass


class MasterPool(SentinelConnectionPool):
    """The pool of a Sentinel-managed master; it owns the clients of the sentinels and closes them too."""

    def __init__(self, service_name: str, sentinel_manager: Any, **kwargs: Any) -> None:
        self.target: SentinelTarget = kwargs.pop("sentinel_target")
        tls = kwargs.pop("ssl", False)
        self.watch = acquire_watch(self.target)
        self.watch_held = True
        kwargs["connection_class"] = MasterSSLConnection if tls else MasterConnection
        cast(Any, super()).__init__(service_name, sentinel_manager, **kwargs)
        self.connection_kwargs["switch_watch"] = self.watch

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            try:
                await self.sentinel_manager.aclose()
            finally:
                if self.watch_held:
                    self.watch_held = False
                    release_watch(self.target, self.watch)
