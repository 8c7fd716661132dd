"""all-MiniLM-L6-v2's encoder as an ONNX graph, built from the safetensors weights (no torch).

`build_encoder(tensors)` returns the serialized ModelProto that `minilm.py` hands to
onnxruntime. The graph is the same equations as `minilm_reference.py`, with three
changes that only move rounding (docs/decisions/0020):

- the attention scale 1/sqrt(32) is folded into the query weights and bias;
- the 24 dense weights (Q/K/V fused, attention output, FFN in/out) are stored as 8-bit
  integers with one float32 scale per block of 32 input rows of each output column
  (symmetric, round to nearest) and multiplied by onnxruntime's `MatMulNBits`
  (com.microsoft) with `accuracy_level=4`: the activations are quantized per block of 32
  too, products summed in int32 and scaled back to float32. 42 MB of float32 weights
  become 10.6 MB + 1.3 MB of scales, which a core's share of the L3 can keep warm;
- the word, position and token-type embeddings are NOT in the graph: the caller adds
  the three rows per token in numpy over the memory-mapped table (47 MB that a one-row
  lookup would otherwise copy into the model) and feeds `embedded` (tokens x 384).

Input `embedded`: float32 (tokens, 384). Output `embedding`: float32 (384,), the mean
over tokens of the last layer, L2-normalised.
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT: Final = "embedded"
OUTPUT: Final = "embedding"
BLOCK_ROWS: Final = 32
"""Input rows per quantization block (MatMulNBits' `block_size`)."""
WEIGHT_BITS: Final = 8
ACCURACY_LEVEL: Final = 4
"""MatMulNBits: 4 = int8 activations and int8 products (the fast path on AVX2);
0/1 = dequantize the weights to float32 per call (about 5x slower here)."""

_HIDDEN: Final = 384
_HEADS: Final = 12
_HEAD_DIM: Final = _HIDDEN // _HEADS
_LAYERS: Final = 6
_LAYER_NORM_EPS: Final = 1e-12
_OPSET: Final = 17  # LayerNormalization is in the default domain from 17
_IR_VERSION: Final = 8  # onnxruntime 1.31 reads up to 11; 8 is what opset 17 needs

F32 = npt.NDArray[np.float32]


def quantize_blocks(weight: F32, block_rows: int = BLOCK_ROWS) -> tuple[npt.NDArray[np.uint8], F32]:
    """A (K, N) float32 weight as MatMulNBits wants it: (codes, scales).

    codes: uint8 (N, K / block_rows, block_rows), each value q + 128 with
    q = round(w / scale) in [-127, 127]; scales: float32 (N * K / block_rows,), the
    largest |w| of the block / 127. The decoded weight is (code - 128) * scale: the
    op's default zero point for 8 bits is 128, so none is stored.
    """
    rows, cols = weight.shape
    if rows % block_rows:
        raise ValueError(f"{rows} input rows are not a multiple of {block_rows}")
    blocks = np.ascontiguousarray(weight.T).reshape(cols, rows // block_rows, block_rows)
    scale = np.abs(blocks).max(axis=-1) / np.float32(127)
    scale[scale == 0] = 1  # an all-zero block: any scale decodes it exactly
    codes = np.clip(np.rint(blocks / scale[..., None]), -127, 127) + 128
    return codes.astype(np.uint8), scale.astype(np.float32).reshape(-1)


def dequantize_blocks(codes: npt.NDArray[np.uint8], scales: F32) -> F32:
    """The (K, N) float32 weight that `quantize_blocks`' output stands for."""
    cols, blocks, block_rows = codes.shape
    decoded = (codes.astype(np.float32) - 128) * scales.reshape(cols, blocks, 1)
    out: F32 = np.ascontiguousarray(decoded.reshape(cols, blocks * block_rows).T)
    return out


class _Graph:
    """Nodes and initializers in the making; every output name is unique."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._count = 0

    def constant(self, name: str, value: npt.ArrayLike, dtype: type[np.generic]) -> str:
        array = np.asarray(value, dtype=dtype, order="C")  # keeps 0-d arrays scalar
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, *inputs: str, domain: str = "", **attributes: Any) -> str:
        self._count += 1
        output = f"{op_type.lower()}_{self._count}"
        self.nodes.append(
            helper.make_node(
                op_type,
                list(inputs),
                [output],
                name=f"{op_type}_{self._count}",
                domain=domain,
                **attributes,
            )
        )
        return output

    def dense(self, x: str, name: str, weight: F32, bias: F32) -> str:
        """x @ weight + bias, weight (K, N) float32 stored as 8-bit blocks."""
        codes, scales = quantize_blocks(weight)
        self.initializers.append(numpy_helper.from_array(codes, f"{name}.codes"))
        self.initializers.append(numpy_helper.from_array(scales, f"{name}.scales"))
        rows, cols = weight.shape
        # inputs: A, B, scales, zero_points, g_idx, bias ("" = absent); the bias is added
        # inside the kernel, saving a pass over the output
        return self.op(
            "MatMulNBits", x, f"{name}.codes", f"{name}.scales", "", "",
            self.constant(f"{name}.bias", bias, np.float32), domain="com.microsoft",
            K=rows, N=cols, bits=WEIGHT_BITS, block_size=BLOCK_ROWS,
            accuracy_level=ACCURACY_LEVEL,
        )  # fmt: skip

    def layer_norm(self, x: str, name: str, gamma: F32, beta: F32) -> str:
        return self.op(
            "LayerNormalization", x,
            self.constant(f"{name}.gamma", gamma, np.float32),
            self.constant(f"{name}.beta", beta, np.float32),
            axis=-1, epsilon=_LAYER_NORM_EPS,
        )  # fmt: skip


def build_encoder(tensors: dict[str, npt.NDArray[np.generic]]) -> bytes:
    """The serialized ONNX model of the encoder, pooling and normalisation (see module doc).

    `tensors`: the model.safetensors tensors by their Hugging Face names (BertModel)."""

    def f32(name: str) -> F32:
        return np.asarray(tensors[name], dtype=np.float32)

    g = _Graph()
    g.constant("qkv_shape", [0, 3, _HEADS, _HEAD_DIM], np.int64)  # 0: keep the token count
    g.constant("hidden_shape", [0, _HIDDEN], np.int64)
    for i, part in enumerate(("query", "key", "value")):
        g.constant(part, i, np.int64)
    scale = np.float32(1 / math.sqrt(_HEAD_DIM))

    x = g.layer_norm(
        INPUT, "emb", f32("embeddings.LayerNorm.weight"), f32("embeddings.LayerNorm.bias")
    )
    for i in range(_LAYERS):
        p = f"encoder.layer.{i}."
        att = p + "attention."
        w = [f32(f"{att}self.{n}.weight") for n in ("query", "key", "value")]  # (out, in)
        b = [f32(f"{att}self.{n}.bias") for n in ("query", "key", "value")]
        w[0], b[0] = w[0] * scale, b[0] * scale
        qkv = g.dense(x, f"l{i}.qkv", np.concatenate(w).T, np.concatenate(b))  # (n, 1152)
        heads = g.op("Transpose", g.op("Reshape", qkv, "qkv_shape"), perm=[1, 2, 0, 3])
        q, k, v = (g.op("Gather", heads, part, axis=0) for part in ("query", "key", "value"))
        scores = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 2, 1]))  # (12, n, n)
        weights = g.op("Softmax", scores, axis=-1)
        context = g.op("Transpose", g.op("MatMul", weights, v), perm=[1, 0, 2])
        context = g.op("Reshape", context, "hidden_shape")
        attended = g.dense(
            context, f"l{i}.out", f32(f"{att}output.dense.weight").T,
            f32(f"{att}output.dense.bias"),
        )  # fmt: skip
        x = g.layer_norm(
            g.op("Add", x, attended), f"l{i}.ln1",
            f32(f"{att}output.LayerNorm.weight"), f32(f"{att}output.LayerNorm.bias"),
        )  # fmt: skip
        h = g.dense(
            x, f"l{i}.ff1", f32(f"{p}intermediate.dense.weight").T,
            f32(f"{p}intermediate.dense.bias"),
        )  # fmt: skip
        h = g.op("Gelu", h, domain="com.microsoft")  # x * Phi(x), the erf form (exact)
        w_out, b_out = f32(f"{p}output.dense.weight").T, f32(f"{p}output.dense.bias")
        out = g.dense(h, f"l{i}.ff2", w_out, b_out)
        x = g.layer_norm(
            g.op("Add", x, out), f"l{i}.ln2",
            f32(f"{p}output.LayerNorm.weight"), f32(f"{p}output.LayerNorm.bias"),
        )  # fmt: skip
    pooled = g.op("ReduceMean", x, axes=[0], keepdims=0)
    g.nodes.append(helper.make_node("LpNormalization", [pooled], [OUTPUT], axis=-1, p=2))
    graph = helper.make_graph(
        g.nodes,
        "all-MiniLM-L6-v2",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["tokens", _HIDDEN])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [_HIDDEN])],
        g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", _OPSET), helper.make_opsetid("com.microsoft", 1)],
        producer_name="tollway",
    )
    model.ir_version = _IR_VERSION
    data: bytes = model.SerializeToString()
    return data
