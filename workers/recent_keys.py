"""Keys seen recently, bounded by age and by count: what a dedup set needs in a process
that runs for months. Pure; time is passed in (monotonic seconds).

Why both bounds: a count alone lets a set grow until the cap, which at a low steady rate
takes hours (100,000 request ids at 8 per second: 3.5 hours and ~25 MB), and a memory
soak cannot tell that from a leak (docs/reliability.md, "Memory soak"); an age alone is
unbounded under a burst. The age is what the dedup is for (how late a copy can come),
the count only a backstop.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class RecentKeys(Generic[K]):
    """Insertion-ordered keys; `add` forgets keys older than `max_age_s` and the oldest
    beyond `max_keys`. A key added again moves to the back with its new time."""

    def __init__(self, max_age_s: float, max_keys: int) -> None:
        if max_age_s <= 0 or max_keys < 1:
            raise ValueError("max_age_s must be positive and max_keys at least 1")
        self.max_age_s = max_age_s
        self.max_keys = max_keys
        self._added_s: OrderedDict[K, float] = OrderedDict()

    def __contains__(self, key: K) -> bool:
        return key in self._added_s

    def __len__(self) -> int:
        return len(self._added_s)

    def add(self, key: K, now_s: float) -> None:
        self._added_s.pop(key, None)
        self._added_s[key] = now_s
        self.expire(now_s)

    def discard(self, key: K) -> None:
        self._added_s.pop(key, None)

    def expire(self, now_s: float) -> None:
        """Forget what is older than `max_age_s` at `now_s`, then the oldest over the cap."""
        entries = self._added_s
        while entries:
            oldest_key, added_s = next(iter(entries.items()))
            if now_s - added_s <= self.max_age_s and len(entries) <= self.max_keys:
                return
            del entries[oldest_key]
