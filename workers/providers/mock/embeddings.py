"""Embeddings for the mock provider: deterministic vectors and their wire formats. Pure.

Input: a parsed embeddings request in OpenAI's shape (Gemini bodies are read into
it by ``read_gemini_request``), the model name, ``MockSettings`` and the per-model
call index. Output: an ``Embeddings`` answer or a ``Failure``, then renderers for
OpenAI's list object and Gemini's embedContent / batchEmbedContents answers.

Behaviours are the chat ones, chosen by model name (``behaviour.scripted_failure``):
``mock-slow-<ms>``, ``mock-error-<status>``, ``mock-429-<s>``, ``mock-flaky-<pct>``,
``mock-timeout``, ``mock-context-window``; any other name answers normally.

Vectors: one per input, of ``dimensions`` (when given) or the model's known length
(``KNOWN_EMBEDDING_DIMENSIONS``, else ``DEFAULT_DIMENSIONS``). Each is seeded from a
BLAKE2b hash of the input (text, or token ids) and the settings' seed, scaled to unit
length and rounded to float32 as OpenAI's are: the same input always gets the same
vector, different inputs practically never do. Prompt tokens: ceil(chars / 4) per
text input (at least 1), the array length per token-id input.
"""

from __future__ import annotations

import array
import base64
import dataclasses
import hashlib
import math
import random
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Literal

from schemas.openai import (
    KNOWN_EMBEDDING_DIMENSIONS,
    MAX_EMBEDDING_DIMENSIONS,
    check_embedding_input,
)
from workers.providers.mock.behaviour import (
    CHARS_PER_TOKEN,
    Failure,
    Kind,
    MockSettings,
    invalid_model,
    invalid_request,
    latency_ms_of,
    parse_scenario,
    scripted_failure,
)

DEFAULT_DIMENSIONS: Final = 1536
GEMINI_MAX_BATCH: Final = 100
"""batchEmbedContents refuses more requests than this in one call (as Gemini does)."""

JsonObject = dict[str, object]
Vector = tuple[float, ...]
EmbeddingInput = str | tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Embeddings:
    """Answer 200 with ``vectors`` (one per input, in order) after ``latency_ms``.

    Attributes:
        vectors: unit-length float32 values, one vector per input.
        prompt_tokens: the request's size in tokens.
        encoding_format: ``float`` lists or ``base64`` strings (OpenAI wire only).
        latency_ms: wait before answering, in milliseconds.
    """

    vectors: tuple[Vector, ...]
    prompt_tokens: int
    encoding_format: Literal["float", "base64"]
    latency_ms: int
    status: int = 200


def decide_embeddings(
    request: Mapping[str, object], model: str, settings: MockSettings, call_index: int
) -> Embeddings | Failure:
    """Decide the outcome of one embeddings request (pure, deterministic in its inputs)."""
    scenario = parse_scenario(model)
    if scenario.kind is Kind.INVALID:
        return invalid_model(scenario)
    latency_ms = latency_ms_of(scenario, settings)
    problem = _request_problem(request, latency_ms)
    if problem is not None:
        return problem
    failure = scripted_failure(scenario, model, settings.seed, call_index, latency_ms)
    if failure is not None:
        if failure.code == "context_length_exceeded":
            return dataclasses.replace(failure, param="input")
        return failure

    inputs = _inputs(request["input"])
    dimensions = request.get("dimensions")
    length = dimensions if isinstance(dimensions, int) else dimensions_of(model)
    vectors = tuple(embedding_vector(_key(item), length, settings.seed) for item in inputs)
    prompt_tokens = sum(_tokens(item) for item in inputs)
    encoding: Literal["float", "base64"] = (
        "base64" if request.get("encoding_format") == "base64" else "float"
    )
    return Embeddings(vectors, prompt_tokens, encoding, latency_ms)


def _request_problem(request: Mapping[str, object], latency_ms: int) -> Failure | None:
    """The 400 a real provider gives this body, or None when it is valid."""
    try:
        check_embedding_input(request.get("input"))
    except ValueError as exc:
        return invalid_request(str(exc), "input", latency_ms)
    dimensions = request.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int)
        or isinstance(dimensions, bool)
        or not 1 <= dimensions <= MAX_EMBEDDING_DIMENSIONS
    ):
        message = f"'dimensions' must be an integer in 1..{MAX_EMBEDDING_DIMENSIONS}"
        return invalid_request(message, "dimensions", latency_ms)
    if request.get("encoding_format") not in (None, "float", "base64"):
        message = "'encoding_format' must be 'float' or 'base64'"
        return invalid_request(message, "encoding_format", latency_ms)
    return None


