"""workers/cache/semantic.py: nearest vector per scope, threshold, removal, partitioning."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from workers.cache.semantic import ScopeIndex, SemanticIndex, spherical_kmeans

DIMS = 32


def unit(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(
        np.float32
    )
    return out


def test_match_at_or_above_the_threshold_only() -> None:
    rng = np.random.default_rng(0)
    index = SemanticIndex(DIMS)
    stored = unit(rng.standard_normal(DIMS))
    index.add("s", "s/1", stored)
    near = unit(stored + 0.05 * rng.standard_normal(DIMS))
    score = float(near @ stored)
    match = index.search("s", near, score - 1e-4)
    assert match is not None
    assert match.key == "s/1"
    assert abs(match.score - score) < 1e-5
    assert index.search("s", near, score + 1e-4) is None
    assert index.search("s", unit(rng.standard_normal(DIMS)), 0.8) is None


def test_scopes_never_see_each_other() -> None:
    v = unit(np.ones(DIMS))
    index = SemanticIndex(DIMS)
    index.add("team:a/x", "team:a/1", v)
    assert index.search("team:b/x", v, 0.5) is None
    assert index.search("team:a/x", v, 0.5) is not None


def test_remove_and_replace() -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng.standard_normal((5, DIMS)))
    index = SemanticIndex(DIMS)
    for i, v in enumerate(vectors):
        index.add("s", f"k{i}", v)
    index.remove("s", "k0")  # the last row moves into its place
    assert len(index) == 4
    assert index.search("s", vectors[0], 0.99) is None
    for i in range(1, 5):
        found = index.search("s", vectors[i], 0.99)
        assert found is not None
        assert found.key == f"k{i}"
    index.add("s", "k1", vectors[2])  # replaced: k1 now points at vector 2's direction
    assert len(index) == 4
    for i in (2, 3, 4):
        index.remove("s", f"k{i}")
    found = index.search("s", vectors[2], 0.99)
    assert found is not None
    assert found.key == "k1"
    index.remove("s", "k1")
    assert index.scopes == {}


def test_partitioned_index_finds_what_the_flat_scan_finds() -> None:
    rng = np.random.default_rng(2)
    centres = unit(rng.standard_normal((40, DIMS)))
    labels = rng.integers(0, 40, 2_000)
    data = unit(centres[labels] + 0.15 * rng.standard_normal((2_000, DIMS)))
    flat = ScopeIndex(DIMS, ivf_min_entries=10**9)
    ivf = ScopeIndex(DIMS, ivf_min_entries=500, lists=16, probes=4)
    for i, v in enumerate(data):
        flat.add(str(i), v)
        ivf.add(str(i), v)
    assert flat.centroids is None
    assert ivf.centroids is not None
    assert len(ivf.buckets) == 16
    assert len(ivf) == 2_000
    queries = unit(data[:300] + 0.05 * rng.standard_normal((300, DIMS)))
    agree = 0
    for q in queries:
        a, b = flat.search(q, 0.9), ivf.search(q, 0.9)
        assert a is not None
        agree += b is not None and b.key == a.key
    assert agree >= 0.95 * len(queries)
    for i in range(0, 2_000, 2):  # removal works across lists
        assert ivf.remove(str(i))
    assert len(ivf) == 1_000
    gone = ivf.search(data[0], 0.999)
    assert gone is None or gone.key != "0"


def test_spherical_kmeans_gives_unit_centroids_deterministically() -> None:
    rng = np.random.default_rng(3)
    data = unit(rng.standard_normal((200, DIMS)))
    a = spherical_kmeans(data, 8, iterations=5, seed=1)
    b = spherical_kmeans(data, 8, iterations=5, seed=1)
    assert np.array_equal(a, b)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
