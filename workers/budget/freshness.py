"""How fresh a partition's budget state is: a processing-time watermark. Pure.

`fresh_as_of(p)` is the latest wall-clock time T such that every record that
was in partition `p` at T has been processed. The processor samples each
owned partition's end offset once per tick (`observe_end`) and reports the
offsets it has processed (`processed`); a sample is resolved once processing
reaches it. An idle, caught-up partition is fresh as of the last tick; a
lagging one ages, and enforcement fails closed on hard budgets once that age
passes its bound (ARCHITECTURE invariant 3).
"""

from __future__ import annotations

from collections import deque
from typing import Final

MAX_PENDING_SAMPLES: Final = 3_600
"""Samples kept per lagging partition; dropping the OLDEST only delays freshness (safe)."""


class Freshness:
    """Per-partition processing watermark (see the module docstring)."""

    def __init__(self) -> None:
        self._next: dict[int, int] = {}
        self._pending: dict[int, deque[tuple[int, int]]] = {}
        self._fresh: dict[int, int] = {}

    def start_at(self, partition: int, next_offset: int) -> None:
        """Where processing of a newly assigned partition starts (its committed offset)."""
        self._next.setdefault(partition, next_offset)

    def knows(self, partition: int) -> bool:
        return partition in self._next

    def processed(self, partition: int, offset: int) -> None:
        """Every record of `partition` up to and including `offset` has been processed."""
        next_offset = max(self._next.get(partition, 0), offset + 1)
        self._next[partition] = next_offset
        pending = self._pending.get(partition)
        while pending and pending[0][0] <= next_offset:
            _, observed_ms = pending.popleft()
            self._fresh[partition] = max(self._fresh.get(partition, 0), observed_ms)

    def observe_end(self, partition: int, end_offset: int, now_ms: int) -> None:
        """The partition's end offset (next offset to be written) as seen at `now_ms`."""
        next_offset = self._next.get(partition)
        if next_offset is not None and next_offset >= end_offset:
            self._fresh[partition] = max(self._fresh.get(partition, 0), now_ms)
            self._pending.pop(partition, None)
            return
        pending = self._pending.setdefault(partition, deque(maxlen=MAX_PENDING_SAMPLES))
        if pending and pending[-1][0] >= end_offset:
            pending[-1] = (pending[-1][0], now_ms)  # nothing new since: a later sample
        else:
            pending.append((end_offset, now_ms))

    def fresh_as_of(self, partition: int) -> int | None:
        return self._fresh.get(partition)

    def forget(self, partition: int) -> None:
        """The partition was revoked: its next owner reports on it."""
        self._next.pop(partition, None)
        self._pending.pop(partition, None)
        self._fresh.pop(partition, None)
