"""Two lanes into one router: batch work may fill only a share of its call slots. Pure.

    tollway.requests.interactive   any free slot, up to `max_in_flight`
    tollway.requests.batch         free slots too, but at most `batch_max_in_flight`
                                   = floor(batch_share x max_in_flight), at least 1

So at least `max_in_flight - batch_max_in_flight` slots (half, by default) are always
left to sync and async requests: a backlog of 50,000 batch lines never makes a chat
request wait for a free slot behind it. The router pauses its batch partitions while
the batch lane is full (fetching stops there, the poll loop goes on) and resumes them
as batch calls finish; batch records fetched beyond the room are not started: their
partition is sought back to the first of them, so they are fetched again later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Lanes:
    """The call slots of one router and the batch lane's share of them."""

    max_in_flight: int
    batch_max_in_flight: int

    @classmethod
    def of(cls, max_in_flight: int, batch_share: float) -> Lanes:
        """`batch_share` in (0, 1]: 1 gives batch records no limit of their own."""
        if not 0 < batch_share <= 1:
            raise ValueError(f"batch_share must be in (0, 1], not {batch_share}")
        return cls(max_in_flight, max(1, int(max_in_flight * batch_share)))

    def batch_room(self, in_flight: int, batch_in_flight: int) -> int:
        """Batch records that may start now."""
        free = self.max_in_flight - in_flight
        return max(0, min(free, self.batch_max_in_flight - batch_in_flight))

    def paused(self, in_flight: int, batch_in_flight: int) -> tuple[bool, bool]:
        """Whether to pause (the interactive lane, the batch lane) right now."""
        full = in_flight >= self.max_in_flight
        return full, full or batch_in_flight >= self.batch_max_in_flight


def take(records: Sequence[T], room: int) -> tuple[Sequence[T], T | None]:
    """The first `room` records (to start now) and the first one left out, if any."""
    if len(records) <= room:
        return records, None
    return records[:room], records[room]
