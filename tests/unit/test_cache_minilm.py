"""workers/cache/minilm*.py + wordpiece.py: all-MiniLM-L6-v2 against reference outputs.

Two references. (1) The cosine similarities that sentence-transformers (PyTorch) prints
for this model in its documentation (sbert.net, "Computing Embeddings" and "Semantic
Textual Similarity"), to 4 decimals: the float32 numpy pass (minilm_reference.py) must
hit them within 5e-4 (measured 4.5e-5); a forward pass wrong anywhere (tokenizer,
attention, GELU, layer norm, pooling) misses them by far more. The served 8-bit model
(minilm.py, onnxruntime) moves them by rounding only: within 1e-2 (measured 5.1e-3).
(2) That float32 pass itself: the served embedding of every prompt sampled from the
cache's evaluation set must be within cosine 0.995 of it (docs/decisions/0020: the
acceptance bar is 0.99; measured min 0.9990 over all 367 texts of the set).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

import numpy as np
import pytest

from workers.cache.minilm import DIMENSIONS, MAX_TOKENS, MiniLM
from workers.cache.minilm_graph import dequantize_blocks, quantize_blocks
from workers.cache.minilm_reference import ReferenceMiniLM
from workers.cache.wordpiece import WordPiece, normalize, pre_tokenize

PAIRS: Final = Path(__file__).resolve().parents[2] / "bench" / "data" / "cache_pairs.jsonl"

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


@pytest.fixture(scope="module")
def reference() -> ReferenceMiniLM:
    return ReferenceMiniLM.load()


def cos(model: MiniLM | ReferenceMiniLM, a: str, b: str) -> float:
    return float(model.embed(a)[0] @ model.embed(b)[0])


@pytest.mark.parametrize(("a", "b", "expected"), REFERENCE)
def test_float32_reference_matches_sentence_transformers(
    reference: ReferenceMiniLM, a: str, b: str, expected: float
) -> None:
    assert cos(reference, a, b) == pytest.approx(expected, abs=5e-4)


@pytest.mark.parametrize(("a", "b", "expected"), REFERENCE)
def test_served_model_matches_sentence_transformers_within_rounding(
    model: MiniLM, a: str, b: str, expected: float
) -> None:
    assert cos(model, a, b) == pytest.approx(expected, abs=1e-2)


def test_served_embeddings_stay_within_cosine_0995_of_float32(
    model: MiniLM, reference: ReferenceMiniLM
) -> None:
    rows = [json.loads(line) for line in PAIRS.read_text("utf-8").splitlines() if line.strip()]
    texts = sorted({r[k] for r in rows for k in ("a", "b", "system_a") if r.get(k)})
    sample = texts[::5]  # every 5th: ~70 texts, short and long, with and without digits
    assert len(sample) >= 60
    cosines = [float(model.embed(t)[0] @ reference.embed(t)[0]) for t in sample]
    assert min(cosines) >= 0.995, sample[int(np.argmin(cosines))]
    assert float(np.mean(cosines)) >= 0.999


def test_block_quantization_round_trips_within_half_a_step() -> None:
    rng = np.random.default_rng(20)
    weight = rng.standard_normal((96, 5)).astype(np.float32)
    weight[32:64, 2] = 0  # an all-zero block
    codes, scales = quantize_blocks(weight, block_rows=32)
    assert codes.shape == (5, 3, 32)
    assert codes.dtype == np.uint8
    assert scales.shape == (15,)
    decoded = dequantize_blocks(codes, scales)
    assert decoded.shape == weight.shape
    step = np.repeat(scales.reshape(5, 3), 32, axis=1).T  # (96, 5): each weight's block scale
    assert np.all(np.abs(decoded - weight) <= step / 2 + 1e-7)
    assert np.all(decoded[32:64, 2] == 0)
    assert int(codes.min()) >= 1  # symmetric: -127..127, so 128 +/- 127
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_blocks(weight[:40], block_rows=32)


def test_embeddings_are_unit_length_float32_and_deterministic(model: MiniLM) -> None:
    assert model.embed("")[0].shape == (DIMENSIONS,)  # [CLS] [SEP] only
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
