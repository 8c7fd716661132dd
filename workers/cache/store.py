"""The exact-match store: answers by key, with a TTL per entry and LRU bounds. Pure.

Bounded twice: at most `max_entries` entries and at most `max_bytes` bytes (each entry
counted as its body, its embedding and a fixed overhead for the key and bookkeeping).
When a put goes over either bound, least recently USED entries leave first (a hit
refreshes an entry). An entry is never served after its `expires_at_ms`: `get` checks
it, and `purge` drops expired entries in expiry order (a heap), so memory held by
expired entries is bounded by how often the owner calls `purge`.

The clock is an argument (`now_ms`) everywhere: tests drive it by hand.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from schemas.records import Usage

ENTRY_OVERHEAD_BYTES: Final = 512
"""Bookkeeping counted per entry besides body and embedding (keys, dicts, heap item)."""


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """One stored answer. `key` is `<scope>/<hash>` (canonical.py)."""

    key: str
    scope: str
    model: str
    """The routed (client-facing) model name the key was computed with."""
    body: bytes
    """The `chat.completion` JSON as the provider answered it (a stream, assembled)."""
    provider: str
    upstream_model: str
    """The model the provider ran: what a hit's saving is priced as."""
    served_model: str
    usage: Usage
    created_at_ms: int
    expires_at_ms: int
    semantic_scope: str | None = None
    embedding: bytes | None = None
    """Unit-length float32 little-endian vector of the prompt text (semantic entries)."""
    embedder: str | None = None
    """Which model made `embedding`: vectors of different models are never compared."""
    semantic_guard: str | None = None
    """`word_order_guard` of the embedded prompt (canonical.py)."""
    index_bytes: int = 0
    """Memory this entry holds outside itself (its vector in the semantic index)."""

    @property
    def size_bytes(self) -> int:
        return len(self.body) + len(self.embedding or b"") + self.index_bytes + ENTRY_OVERHEAD_BYTES

    def live(self, now_ms: int) -> bool:
        return now_ms < self.expires_at_ms


class ExactStore:
    """Key -> `CachedAnswer`, LRU-ordered, bounded by entries and bytes."""

    def __init__(self, *, max_entries: int, max_bytes: int) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("the cache needs room for at least one entry")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CachedAnswer] = OrderedDict()
        self._expiry: list[tuple[int, str]] = []
        self.bytes = 0
        self.evictions = 0
        self.expirations = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def peek(self, key: str) -> CachedAnswer | None:
        """The entry under `key`, expired or not, without touching its recency."""
        return self._entries.get(key)

    def get(self, key: str, now_ms: int) -> CachedAnswer | None:
        """The live entry under `key` (now most recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now_ms >= entry.expires_at_ms:
            self._drop(key)
            self.expirations += 1
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, entry: CachedAnswer, now_ms: int) -> list[CachedAnswer]:
        """Store `entry` (replacing one under its key); returns what left to make room,
        the replaced entry included. An expired entry, or one larger than the whole
        store, is not stored (returned as if it left at once)."""
        if not entry.live(now_ms) or entry.size_bytes > self.max_bytes:
            return [entry]
        gone: list[CachedAnswer] = []
        old = self._entries.get(entry.key)
        if old is not None:
            self._drop(entry.key)
            gone.append(old)
        self._entries[entry.key] = entry
        self.bytes += entry.size_bytes
        heapq.heappush(self._expiry, (entry.expires_at_ms, entry.key))
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, oldest = self._entries.popitem(last=False)
            self.bytes -= oldest.size_bytes
            self.evictions += 1
            gone.append(oldest)
        return gone

    def remove(self, key: str) -> CachedAnswer | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._drop(key)
        return entry

    def purge(self, now_ms: int) -> list[CachedAnswer]:
        """Drop every entry expired at `now_ms`; returns them."""
        gone: list[CachedAnswer] = []
        while self._expiry and self._expiry[0][0] <= now_ms:
            expires_at_ms, key = heapq.heappop(self._expiry)
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at_ms == expires_at_ms:
                self._drop(key)
                self.expirations += 1
                gone.append(entry)
        if len(self._expiry) > 2 * len(self._entries) + 1024:
            # replaced and evicted entries leave stale heap items: rebuild now and then
            self._expiry = [(e.expires_at_ms, k) for k, e in self._entries.items()]
            heapq.heapify(self._expiry)
        return gone

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self.bytes -= entry.size_bytes
