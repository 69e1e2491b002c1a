"""Where a broadcasting push member is: its instance name and its positions (no I/O but the commit).

A member's position in a queue is the last entry of the queue before the
first one it is still handling (RocketMQ's ProcessQueue min offset): the ids
read are kept in order (at most consumeMaxSpan of them behind the first
unsettled one), and the settled prefix moves the position.
"""

from __future__ import annotations

import os
import re
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .._async._io import execute
from .._call_values import Call as RedisCall
from .._call_values import command
from .context import Context
from .state import StreamState

__all__ = ["CONSUME_MAX_SPAN", "WORKER_SLOT_ENV", "Positions", "Track", "advance", "default_member_name"]

WORKER_SLOT_ENV = "RMQ_STYLE_WORKER_SLOT"  # set by the worker supervisor: the process' slot, 0..N-1
CONSUME_MAX_SPAN = 2000  # RocketMQ's consumeMaxSpan: read ids kept behind the first unsettled one
# a container id, or a Kubernetes Deployment's pod name (name-<template hash>-<5>): new at every re-creation
_GENERATED_HOST = re.compile(r"[0-9a-f]{12,64}|.+-[a-z0-9]{8,10}-[a-z0-9]{5}")


def default_member_name() -> tuple[str, str | None]:
    """The default instance name, and why it may not be stable (None: it is).

    The host name, and under ``rmq-style worker`` the process' slot (``host-w2``): the same
    after a restart of the process or the machine, distinct between the worker processes.
    """
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:100] or "host"
    slot = os.environ.get(WORKER_SLOT_ENV, "")
    name = f"{host}-w{slot}" if slot.isdigit() else host
    if _GENERATED_HOST.fullmatch(host):
        return (
            name,
            "the host name looks generated (a container id, a Deployment pod): a new one is a new member",
        )
    if not slot.isdigit():
        return name, "two processes on this host with the default name would share one position"
    return name, None


@dataclass(slots=True, eq=False)
class Track:
    """One queue stream of a broadcasting member: the ids read in order, and its stored position."""

    read: deque[bytes] = field(default_factory=deque)
    stored: bytes | None = None  # the position in Redis
    done: bytes | None = None  # the last id of the settled prefix of ``read``


def advance(track: Track, stream: StreamState) -> None:
    """Drop the settled prefix of the ids read: the last one dropped is the position to store."""
    read, in_flight = track.read, stream.in_flight
    while read and read[0] not in in_flight:
        track.done = read.popleft()


class Positions:
    """The offset store of a broadcasting push member (RocketMQ's ProcessQueue min offset, per queue)."""

    def __init__(self, c: Context, instance: str) -> None:
        self.c, self.instance = c, instance
        self.tracks: dict[StreamState, Track] = {}

    def read(self, stream: StreamState, entries: list[Any]) -> None:
        track = self.tracks.get(stream)
        if track is not None:
            track.read.extend(entry_id for entry_id, _ in entries)

    def behind(self, stream: StreamState) -> bool:
        """Too many read ids behind the first unsettled one: stop reading the queue (consumeMaxSpan)."""
        track = self.tracks.get(stream)
        if track is None:
            return False
        advance(track, stream)  # the settled prefix goes: what is kept is at most the span
        return len(track.read) >= max(CONSUME_MAX_SPAN, 2 * self.c.settings.pull_batch_size)

    def commit_calls(self) -> list[tuple[Track, bytes, RedisCall]]:
        out: list[tuple[Track, bytes, RedisCall]] = []
        for stream, track in self.tracks.items():
            advance(track, stream)
            if track.done is not None and track.done != track.stored:
                key = stream.queue.keys.broadcast(self.c.group)
                out.append((track, track.done, command("HSET", key, self.instance, track.done)))
        return out

    async def commit(self) -> None:
        """Store the positions that moved (one round trip); a failure is retried at the next commit."""
        planned = self.commit_calls()
        if not planned:
            return
        replies = await execute(self.c.redis(), [call for _, _, call in planned])
        for (track, done, _), reply in zip(planned, replies, strict=True):
            if isinstance(reply, Exception):
                self.c.log.error("broadcast.commit_failed", error=str(reply))
            else:
                track.stored = done
