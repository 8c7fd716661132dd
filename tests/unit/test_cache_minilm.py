"""workers/cache/minilm.py + wordpiece.py: the numpy all-MiniLM-L6-v2 against reference outputs.

The reference: cosine similarities that sentence-transformers (PyTorch) prints for this
model in its documentation (sbert.net, "Computing Embeddings" and "Semantic Textual
Similarity"), to 4 decimals. A forward pass that is wrong anywhere (tokenizer, attention,
GELU, layer norm, pooling) misses them by far more than the 5e-4 allowed here.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pytest

from workers.cache.minilm import DIMENSIONS, MAX_TOKENS, MiniLM
from workers.cache.wordpiece import WordPiece, normalize, pre_tokenize

REFERENCE: Final = [
    ("The weather is lovely today.", "It's so sunny outside!", 0.6660),
    ("The weather is lovely today.", "He drove to the stadium.", 0.1046),
    ("It's so sunny outside!", "He drove to the stadium.", 0.1411),
    ("The new movie is awesome", "The dog plays in the garden", 0.0543),
    ("The new movie is awesome", "The new movie is so great", 0.8939),
    ("The new movie is awesome", "A woman watches TV", -0.0502),
    ("The cat sits outside", "The dog plays in the garden", 0.2838),
    ("The cat sits outside", "The new movie is so great", -0.0029),
    ("The cat sits outside", "A woman watches TV", 0.1310),
    ("A man is playing guitar", "The dog plays in the garden", 0.2277),
    ("A man is playing guitar", "The new movie is so great", -0.0136),
    ("A man is playing guitar", "A woman watches TV", -0.0327),
]


@pytest.fixture(scope="module")
def model() -> MiniLM:
    return MiniLM.load()


def cos(model: MiniLM, a: str, b: str) -> float:
    return float(model.embed(a)[0] @ model.embed(b)[0])


@pytest.mark.parametrize(("a", "b", "expected"), REFERENCE)
def test_matches_the_reference_implementation(
    model: MiniLM, a: str, b: str, expected: float
) -> None:
    assert cos(model, a, b) == pytest.approx(expected, abs=5e-4)


def test_embeddings_are_unit_length_float32_and_deterministic(model: MiniLM) -> None:
    vector, truncated = model.embed("How do I rotate an API key?")
    assert vector.shape == (DIMENSIONS,)
    assert vector.dtype == np.float32
    assert float(np.linalg.norm(vector)) == pytest.approx(1.0, abs=1e-5)
    assert not truncated
    assert np.array_equal(vector, model.embed("How do I rotate an API key?")[0])


def test_paraphrases_are_close_and_unrelated_prompts_are_not(model: MiniLM) -> None:
    assert cos(model, "How do I reset my password?", "How can I change my password?") > 0.8
    assert cos(model, "How do I reset my password?", "Write a haiku about autumn leaves.") < 0.3


def test_long_text_is_truncated_and_says_so(model: MiniLM) -> None:
    long = "word " * (MAX_TOKENS + 10)
    _, truncated = model.embed(long)
    assert truncated
    assert len(model.tokenizer.encode(long, MAX_TOKENS).ids) == MAX_TOKENS


def test_wordpiece_basics(model: MiniLM) -> None:
    assert normalize("Café\tDÉJÀ\u200b") == "cafe deja"
    assert pre_tokenize("don't stop!") == ["don", "'", "t", "stop", "!"]
    tok: WordPiece = model.tokenizer
    ids = tok.encode("unaffable", 16).ids
    assert ids[0] == 101  # [CLS]
    assert ids[-1] == 102  # [SEP]
    assert len(ids) > 3  # split into word pieces
    assert tok.encode("x" * 101, 16).ids[1] == 100  # a 101-character word is [UNK]
