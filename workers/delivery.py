"""Gap-free delivery, checked per partition: which events of a batch a processor may handle.

Pure (offsets in, decisions out); the faust wiring (`workers/faust_app.py`,
`DeliveryGate` in `batch_agent`) runs every batch through a `DeliveryCursor` before
the stage's handler.

Why: the processors' effects are exactly-once only if each partition's records are
handled in offset order WITHOUT GAPS. The budget ledger skips a record whose offset is
at or below its chunk's last applied offset (docs/decisions/0005), so a record that
faust fails to deliver while later ones are handled is skipped for good, even when it is
delivered again after a restart; and faust 0.15.3 commits past a missing offset when it
is the only one missing (`Consumer._new_offset` tolerates a gap of one). Measured:
faust dropped records it had already fetched right after table recovery
(docs/decisions/0016), which cost the budget totals one call in a SIGKILL test.

The cursor holds, per (topic, partition), the next offset this process must handle,
starting at the group's committed offset when a consumer generation begins. For each
batch it answers:

* **take**: the next offsets in order: handle them (a duplicate inside the batch is
  taken once);
* **skip**: offsets already handled in this generation, delivered again: ack them,
  do not handle them again;
* **hold**: offsets beyond a `missing` one: not yet. The wiring reads the records
  from `missing` up to the first held offset (`gap`) from Kafka itself and admits
  them together with the held ones, so the batch is handled in order, complete.

Events of an older consumer generation than the newest seen are not checked (faust
re-delivers from the committed offset after every rebalance; the cursor restarts then).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

Key = tuple[str, int]
"""(topic, partition)."""


@dataclass(frozen=True)
class Admission:
    """What to do with one partition's events of a batch (indices into the offsets given)."""

    take: tuple[int, ...]
    """Handle these, in this order (offset order)."""
    skip: tuple[int, ...] = ()
    """Already handled in this generation: ack, do not handle."""
    hold: tuple[int, ...] = ()
    """Beyond a missing offset: handle only once the missing records are filled in."""
    missing: int | None = None
    """The first offset not delivered (None: no gap)."""
    gap: tuple[int, int] | None = None
    """Offsets [from, to) to read from Kafka before the held ones (None: no gap)."""


@dataclass
class DeliveryCursor:
    """The next offset to handle per (topic, partition), within one consumer generation."""

    generation: int | None = None
    _next: dict[Key, int] = field(default_factory=dict)

    def begin(self, generation: int | None) -> bool:
        """Enter `generation` (a rebalance happened): forget every position. True if it did.

        None (unknown) never resets, and an older generation than the current one is
        ignored: its events are stale (`is_current` says so).
        """
        if generation is None or (self.generation is not None and generation <= self.generation):
            return False
        self.generation = generation
        self._next.clear()
        return True

    def is_current(self, generation: int | None) -> bool:
        """Whether events of `generation` are checked (stale ones are passed through)."""
        return generation is None or self.generation is None or generation >= self.generation

    def started(self, key: Key) -> bool:
        return key in self._next

    def start(self, key: Key, *, committed: int | None, first_offset: int) -> None:
        """Begin `key` at the group's committed offset (None: none yet, so at the first
        delivered offset: the consumer's reset position). A first delivered offset below
        the committed one starts there: records at or after it are handled, never skipped.
        """
        self._next[key] = first_offset if committed is None else min(committed, first_offset)

    def next_offset(self, key: Key) -> int:
        return self._next[key]

    def admit(self, key: Key, offsets: Sequence[int]) -> Admission:
        """Decide the events of `key` in one batch (see the module doc); moves the cursor
        past the taken offsets. `start` must have been called for `key`."""
        take: list[int] = []
        skip: list[int] = []
        hold: list[int] = []
        next_offset = self._next[key]
        for index in sorted(range(len(offsets)), key=offsets.__getitem__):
            offset = offsets[index]
            if hold or offset > next_offset:
                hold.append(index)
            elif offset < next_offset:
                skip.append(index)
            else:
                take.append(index)
                next_offset += 1
        self._next[key] = next_offset
        if not hold:
            return Admission(tuple(take), tuple(skip))
        return Admission(
            tuple(take),
            tuple(skip),
            tuple(hold),
            missing=next_offset,
            gap=(next_offset, offsets[hold[0]]),
        )


def is_complete(offsets: Sequence[int], gap: tuple[int, int]) -> bool:
    """Whether records read to fill `gap` are exactly its offsets, in order."""
    return list(offsets) == list(range(*gap))
