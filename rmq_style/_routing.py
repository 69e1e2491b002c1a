"""Which queue a message goes to: round-robin, sharding key, or explicit.

The sharding hash is CRC-32 (IEEE 802.3, as zlib.crc32, Java's CRC32, Go's
hash/crc32 IEEE table) of the key's UTF-8 bytes, modulo the queue count: the
same key lands on the same queue in every process and language.

>>> queue_for_key("user-42", 8)
3
>>> queue_for_key("user-42", 8) == queue_for_key("user-42", 8)
True
"""

from __future__ import annotations

import threading
import zlib

from ._errors import QueueNotFoundError, UsageError

__all__ = ["RoundRobin", "check_queue_id", "queue_for_key"]


def queue_for_key(sharding_key: str | bytes | int, queue_count: int) -> int:
    """The queue of *sharding_key* (docs/storage.md: str as UTF-8, bytes as they are, int as decimal).

    Other types are refused: their text (``True``, ``1.5``) is Python's, not a contract.

    >>> queue_for_key(42, 8) == queue_for_key("42", 8), queue_for_key(bytearray(b"user-42"), 8)
    (True, 3)
    """
    kind = type(sharding_key)
    if kind is str:
        data = sharding_key.encode()  # type: ignore[union-attr]
    elif isinstance(sharding_key, bytes | bytearray | memoryview):
        data = bytes(sharding_key)
    elif isinstance(sharding_key, int) and kind is not bool:
        data = b"%d" % sharding_key
    elif isinstance(sharding_key, str):
        data = str.encode(sharding_key)
    else:
        raise UsageError(
            f"a sharding key is a str, bytes or int, not {kind.__name__} ({sharding_key!r}): "
            "convert it to the text other producers of the topic use"
        )
    return zlib.crc32(data) % queue_count


def check_queue_id(topic: str, queue_id: int, queue_count: int) -> int:
    if isinstance(queue_id, bool) or not isinstance(queue_id, int) or not 0 <= queue_id < queue_count:
        raise QueueNotFoundError(
            f"queue id {queue_id!r} is out of range for topic {topic!r}: it has queues 0..{queue_count - 1}"
        )
    return queue_id


class RoundRobin:
    """Per-topic round-robin queue choice (RocketMQ's default selector)."""

    def __init__(self) -> None:
        self._counters: dict[str, int] = {}
        self._lock = threading.Lock()

    def next(self, topic: str, queue_count: int) -> int:
        return self.take(topic, 1) % queue_count

    def take(self, topic: str, n: int) -> int:
        """Reserve the next *n* turns of *topic*: turn ``start + j`` goes to queue ``(start + j) % count``."""
        with self._lock:
            start = self._counters.get(topic, 0)
            self._counters[topic] = start + n
        return start
