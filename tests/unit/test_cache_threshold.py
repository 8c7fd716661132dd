"""The semantic threshold's evaluation (bench/cache_bench.py) as a regression guard.

The labelled set bench/data/cache_pairs.jsonl holds paraphrase and non-paraphrase pairs
of gateway prompts (half of the negatives adversarial: same words, another request).
docs/decisions/0017 chose the default threshold from it; a change to the model, the
tokenizer, the guards or the threshold that costs precision or recall fails here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # not a package

from cache_bench import load_pairs, precision_recall, score_pairs

from workers.cache.canonical import CachePolicy
from workers.cache.minilm import MiniLM
from workers.cache.settings import DEFAULT_THRESHOLD

VECTORS: dict[str, Any] = {}  # embeddings by text, shared by the scorings below


@pytest.fixture(scope="module")
def model() -> MiniLM:
    return MiniLM.load()


@pytest.fixture(scope="module")
def scored(model: MiniLM) -> list[tuple[float | None, bool, str]]:
    return score_pairs(model, load_pairs(), CachePolicy(), vectors=VECTORS)


def test_the_labelled_set_is_large_and_balanced() -> None:
    rows = load_pairs()
    assert len(rows) >= 150
    positives = sum(r["paraphrase"] for r in rows)
    assert 0.3 * len(rows) < positives < 0.7 * len(rows)


def test_precision_and_recall_at_the_default_threshold(
    scored: list[tuple[float | None, bool, str]],
) -> None:
    at_default = precision_recall(scored, DEFAULT_THRESHOLD)
    assert at_default["precision"] >= 0.95
    assert at_default["recall"] >= 0.80


def test_the_guards_refuse_what_the_embedding_cannot_tell_apart(
    model: MiniLM, scored: list[tuple[float | None, bool, str]]
) -> None:
    unguarded = score_pairs(
        model,
        load_pairs(),
        CachePolicy(semantic_numbers_must_match=False),
        guard=False,
        vectors=VECTORS,
    )
    assert (
        precision_recall(scored, DEFAULT_THRESHOLD)["fp"]
        < precision_recall(unguarded, DEFAULT_THRESHOLD)["fp"]
    )
    assert all(s is None or -1.0 <= s <= 1.0001 for s, _, _ in scored)
