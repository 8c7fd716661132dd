"""all-MiniLM-L6-v2 in plain float32 numpy: the reference that the served model is held to.

The model is a 6-layer BERT (hidden 384, 12 heads, FFN 1536, erf GELU, post-layer-norm)
followed by mean pooling over the tokens and L2 normalisation (the sentence-transformers
pipeline in the model's modules.json). This is the forward pass written out as the
equations, over the float32 weights: it reproduces the 12 cosine similarities that
sbert.net prints for the model to 4 decimals (tests/unit/test_cache_minilm.py).

Routers do not run it: `minilm.py` serves the same network through onnxruntime with 8-bit
weights (docs/decisions/0020), about twice as fast. This module is the oracle that
keeps that one honest: the tests and `bench/cache_bench.py --phases fidelity` compare
the two per prompt (cosine >= 0.99 required; measured >= 0.999).

One text per call, no padding: a gateway embeds one prompt per request, and without a
batch there is no attention mask to apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from workers.cache.minilm import (
    DIMENSIONS,
    HEADS,
    LAYER_NORM_EPS,
    LAYERS,
    MAX_TOKENS,
    MODEL_NAME,
    Vector,
    package_model_dir,
    read_safetensors,
)
from workers.cache.wordpiece import WordPiece


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv_w: Vector  # (384, 1152): query, key and value projections side by side
    qkv_b: Vector
    out_w: Vector
    out_b: Vector
    ln1_g: Vector
    ln1_b: Vector
    ff1_w: Vector
    ff1_b: Vector
    ff2_w: Vector
    ff2_b: Vector
    ln2_g: Vector
    ln2_b: Vector


def _layer_norm(x: Vector, gamma: Vector, beta: Vector) -> Vector:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)
    out: Vector = centred / np.sqrt(var + LAYER_NORM_EPS) * gamma + beta
    return out


def _erf(x: Vector) -> Vector:
    """erf to within 1.5e-7 (Abramowitz & Stegun 7.1.26): numpy has no erf of its own."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    out: Vector = sign * (1.0 - poly * np.exp(-a * a))
    return out


def _gelu(x: Vector) -> Vector:
    """BERT's exact GELU: x * Phi(x) with the erf form (not the tanh approximation)."""
    out: Vector = 0.5 * x * (1.0 + _erf(x * np.float32(1.0 / math.sqrt(2.0))))
    return out


class ReferenceMiniLM:
    """The float32 forward pass, loaded once; `embed` is pure (no state changes)."""

    name: Final = MODEL_NAME
    dimensions: Final = DIMENSIONS

    def __init__(self, tensors: dict[str, npt.NDArray[np.generic]], tokenizer: WordPiece) -> None:
        def f32(name: str) -> Vector:
            return np.ascontiguousarray(tensors[name], dtype=np.float32)

        self.tokenizer = tokenizer
        self._word = f32("embeddings.word_embeddings.weight")
        self._position = f32("embeddings.position_embeddings.weight")
        self._type0 = f32("embeddings.token_type_embeddings.weight")[0]
        self._emb_ln = (f32("embeddings.LayerNorm.weight"), f32("embeddings.LayerNorm.bias"))
        self._layers: list[_Layer] = []
        for i in range(LAYERS):
            p = f"encoder.layer.{i}."
            att = p + "attention."
            self._layers.append(
                _Layer(
                    qkv_w=np.ascontiguousarray(
                        np.concatenate(
                            [f32(f"{att}self.{n}.weight") for n in ("query", "key", "value")]
                        ).T
                    ),
                    qkv_b=np.concatenate(
                        [f32(f"{att}self.{n}.bias") for n in ("query", "key", "value")]
                    ),
                    out_w=np.ascontiguousarray(f32(f"{att}output.dense.weight").T),
                    out_b=f32(f"{att}output.dense.bias"),
                    ln1_g=f32(f"{att}output.LayerNorm.weight"),
                    ln1_b=f32(f"{att}output.LayerNorm.bias"),
                    ff1_w=np.ascontiguousarray(f32(f"{p}intermediate.dense.weight").T),
                    ff1_b=f32(f"{p}intermediate.dense.bias"),
                    ff2_w=np.ascontiguousarray(f32(f"{p}output.dense.weight").T),
                    ff2_b=f32(f"{p}output.dense.bias"),
                    ln2_g=f32(f"{p}output.LayerNorm.weight"),
                    ln2_b=f32(f"{p}output.LayerNorm.bias"),
                )
            )

    @classmethod
    def load(cls, model_dir: Path | None = None) -> ReferenceMiniLM:
        """From a directory holding model.safetensors and vocab.txt (default: the package's)."""
        folder = model_dir if model_dir is not None else package_model_dir()
        vocab = (folder / "vocab.txt").read_text("utf-8")
        return cls(read_safetensors(folder / "model.safetensors"), WordPiece.from_vocab_text(vocab))

    def encode_ids(self, ids: tuple[int, ...]) -> Vector:
        """The unit-length sentence embedding of one token sequence ([CLS] ... [SEP])."""
        n = len(ids)
        x = self._word[list(ids)] + self._position[:n] + self._type0
        x = _layer_norm(x, *self._emb_ln)
        head = DIMENSIONS // HEADS
        scale = np.float32(1.0 / math.sqrt(head))
        for layer in self._layers:
            qkv = x @ layer.qkv_w + layer.qkv_b  # (n, 3 * 384)
            q, k, v = (
                qkv[:, i * DIMENSIONS : (i + 1) * DIMENSIONS]
                .reshape(n, HEADS, head)
                .transpose(1, 0, 2)
                for i in range(3)
            )
            scores = (q @ k.transpose(0, 2, 1)) * scale  # (heads, n, n)
            scores -= scores.max(axis=-1, keepdims=True)
            weights = np.exp(scores)
            weights /= weights.sum(axis=-1, keepdims=True)
            context = (weights @ v).transpose(1, 0, 2).reshape(n, DIMENSIONS)
            x = _layer_norm(x + context @ layer.out_w + layer.out_b, layer.ln1_g, layer.ln1_b)
            hidden = _gelu(x @ layer.ff1_w + layer.ff1_b)
            x = _layer_norm(x + hidden @ layer.ff2_w + layer.ff2_b, layer.ln2_g, layer.ln2_b)
        pooled = x.mean(axis=0)
        norm = float(np.linalg.norm(pooled))
        out: Vector = (pooled / max(norm, 1e-12)).astype(np.float32)
        return out

    def embed(self, text: str) -> tuple[Vector, bool]:
        """(unit-length embedding, truncated): `truncated` means the text was longer than
        the model reads (256 word pieces) and only its beginning was embedded."""
        encoding = self.tokenizer.encode(text, MAX_TOKENS)
        return self.encode_ids(encoding.ids), encoding.truncated