def dimensions_of(model: str) -> int:
    """The vector length of `model` when the request does not ask for one."""
    return KNOWN_EMBEDDING_DIMENSIONS.get(model, DEFAULT_DIMENSIONS)


@lru_cache(maxsize=4096)
def embedding_vector(key: bytes, dimensions: int, seed: int) -> Vector:
    """The unit-length float32 vector of one input (cached: inputs repeat in tests)."""
    digest = hashlib.blake2b(key, digest_size=16, salt=seed.to_bytes(16, "little", signed=True))
    rng = random.Random(int.from_bytes(digest.digest(), "little"))  # noqa: S311 - test data, not security
    raw = [rng.random() * 2.0 - 1.0 for _ in range(dimensions)]
    norm = math.sqrt(math.fsum(v * v for v in raw)) or 1.0
    return tuple(array.array("f", [v / norm for v in raw]))


def _inputs(value: object) -> list[EmbeddingInput]:
    """Checked input as a list of texts or token-id tuples (one per vector)."""
    if isinstance(value, str):
        return [value]
    assert isinstance(value, list)  # check_embedding_input passed
    if isinstance(value[0], int):
        return [tuple(value)]
    return [item if isinstance(item, str) else tuple(item) for item in value]


def _key(item: EmbeddingInput) -> bytes:
    if isinstance(item, str):
        return b"s:" + item.encode()
    return b"t:" + ",".join(map(str, item)).encode()


def _tokens(item: EmbeddingInput) -> int:
    if isinstance(item, str):
        return max(1, math.ceil(len(item) / CHARS_PER_TOKEN))
    return len(item)


# --- OpenAI wire -----------------------------------------------------------------------


def openai_body(answer: Embeddings, model: str) -> JsonObject:
    """OpenAI's embeddings list object; base64 vectors are little-endian float32 bytes."""
    data: list[JsonObject] = [
        {
            "object": "embedding",
            "index": index,
            "embedding": to_base64(vector) if answer.encoding_format == "base64" else list(vector),
        }
        for index, vector in enumerate(answer.vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": answer.prompt_tokens, "total_tokens": answer.prompt_tokens},
    }


def to_base64(vector: Vector) -> str:
    """OpenAI's base64 vector: the little-endian float32 bytes, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


# --- Gemini wire -----------------------------------------------------------------------


def read_gemini_request(body: Mapping[str, object], method: str) -> JsonObject | Failure:
    """An embedContent / batchEmbedContents body as OpenAI-shaped fields, or its 400.

    Every request of a batch must ask for the same ``outputDimensionality`` (the mock
    answers with one length); texts are the parts' text, joined.
    """
    if method == "embedContent":
        requests: object = [body]
    else:
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            return invalid_request("* BatchEmbedContentsRequest.requests: is empty", "requests")
        if len(requests) > GEMINI_MAX_BATCH:
            message = (
                "* BatchEmbedContentsRequest.requests: at most "
                f"{GEMINI_MAX_BATCH} requests can be in one batch"
            )
            return invalid_request(message, "requests")
    assert isinstance(requests, list)
    texts: list[str] = []
    lengths: set[object] = set()
    for one in requests:
        content = one.get("content") if isinstance(one, dict) else None
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not parts:
            return invalid_request(
                "* EmbedContentRequest.content: contents is not specified", "content"
            )
        texts.append("".join(str(p.get("text", "")) for p in parts if isinstance(p, dict)))
        lengths.add(one.get("outputDimensionality"))
    if len(lengths) > 1:
        return invalid_request("the mock needs one outputDimensionality per batch", "requests")
    fields: JsonObject = {"input": texts}
    (length,) = lengths
    if length is not None:
        fields["dimensions"] = length
    return fields


def gemini_body(answer: Embeddings, method: str) -> JsonObject:
    """embedContent: ``{"embedding": {"values"}}``; batch: ``{"embeddings": [...]}``.

    No ``usageMetadata``: the Gemini Developer API reports no tokens for embeddings.
    """
    vectors = [{"values": list(vector)} for vector in answer.vectors]
    if method == "embedContent":
        return {"embedding": vectors[0]}
    return {"embeddings": vectors}
