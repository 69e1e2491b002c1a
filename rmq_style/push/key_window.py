"""Key-ordered consumption, the pure part: the per-key shards of one queue and their fair order (no I/O).

A ``KeyWindow`` holds the entries of one queue read and not finished, split by
ordering key: at most one entry of a key is handed out at a time (its shard's
head), keys take turns round-robin, and a key whose head failed stays out of
turn (``hold``) until its suspend time is over (``resume``), holding only itself.
The window is bounded: ``room`` says how many more entries may be read.

>>> w = KeyWindow(cap=4)
>>> for entry, key in [("1-0", "a"), ("2-0", "a"), ("3-0", "b")]:
...     w.add(key, entry)
>>> w.room
1
>>> [w.take(), w.take(), w.take()]  # a's second entry waits for its first
[('a', '1-0'), ('b', '3-0'), None]
>>> w.done("a"); w.take()
('a', '2-0')
>>> w.hold("b"); w.take() is None  # b failed: it holds itself only
True
>>> w.resume("b"); w.take()
('b', '3-0')

``ordering_key`` is the default key of a message: its first business key.

>>> from rmq_style._message import ReceivedMessage
>>> ordering_key(ReceivedMessage("t", 0, b"1-0", {b"k": b"user-7 order-9"}))
'user-7'
>>> ordering_key(ReceivedMessage("t", 0, b"1-0", {b"k": b""})) is None
True
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .._errors import UsageError
from .._message import ReceivedMessage

__all__ = ["KeyFunction", "KeyWindow", "OrderKey", "key_of", "key_order_of", "ordering_key"]

T = TypeVar("T")
OrderKey = str | bytes | int | None
KeyFunction = Callable[[ReceivedMessage], OrderKey]


def ordering_key(msg: ReceivedMessage) -> OrderKey:
    """The default ordering key: the message's first business key (``keys=[...]`` of the send); None
    without keys (all such messages of a queue form one key)."""
    keys = msg.keys
    return keys[0] if keys else None


def key_of(function: KeyFunction, msg: ReceivedMessage) -> Hashable:
    """*function*'s key of *msg*, checked (``1``, ``"1"`` and ``b"1"`` are three keys)."""
    key = function(msg)
    if key is None or type(key) in _KEY_TYPES:
        return key
    if isinstance(key, str | bytes | int) and not isinstance(key, bool):
        return key
    raise TypeError(f"an ordering key is str, bytes, int or None, got {type(key).__name__}")


_KEY_TYPES = (str, bytes, int)


@dataclass(slots=True)
class _Shard(Generic[T]):
    entries: deque[T]
    busy: bool = False  # its head is handed out (running) or held (failed, waiting to be tried again)


class KeyWindow(Generic[T]):
    """The entries of one queue in hand, by key: one head per key out at a time, keys round-robin."""

    __slots__ = ("cap", "ready", "shards", "size")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.shards: dict[Hashable, _Shard[T]] = {}
        self.ready: deque[Hashable] = deque()  # keys whose head may be handed out, in turn
        self.size = 0  # entries in hand: queued and out

    def __repr__(self) -> str:
        return f"<KeyWindow size={self.size}/{self.cap} keys={len(self.shards)} ready={len(self.ready)}>"

    @property
    def room(self) -> int:
        """How many more entries may be read (back pressure at the cap)."""
        return max(self.cap - self.size, 0)

    def add(self, key: Hashable, entry: T) -> None:
        """*entry* read: queued behind the entries of its key already in hand."""
        shard = self.shards.get(key)
        if shard is None:
            self.shards[key] = _Shard(deque((entry,)))
            self.ready.append(key)
        else:
            shard.entries.append(entry)
        self.size += 1

    def take(self) -> tuple[Hashable, T] | None:
        """The head of the next key in turn, now out; None when no key may go."""
        if not self.ready:
            return None
        key = self.ready.popleft()
        shard = self.shards[key]
        shard.busy = True
        return key, shard.entries[0]

    def done(self, key: Hashable) -> None:
        """*key*'s head is finished (handled or dead-lettered): its next entry gets a turn."""
        shard = self.shards[key]
        shard.entries.popleft()
        self.size -= 1
        shard.busy = False
        if shard.entries:
            self.ready.append(key)
        else:
            del self.shards[key]

    def hold(self, key: Hashable) -> None:
        """*key*'s head failed: it stays at the head, out of turn, until ``resume``."""
        self.shards[key].busy = True

    def resume(self, key: Hashable) -> None:
        """*key*'s held head may be tried again (its turn comes round-robin)."""
        shard = self.shards.get(key)
        if shard is not None and shard.busy:
            shard.busy = False
            self.ready.append(key)

    def heads(self) -> list[T]:
        """The head of every key (for tests and progress displays)."""
        return [s.entries[0] for s in self.shards.values()]


def key_order_of(order: str | None, order_key: KeyFunction | None, batch: int) -> KeyFunction | None:
    """The ordering key function of a subscription with *order* (None unless ``order="key"``).

    >>> key_order_of("key", None, 1) is ordering_key
    True
    >>> key_order_of("queue", None, 1) is None
    True
    """
    if order not in (None, "queue", "key"):
        raise UsageError(f"order is 'queue' (orderly) or 'key' (key-ordered), got {order!r}")
    if order_key is not None and order != "key":
        raise UsageError("order_key needs order='key'")
    if order != "key":
        return None
    if batch > 1:
        raise UsageError("order='key' calls the listener with one message at a time: no batch")
    if order_key is not None and not callable(order_key):
        raise UsageError(f"order_key must be callable, got {order_key!r}")
    return order_key or ordering_key
