"""Which offset a partition may commit while records finish out of order.

The router runs many provider calls at once, so records of one partition
finish in any order. Kafka commits a single position per partition, meaning
"everything before this is done". This tracker keeps, per partition, the
offsets started and finished, and answers the highest position that is safe to
commit: the lowest offset still in flight (or one past the last finished one).
Pure: no Kafka types, just (topic, partition) keys and integers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class PartitionOffsets:
    """Started offsets of one partition, in the order they were fetched (ascending)."""

    __slots__ = ("_done", "_next_commit", "_pending")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self._next_commit: int | None = None

    def start(self, offset: int) -> None:
        if self._pending and offset <= self._pending[-1]:
            raise ValueError(f"offset {offset} started out of order after {self._pending[-1]}")
        self._pending.append(offset)

    def finish(self, offset: int) -> None:
        if not self._pending or offset < self._pending[0]:
            # Not in flight: a late duplicate finish (after a rebalance both the revoked
            # task and the re-delivered one finish the same offset). Recording it would
            # leave it in `_done` for ever and make `in_flight` negative.
            return
        self._done.add(offset)
        while self._pending and self._pending[0] in self._done:
            head = self._pending.popleft()
            self._done.discard(head)
            self._next_commit = head + 1

    def committable(self) -> int | None:
        """The offset to commit (the next record to read), or None if nothing finished yet."""
        return self._next_commit

    @property
    def in_flight(self) -> int:
        return len(self._pending) - len(self._done)


class OffsetTracker(Generic[K]):
    """`PartitionOffsets` for every assigned partition, with change detection for commits."""

    def __init__(self) -> None:
        self._parts: dict[K, PartitionOffsets] = {}
        self._committed: dict[K, int] = {}

    def start(self, tp: K, offset: int) -> None:
        self._parts.setdefault(tp, PartitionOffsets()).start(offset)

    def finish(self, tp: K, offset: int) -> None:
        part = self._parts.get(tp)
        if part is not None:  # None: the partition was revoked meanwhile
            part.finish(offset)

    def drop(self, tp: K) -> None:
        """Forget a revoked partition; its late finishes are ignored."""
        self._parts.pop(tp, None)
        self._committed.pop(tp, None)

    def to_commit(self) -> dict[K, int]:
        """Positions that moved since the last `mark_committed`."""
        out: dict[K, int] = {}
        for tp, part in self._parts.items():
            position = part.committable()
            if position is not None and position != self._committed.get(tp):
                out[tp] = position
        return out

    def mark_committed(self, positions: dict[K, int]) -> None:
        for tp, position in positions.items():
            if tp in self._parts:
                self._committed[tp] = position

    @property
    def in_flight(self) -> int:
        return sum(part.in_flight for part in self._parts.values())
