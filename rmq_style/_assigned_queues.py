"""The lite pull consumer's assigned queues (RocketMQ's AssignedMessageQueue), pure.

Per owned queue: the position of the last message handed to the application
(what commit stores), the position fetched up to, the last commit, and at
most one pull batch of prefetched messages. Paused queues keep their buffer
but hand nothing out; a poll takes one batch round-robin over the others.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from ._errors import UsageError
from ._message import MessageQueue, ReceivedMessage
from ._offsets import Offset, parse_offset

__all__ = ["AssignedQueues", "QueueState"]


@dataclass(slots=True)
class QueueState:
    position: Offset  # last message handed to the application (or skipped)
    fetched: Offset  # last entry read from Redis
    committed: Offset | None
    buffer: deque[ReceivedMessage] = field(default_factory=deque)


class AssignedQueues(dict[MessageQueue, QueueState]):
    """The owned queues and their state; ``paused`` ones hand out nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.paused: set[MessageQueue] = set()
        self._turn = 0

    def assignment(self) -> list[MessageQueue]:
        return sorted(self)

    def pause(self, queues: Iterable[MessageQueue]) -> None:
        self.paused.update(queues)

    def resume(self, queues: Iterable[MessageQueue]) -> None:
        self.paused.difference_update(queues)

    def active(self) -> list[MessageQueue]:
        """The owned queues not paused, in order."""
        return [q for q in sorted(self) if q not in self.paused]

    def state(self, queue: MessageQueue) -> QueueState:
        state = self.get(queue)
        if state is None:
            raise UsageError(
                f"queue {queue} is not assigned to this consumer (assignment: {self.assignment()})"
            )
        return state

    def move(self, queue: MessageQueue, position: Offset) -> None:
        """Continue *queue* after *position*: its prefetched messages go."""
        state = self[queue]
        state.buffer.clear()
        state.position = state.fetched = position

    def take(self, limit: int) -> list[ReceivedMessage]:
        """Up to *limit* prefetched messages, round-robin over the unpaused queues."""
        queues = [q for q in self.active() if self[q].buffer]
        out: list[ReceivedMessage] = []
        if not queues:
            return out
        self._turn = (self._turn + 1) % len(queues)
        queues = queues[self._turn :] + queues[: self._turn]
        if len(queues) == 1:
            buffer = self[queues[0]].buffer
            out = [buffer.popleft() for _ in range(min(limit, len(buffer)))]
            taken = {queues[0]: out[-1]}
        else:
            taken = {}
            while len(out) < limit and queues:
                for queue in list(queues):
                    buffer = self[queue].buffer
                    taken[queue] = message = buffer.popleft()
                    out.append(message)
                    if not buffer:
                        queues.remove(queue)
                    if len(out) >= limit:
                        break
        for queue, message in taken.items():
            state = self[queue]
            # past any filtered-out entries too once the buffer is drained
            state.position = parse_offset(message.offset) if state.buffer else state.fetched
        return out
