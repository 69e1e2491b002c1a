"""Follow a Sentinel failover the moment the sentinels announce it (pub/sub on every sentinel).

redis-py asks the sentinels for the master only when a connection connects,
so after a planned ``SENTINEL FAILOVER`` its open connections keep writing to
the old master, which stays up and writable (about 10 s) until the sentinels
turn it into a replica and it throws those writes away. A ``SwitchWatch``
listens to every sentinel of a URL in daemon threads and, for its master:

- ``+failover-state-send-slaveof-noone`` (the leader is about to promote a
  replica): writes are held (``held()``), up to ``HOLD_S``, so none lands on
  the old master while the replica stops replicating it;
- ``+switch-master``: the new address and a new ``generation``; every tracked
  connection to another address has its socket shut down (a blocked read
  wakes up), and a connection checks ``generation`` before each send;
- ``-failover-abort-*``: the hold ends.

One watch per sentinel target and process, shared by every client of it and
closed with the last one. Connections call ``track``/``refute``; all state is
plain attributes, read without a lock on the hot path.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import weakref
from typing import Any

import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from ._connection import SentinelTarget

__all__ = ["HOLD_S", "SwitchWatch", "acquire_watch", "release_watch"]

log = structlog.get_logger("rmq_style.sentinel")

HOLD_S = 5.0  # the longest writes wait for +switch-master after a promotion started
_RETRY_S = 0.5  # a sentinel that cannot be reached is asked again after this
_SWITCH = "+switch-master"
_PROMOTING = "+failover-state-send-slaveof-noone"
_ABORT = "-failover-abort-*"


class SwitchWatch:
    """The master's address as the sentinels last announced it, and whether a promotion is under way."""

    def __init__(self, target: SentinelTarget) -> None:
        self.master_name = target.master_name
        self.address: tuple[str, int] | None = None  # from the last +switch-master seen
        self.generation = 0  # bumped at each switch: connections compare it before each send
        self.hold_until = 0.0  # monotonic deadline of a promotion under way; 0: none
        self.users = 0
        self._lock = threading.Lock()
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self._stop = threading.Event()
        # a listener waits for events without a read timeout, and tries a sentinel once per round
        options = {**target.sentinel_options(), "socket_timeout": None, "retry": Retry(NoBackoff(), 0)}
        self._threads = [
            threading.Thread(
                target=self._listen,
                args=(host, port, options),
                name=f"rmq-sentinel-watch-{host}:{port}",
                daemon=True,
            )
            for host, port in target.sentinels
        ]
        for thread in self._threads:
            thread.start()

    def held(self) -> bool:
        """Whether writes should wait: a replica is being promoted and no switch was announced yet."""
        if self.hold_until and time.monotonic() < self.hold_until:
            return True
        self.hold_until = 0.0
        return False

    def track(self, connection: Any) -> None:
        """Remember a connection that just connected, to close it at the next switch."""
        with self._lock:
            self._connections.add(connection)

    def refute(self, address: tuple[str, int]) -> None:
        """The announced master refused a write as a replica: ask the sentinels again on the next connect."""
        if self.address == address:
            self.address = None

    def announce(self, address: tuple[str, int]) -> None:
        """+switch-master: go to *address*; connections elsewhere are shut (a blocked read wakes up)."""
        with self._lock:
            self.hold_until = 0.0
            if address == self.address:
                return  # the same switch, heard from another sentinel
            self.address = address
            self.generation += 1
            stale = [c for c in self._connections if (c.host, c.port) != address]
        for connection in stale:
            _shut(connection)
        log.warning(
            "sentinel.switch_master", master=self.master_name, address=f"{address[0]}:{address[1]}",
            connections_closed=len(stale),
        )  # fmt: skip

    def on_event(self, channel: str, data: str) -> None:
        words = data.split()
        if channel == _SWITCH:
            if len(words) == 5 and words[0] == self.master_name:
                self.announce((words[3], int(words[4])))
            return
        # "<type> <name> <ip> <port> @ <master> <ip> <port>", or "master <name> <ip> <port>"
        master = words[words.index("@") + 1] if "@" in words else words[1] if len(words) > 1 else ""
        if master != self.master_name:
            return
        if channel == _PROMOTING:
            self.hold_until = time.monotonic() + HOLD_S
            log.warning("sentinel.promotion_started", master=self.master_name)
        else:
            self.hold_until = 0.0

    def _listen(self, host: str, port: int, options: dict[str, Any]) -> None:
        while not self._stop.is_set():
            try:
                with redis.Redis(host=host, port=port, **options) as sentinel:
                    pubsub = sentinel.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(_SWITCH, _PROMOTING)
                    pubsub.psubscribe(_ABORT)
                    while not self._stop.is_set():
                        message = pubsub.get_message(timeout=0.2)
                        if message is not None:
                            self.on_event(_text(message["channel"]), _text(message["data"]))
                    pubsub.close()
            except (redis.RedisError, OSError, ValueError) as exc:
                log.debug("sentinel.watch_unreachable", sentinel=f"{host}:{port}", error=str(exc))
                self._stop.wait(_RETRY_S)  # the sentinel is away: ask again later

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(2)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _shut(connection: Any) -> None:
    """Shut the socket of a (sync or asyncio) redis-py connection down from any thread: its reads end."""
    writer = getattr(connection, "_writer", None)
    sock = writer.get_extra_info("socket") if writer is not None else getattr(connection, "_sock", None)
    if sock is None:
        return
    with contextlib.suppress(OSError):  # already closed by its owner: nothing left to shut
        sock.shutdown(socket.SHUT_RDWR)


_watches: dict[tuple[int, SentinelTarget], SwitchWatch] = {}
_watches_lock = threading.Lock()


def acquire_watch(target: SentinelTarget) -> SwitchWatch:
    """The watch of *target* in this process (started on first use); give it back with release_watch."""
    with _watches_lock:
        key = (os.getpid(), target)
        watch = _watches.get(key)
        if watch is None:
            watch = _watches[key] = SwitchWatch(target)
        watch.users += 1
        return watch


def release_watch(target: SentinelTarget, watch: SwitchWatch) -> None:
    with _watches_lock:
        watch.users -= 1
        if watch.users > 0:
            return
        if _watches.get((os.getpid(), target)) is watch:
            del _watches[(os.getpid(), target)]
    watch.close()
