"""Which offset a partition may commit while records finish out of order.

The router runs many provider calls at once, so records of one partition
finish in any order. Kafka commits a single position per partition, meaning
"everything before this is done". This tracker keeps, per partition, the
offsets started and finished, and answers the highest position that is safe to
commit: the lowest offset still in flight (or one past the last finished one).

The offsets finished above that position (behind a slow call) travel in the commit's
metadata string (`encode_finished` / `decode_finished`): a router that takes the
partition over skips them instead of calling the provider again for requests whose
results are already published. Kafka keeps up to `offset.metadata.max.bytes` (4096 by
default) per partition; what does not fit in `METADATA_MAX_CHARS` is left out, which
only means those records run again (at-least-once, as without the metadata).
Pure: no Kafka types, just (topic, partition) keys and integers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from typing import Final, Generic, TypeVar

K = TypeVar("K", bound=Hashable)

METADATA_PREFIX: Final = "tw1:"
"""Version tag of the commit metadata format: comma-separated ranges `a-b` or `a`
of offsets finished, as distances from the committed position."""
METADATA_MAX_CHARS: Final = 3_000
"""Below the broker's default `offset.metadata.max.bytes` (4096), with room to spare."""
REMEMBERED_MAX: Final = 100_000
"""Most offsets `OffsetTracker.finished_uncommitted` returns for one partition (the
highest): memory stays bounded after a long stretch of failed commits."""


def encode_finished(position: int, finished: Iterable[int]) -> str:
    """Commit metadata for the offsets in `finished` (all >= `position`), lowest first,
    as many whole ranges as fit in `METADATA_MAX_CHARS`; "" when there are none."""
    parts: list[str] = []
    size = len(METADATA_PREFIX)
    ordered = sorted(o - position for o in finished if o >= position)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        part = str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}"
        if size + len(part) + 1 > METADATA_MAX_CHARS:
            break
        parts.append(part)
        size += len(part) + 1
        i = j + 1
    return METADATA_PREFIX + ",".join(parts) if parts else ""


def decode_finished(position: int, metadata: str | None) -> set[int]:
    """The offsets `encode_finished` recorded; empty for metadata of another form."""
    if not metadata or not metadata.startswith(METADATA_PREFIX):
        return set()
    finished: set[int] = set()
    try:
        for part in metadata.removeprefix(METADATA_PREFIX).split(","):
            low, _, high = part.partition("-")
            first, last = int(low), int(high or low)
            if first < 0 or last < first or last - first > 1_000_000:
                return set()  # not ours: run everything rather than skip on a guess
            finished.update(range(position + first, position + last + 1))
    except ValueError:
        return set()
    return finished


class PartitionOffsets:
    """Started offsets of one partition, in the order they were fetched (ascending)."""

    __slots__ = ("_done", "_first", "_next_commit", "_pending")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self._next_commit: int | None = None
        self._first: int | None = None

    def start(self, offset: int) -> None:
        if self._pending and offset <= self._pending[-1]:
            raise ValueError(f"offset {offset} started out of order after {self._pending[-1]}")
        if self._first is None:
            self._first = offset
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
        if self._done and self._pending:  # finished records wait behind the head
            return self._pending[0]
        return self._next_commit

    def finished_above(self) -> set[int]:
        """Offsets finished behind a record still in flight (above `committable()`)."""
        return set(self._done)

    def finished_from(self, position: int | None) -> set[int]:
        """Every offset finished here at or above `position` (None: since the first one
        started), the highest `REMEMBERED_MAX` at most."""
        low = self._first if position is None else position
        finished = set(self._done)
        if low is not None and self._next_commit is not None:
            finished.update(range(max(low, self._next_commit - REMEMBERED_MAX), self._next_commit))
        if len(finished) > REMEMBERED_MAX:
            finished = set(sorted(finished)[-REMEMBERED_MAX:])
        return {o for o in finished if position is None or o >= position}

    @property
    def in_flight(self) -> int:
        return len(self._pending) - len(self._done)


class OffsetTracker(Generic[K]):
    """`PartitionOffsets` for every assigned partition, with change detection for commits."""

    def __init__(self) -> None:
        self._parts: dict[K, PartitionOffsets] = {}
        self._committed: dict[K, tuple[int, str]] = {}

    def start(self, tp: K, offset: int) -> None:
        self._parts.setdefault(tp, PartitionOffsets()).start(offset)

    def finish(self, tp: K, offset: int) -> None:
        part = self._parts.get(tp)
        if part is not None:  # None: the partition was revoked meanwhile
            part.finish(offset)

    def finished_uncommitted(self, tp: K) -> set[int]:
        """Offsets of `tp` finished here that no successful commit covers: neither below
        its committed position nor in its committed metadata. A router keeps them over a
        rebalance and skips them if the partition comes back to it (its commit failed,
        e.g. around a broker restart, but the results are published)."""
        part = self._parts.get(tp)
        if part is None:
            return set()
        committed = self._committed.get(tp)
        if committed is None:
            return part.finished_from(None)
        position, metadata = committed
        return part.finished_from(position) - decode_finished(position, metadata)

    def drop(self, tp: K) -> None:
        """Forget a revoked partition; its late finishes are ignored."""
        self._parts.pop(tp, None)
        self._committed.pop(tp, None)

    def to_commit(self) -> dict[K, tuple[int, str]]:
        """(position, metadata) of the partitions whose either moved since the last
        `mark_committed`; the metadata lists the offsets finished above the position."""
        out: dict[K, tuple[int, str]] = {}
        for tp, part in self._parts.items():
            position = part.committable()
            if position is None:
                continue
            entry = (position, encode_finished(position, part.finished_above()))
            if entry != self._committed.get(tp):
                out[tp] = entry
        return out

    def mark_committed(self, positions: dict[K, tuple[int, str]]) -> None:
        for tp, position in positions.items():
            if tp in self._parts:
                self._committed[tp] = position

    @property
    def in_flight(self) -> int:
        return sum(part.in_flight for part in self._parts.values())
