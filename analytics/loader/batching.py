"""Collect consumed records into batches that flush on size or age, in bounded memory. Pure.

The loader adds every record it consumed, in partition order: with its row, or
without one (a record it skips still has to be committed). A batch is due when it
holds `max_rows` rows or its first record is `max_age_ms` old. While a batch is being
written the loader keeps adding to the next one, up to `max_buffered_rows`; `room()`
then reaches 0 and the loader pauses fetching, so memory stays bounded however long
ClickHouse is away.

A `Batch` knows, per partition, the offset range it covers: the positions to commit
after it was written, and a deterministic insert_deduplication_token per topic, so a
retried insert of the same batch is dropped by ClickHouse.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from analytics.loader.rows import Row

TopicPartition = tuple[str, int]


@dataclass(slots=True)
class _Partition:
    first: int
    last: int
    rows: list[Row] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Batch:
    """Rows and offset ranges of the partitions it covers, each range contiguous."""

    rows: dict[TopicPartition, list[Row]]
    ranges: dict[TopicPartition, tuple[int, int]]

    @property
    def row_count(self) -> int:
        return sum(len(rows) for rows in self.rows.values())

    def topics(self) -> list[str]:
        return sorted({topic for topic, _ in self.ranges})

    def rows_of(self, topic: str) -> list[Row]:
        """The topic's rows, partition by partition, in offset order."""
        return [row for tp in sorted(self.rows) if tp[0] == topic for row in self.rows[tp]]

    def token(self, topic: str) -> str:
        """`<topic>/<partition>:<first>-<last>,...`: the same records give the same token."""
        spans = ",".join(
            f"{p}:{first}-{last}"
            for (t, p), (first, last) in sorted(self.ranges.items())
            if t == topic
        )
        return f"{topic}/{spans}"

    def commit_positions(self) -> dict[TopicPartition, int]:
        """Kafka positions to commit once every table of this batch was written."""
        return {tp: last + 1 for tp, (_, last) in self.ranges.items()}


class Batcher:
    def __init__(self, max_rows: int, max_age_ms: int, max_buffered_rows: int) -> None:
        if not 1 <= max_rows <= max_buffered_rows:
            raise ValueError("need 1 <= max_rows <= max_buffered_rows")
        self.max_rows = max_rows
        self.max_age_ms = max_age_ms
        self.max_buffered_rows = max_buffered_rows
        self._parts: dict[TopicPartition, _Partition] = {}
        self._rows = 0
        self._opened_ms: int | None = None

    @property
    def buffered_rows(self) -> int:
        return self._rows

    def room(self) -> int:
        """How many more rows may be buffered before fetching must pause."""
        return max(0, self.max_buffered_rows - self._rows)

    def add(self, tp: TopicPartition, offset: int, row: Row | None, now_ms: int) -> None:
        """Record a consumed offset, with its row or None when the record yields no row."""
        part = self._parts.get(tp)
        if part is None:
            self._parts[tp] = part = _Partition(first=offset, last=offset)
        elif offset <= part.last:
            raise ValueError(f"{tp}: offset {offset} after {part.last} (records out of order)")
        part.last = offset
        if row is not None:
            part.rows.append(row)
            self._rows += 1
        if self._opened_ms is None:
            self._opened_ms = now_ms

    def due(self, now_ms: int) -> bool:
        if self._opened_ms is None:
            return False
        return self._rows >= self.max_rows or now_ms - self._opened_ms >= self.max_age_ms

    def take(self) -> Batch | None:
        """Everything buffered, as one batch (None if nothing was added)."""
        if not self._parts:
            return None
        batch = Batch(
            rows={tp: p.rows for tp, p in self._parts.items()},
            ranges={tp: (p.first, p.last) for tp, p in self._parts.items()},
        )
        self._parts = {}
        self._rows = 0
        self._opened_ms = None
        return batch

    def drop(self, partitions: Iterable[TopicPartition]) -> int:
        """Forget revoked partitions' records (their new owner reads them again); rows dropped."""
        dropped = 0
        for tp in partitions:
            part = self._parts.pop(tp, None)
            if part is not None:
                dropped += len(part.rows)
        self._rows -= dropped
        if not self._parts:
            self._opened_ms = None
        return dropped
