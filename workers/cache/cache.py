"""The response cache of one router: exact store + semantic index + the embedder. No I/O.

`lookup` answers from the exact store first, then (for a request that may match
semantically) from the nearest stored prompt of the same semantic scope at or above the
similarity threshold. `admit` stores an answer, whether this router got it from a
provider or read it from tollway.cache (every router's answers land in every router's
cache that way). The semantic index holds one vector per entry of the exact store and
loses it when the entry leaves (eviction, expiry, replacement), so both stay bounded
by the store's bounds.

Embedding costs CPU (docs/decisions/0017: ~11-17 ms per short prompt here); it is
skipped when the request is not semantic-eligible, the router runs it off its event loop
(`exact`, then `embed` in a thread, then `semantic`), and a lookup's vector is kept to
index the answer later without a second pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from schemas.records import Attempt, Result
from workers.cache.canonical import Decision, guard_refuses
from workers.cache.semantic import SemanticIndex
from workers.cache.store import CachedAnswer, ExactStore

Vector = npt.NDArray[np.float32]
HitKind = Literal["hit", "semantic-hit"]


class Embedder(Protocol):
    """Text -> unit-length vector; `truncated` when the model read only a prefix."""

    @property
    def name(self) -> str: ...

    @property
    def dimensions(self) -> int: ...

    def embed(self, text: str) -> tuple[Vector, bool]: ...


@dataclass(slots=True)
class Lookup:
    """One request's pass through the cache."""

    decision: Decision
    answer: CachedAnswer | None = None
    kind: HitKind | None = None
    score: float | None = None
    vector: Vector | None = None
    """The prompt's embedding (semantic-eligible requests), kept for `admit`."""
    embed_ms: float = 0.0
    served: tuple[Result, list[Attempt]] | None = None
    """A hit as the router's records (workers/cache/hook.py), the stream already sent."""


@dataclass(slots=True)
class Counters:
    lookups: int = 0
    hits: int = 0
    semantic_hits: int = 0
    misses: int = 0
    stored: int = 0
    embedded: int = 0
    truncated: int = 0
    guarded: int = 0
    """Semantic matches refused by the word-order guard."""


class ResponseCache:
    def __init__(
        self,
        store: ExactStore,
        *,
        embedder: Embedder | None,
        threshold: float,
        index: SemanticIndex | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.threshold = threshold
        dims = embedder.dimensions if embedder is not None else 0
        self.index = index if index is not None else SemanticIndex(dims)
        self.counters = Counters()

    def lookup(self, decision: Decision, now_ms: int) -> Lookup:
        """Exact, then semantic, on the caller's thread (`exact` + `embed` + `semantic`)."""
        found = self.exact(decision, now_ms)
        if found.answer is None and self.needs_vector(found):
            assert decision.semantic_text is not None
            self.semantic(found, self.embed(decision.semantic_text), now_ms)
        return found

    def exact(self, decision: Decision, now_ms: int) -> Lookup:
        """The exact entry, if the request may read one; counts a miss only when no
        semantic lookup follows."""
        found = Lookup(decision)
        if decision.read:
            self.counters.lookups += 1
            answer = self.store.get(decision.key, now_ms)
            if answer is not None:
                self.counters.hits += 1
                found.answer, found.kind = answer, "hit"
                return found
            if not self.needs_vector(found):
                self.counters.misses += 1
        return found

    def needs_vector(self, found: Lookup) -> bool:
        """Whether the request is semantic-eligible here (its vector is wanted, to look up
        or to index its answer)."""
        decision = found.decision
        return (
            self.embedder is not None
            and decision.write
            and decision.semantic_scope is not None
            and decision.semantic_text is not None
        )

    def embed(self, text: str) -> tuple[Vector | None, float]:
        """(unit vector or None when the text was truncated, ms). Pure CPU and thread-safe:
        the router runs it off its event loop."""
        assert self.embedder is not None
        t0 = time.perf_counter()
        vector, truncated = self.embedder.embed(text)
        return (None if truncated else vector), (time.perf_counter() - t0) * 1000.0

    def semantic(self, found: Lookup, embedded: tuple[Vector | None, float], now_ms: int) -> Lookup:
        """The nearest stored prompt of the request's semantic scope, at or above the
        threshold, unless the word-order guard refuses it."""
        decision = found.decision
        found.vector, found.embed_ms = embedded
        self.counters.embedded += 1
        if found.vector is None:  # only a prefix was read: two prompts may differ after it
            self.counters.truncated += 1
        if decision.read and found.vector is not None and decision.semantic_scope is not None:
            match = self.index.search(decision.semantic_scope, found.vector, self.threshold)
            answer = self.store.get(match.key, now_ms) if match is not None else None
            if answer is not None and guard_refuses(decision.semantic_guard, answer.semantic_guard):
                self.counters.guarded += 1
                answer = None
            if match is not None and answer is not None:
                self.counters.semantic_hits += 1
                found.answer, found.kind, found.score = answer, "semantic-hit", match.score
                return found
        if decision.read:
            self.counters.misses += 1
        return found

    def admit(self, answer: CachedAnswer, now_ms: int) -> bool:
        """Store `answer` (and index its embedding); False if it was not kept."""
        vector = self._vector_of(answer)
        kept = answer
        if answer.embedding is not None:  # the vector lives in the index from here on
            held = len(answer.embedding) if vector is not None else 0
            kept = replace(answer, embedding=None, index_bytes=held)
        gone = self.store.put(kept, now_ms)
        for old in gone:
            if old is not kept and old.semantic_scope is not None:
                self.index.remove(old.semantic_scope, old.key)
        if self.store.peek(kept.key) is not kept:
            return False
        if vector is not None and kept.semantic_scope is not None:
            self.index.add(kept.semantic_scope, kept.key, vector)
        self.counters.stored += 1
        return True

    def purge(self, now_ms: int) -> int:
        gone = self.store.purge(now_ms)
        for old in gone:
            if old.semantic_scope is not None:
                self.index.remove(old.semantic_scope, old.key)
        return len(gone)

    def _vector_of(self, answer: CachedAnswer) -> Vector | None:
        if (
            answer.embedding is None
            or answer.semantic_scope is None
            or self.embedder is None
            or answer.embedder != self.embedder.name
            or len(answer.embedding) != 4 * self.embedder.dimensions
        ):
            return None
        return np.frombuffer(answer.embedding, dtype="<f4").astype(np.float32)
