"""The semantic index: nearest stored prompt by cosine similarity, per scope. Pure (numpy).

Vectors are unit length (float32), so cosine similarity is a dot product. Each scope
(team scope, model, parameters, conversation context: canonical.py) has its own index,
so a lookup only ever compares prompts whose every other input is equal, and a team
never sees another team's vectors.

A scope starts flat: one matrix, one matrix-vector product per lookup. Measured here,
a flat scan of 100k x 384 float32 (150 MB, more than the L3 cache) took ~15 ms: the
product is memory-bound. So once a scope holds `ivf_min_entries` vectors it is
partitioned (an inverted file): spherical k-means puts `lists` centroids over the
vectors, each vector lives in the list of its nearest centroid, and a lookup scans the
`probes` lists whose centroids are nearest to the query. Training runs once per scope,
on the vectors it holds at that moment (k-means with a fixed seed: deterministic);
later vectors join their nearest list. The recall of this approximation against the
flat scan, and the lookup p99 at 100k entries, are measured by bench/cache_bench.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]

_KMEANS_ITERATIONS: Final = 8
_MIN_CAPACITY: Final = 16


@dataclass(frozen=True, slots=True)
class Match:
    key: str
    score: float


class _Bucket:
    """A growable matrix of vectors and the keys of its rows."""

    __slots__ = ("keys", "n", "vectors")

    def __init__(self, dims: int) -> None:
        self.vectors: Matrix = np.empty((_MIN_CAPACITY, dims), dtype=np.float32)
        self.keys: list[str] = []
        self.n = 0

    def append(self, key: str, vector: Matrix) -> int:
        if self.n == len(self.vectors):
            grown = np.empty((2 * len(self.vectors), self.vectors.shape[1]), dtype=np.float32)
            grown[: self.n] = self.vectors[: self.n]
            self.vectors = grown
        self.vectors[self.n] = vector
        self.keys.append(key)
        self.n += 1
        return self.n - 1

    def swap_remove(self, row: int) -> str | None:
        """Remove `row` by moving the last row into it; returns the moved row's key."""
        last = self.n - 1
        moved: str | None = None
        if row != last:
            self.vectors[row] = self.vectors[last]
            self.keys[row] = self.keys[last]
            moved = self.keys[row]
        self.keys.pop()
        self.n -= 1
        return moved

    def best(self, query: Matrix) -> tuple[int, float]:
        scores = self.vectors[: self.n] @ query
        row = int(np.argmax(scores))
        return row, float(scores[row])


class ScopeIndex:
    """The vectors of one scope: flat, then partitioned past `ivf_min_entries`."""

    def __init__(
        self, dims: int, *, ivf_min_entries: int = 8_192, lists: int = 256, probes: int = 8
    ) -> None:
        self.dims = dims
        self.ivf_min_entries = ivf_min_entries
        self.lists = lists
        self.probes = probes
        self.centroids: Matrix | None = None
        self.buckets: list[_Bucket] = [_Bucket(dims)]
        self._where: dict[str, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def add(self, key: str, vector: Matrix) -> None:
        """Index `vector` (unit length) under `key`, replacing a previous one."""
        if key in self._where:
            self.remove(key)
        b = 0 if self.centroids is None else int(np.argmax(self.centroids @ vector))
        self._where[key] = (b, self.buckets[b].append(key, vector))
        if self.centroids is None and len(self._where) >= self.ivf_min_entries:
            self._partition()

    def remove(self, key: str) -> bool:
        found = self._where.pop(key, None)
        if found is None:
            return False
        b, row = found
        moved = self.buckets[b].swap_remove(row)
        if moved is not None:
            self._where[moved] = (b, row)
        return True

    def search(self, query: Matrix, threshold: float) -> Match | None:
        """The most similar indexed vector if its cosine similarity is >= `threshold`."""
        if not self._where:
            return None
        if self.centroids is None:
            candidates: list[int] = [0]
        else:
            near = self.centroids @ query
            probes = min(self.probes, len(near))
            candidates = [int(i) for i in np.argpartition(-near, probes - 1)[:probes]]
        best: Match | None = None
        for b in candidates:
            bucket = self.buckets[b]
            if bucket.n == 0:
                continue
            row, score = bucket.best(query)
            if score >= threshold and (best is None or score > best.score):
                best = Match(bucket.keys[row], score)
        return best

    def _partition(self) -> None:
        """Train the centroids on every vector held now and spread the vectors over lists."""
        flat = self.buckets[0]
        data = flat.vectors[: flat.n]
        keys = list(flat.keys)
        k = min(self.lists, len(keys))
        centroids = spherical_kmeans(data, k, iterations=_KMEANS_ITERATIONS, seed=len(keys))
        assignment = np.argmax(data @ centroids.T, axis=1)
        self.centroids = centroids
        self.buckets = [_Bucket(self.dims) for _ in range(k)]
        self._where = {}
        for key, vector, b in zip(keys, data, assignment, strict=True):
            self._where[key] = (int(b), self.buckets[int(b)].append(key, vector))


def spherical_kmeans(data: Matrix, k: int, *, iterations: int, seed: int) -> Matrix:
    """`k` unit-length centroids of unit-length rows (cosine k-means, seeded)."""
    rng = np.random.default_rng(seed)
    centroids: Matrix = data[rng.choice(len(data), size=k, replace=False)].copy()
    for _ in range(iterations):
        assignment = np.argmax(data @ centroids.T, axis=1)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assignment, data)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        empty = norms[:, 0] == 0
        sums[~empty] /= norms[~empty]
        sums[empty] = centroids[empty]  # a centroid that lost every vector stays put
        centroids = sums.astype(np.float32)
    return centroids


class SemanticIndex:
    """Scope -> `ScopeIndex`; a scope disappears with its last vector."""

    def __init__(
        self, dims: int, *, ivf_min_entries: int = 8_192, lists: int = 256, probes: int = 8
    ) -> None:
        self.dims = dims
        self._options = {"ivf_min_entries": ivf_min_entries, "lists": lists, "probes": probes}
        self.scopes: dict[str, ScopeIndex] = {}

    def __len__(self) -> int:
        return sum(len(s) for s in self.scopes.values())

    def add(self, scope: str, key: str, vector: Matrix) -> None:
        index = self.scopes.get(scope)
        if index is None:
            index = self.scopes[scope] = ScopeIndex(self.dims, **self._options)
        index.add(key, vector)

    def remove(self, scope: str, key: str) -> None:
        index = self.scopes.get(scope)
        if index is not None and index.remove(key) and not index:
            del self.scopes[scope]

    def search(self, scope: str, query: Matrix, threshold: float) -> Match | None:
        index = self.scopes.get(scope)
        return None if index is None else index.search(query, threshold)
