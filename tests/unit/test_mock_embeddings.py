"""The mock provider's embeddings core (workers/providers/mock/embeddings.py): pure.

The aiohttp routes are tested in tests/integration/test_embeddings_mock_http.py.
"""

from __future__ import annotations

import base64
import math
import struct
from typing import Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.openai import EmbeddingsResponse
from workers.providers.mock.behaviour import Failure, MockSettings
from workers.providers.mock.embeddings import (
    DEFAULT_DIMENSIONS,
    GEMINI_MAX_BATCH,
    Embeddings,
    decide_embeddings,
    embedding_vector,
    gemini_body,
    openai_body,
    read_gemini_request,
    to_base64,
)

SETTINGS: Final = MockSettings(latency_ms=3, seed=7)


def decide(model: str = "text-embedding-3-small", call_index: int = 0, **fields: object) -> object:
    return decide_embeddings(
        {"model": model, "input": "hello", **fields}, model, SETTINGS, call_index
    )


def answer(**kwargs: object) -> Embeddings:
    outcome = decide(**kwargs)  # type: ignore[arg-type]  # test helper: fields by keyword
    assert isinstance(outcome, Embeddings)
    return outcome


def test_one_unit_vector_per_input_of_the_model_length() -> None:
    outcome = answer(input=["hello", "world", "hello"])
    assert len(outcome.vectors) == 3
    assert all(len(v) == DEFAULT_DIMENSIONS for v in outcome.vectors)
    assert outcome.vectors[0] == outcome.vectors[2]  # same input, same vector
    assert outcome.vectors[0] != outcome.vectors[1]
    for vector in outcome.vectors:
        assert math.isclose(math.fsum(v * v for v in vector), 1.0, rel_tol=1e-5)
    assert outcome.latency_ms == 3
    assert outcome.encoding_format == "float"


@pytest.mark.parametrize(
    ("model", "fields", "length"),
    [
        ("text-embedding-3-large", {}, 3072),
        ("text-embedding-3-small", {}, 1536),
        ("anything-else", {}, DEFAULT_DIMENSIONS),
        ("text-embedding-3-large", {"dimensions": 256}, 256),
        ("mock-embed", {"dimensions": 1}, 1),
    ],
)
def test_length_is_dimensions_or_the_models_default(
    model: str, fields: dict[str, object], length: int
) -> None:
    assert len(answer(model=model, **fields).vectors[0]) == length


def test_vectors_are_float32_values() -> None:
    vector = answer(dimensions=16).vectors[0]
    assert vector == struct.unpack("<16f", struct.pack("<16f", *vector))


@given(st.text(min_size=1, max_size=40), st.integers(min_value=1, max_value=64))
def test_vectors_are_deterministic_per_seed(text: str, dimensions: int) -> None:
    key = b"s:" + text.encode()
    assert embedding_vector(key, dimensions, 1) == embedding_vector(key, dimensions, 1)
    assert len(embedding_vector(key, dimensions, 1)) == dimensions


def test_another_seed_gives_other_vectors() -> None:
    assert embedding_vector(b"s:x", 8, 1) != embedding_vector(b"s:x", 8, 2)


@pytest.mark.parametrize(
    ("value", "tokens"),
    [
        ("abcd", 1),
        ("abcde", 2),
        (["a", "abcdefgh"], 1 + 2),
        ([5, 6, 7], 3),
        ([[5, 6], [7]], 3),
    ],
)
def test_prompt_tokens(value: object, tokens: int) -> None:
    assert answer(input=value).prompt_tokens == tokens


def test_token_ids_and_text_give_other_vectors() -> None:
    by_text = answer(input=["1"], dimensions=8).vectors[0]
    by_tokens = answer(input=[1], dimensions=8).vectors[0]
    assert by_text != by_tokens


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": None}, "input"),
        ({"dimensions": 0}, "dimensions"),
        ({"dimensions": True}, "dimensions"),
        ({"encoding_format": "int8"}, "encoding_format"),
    ],
)
def test_invalid_requests_are_400s_after_the_latency(fields: dict[str, object], param: str) -> None:
    outcome = decide(**fields)  # type: ignore[arg-type]
    assert isinstance(outcome, Failure)
    assert (outcome.status, outcome.param, outcome.latency_ms) == (400, param, 3)


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("mock-error-503", 503, None),
        ("mock-429-4", 429, "rate_limit_exceeded"),
        ("mock-context-window", 400, "context_length_exceeded"),
        ("mock-slow-abc", 400, "invalid_mock_model"),
    ],
)
def test_model_names_script_failures_as_for_chat(model: str, status: int, code: str | None) -> None:
    outcome = decide(model=model)
    assert isinstance(outcome, Failure)
    assert (outcome.status, outcome.code) == (status, code)
    if code == "context_length_exceeded":
        assert outcome.param == "input"
    if status == 429:
        assert dict(outcome.headers)["Retry-After"] == "4"


def test_flaky_fails_some_calls_and_slow_waits() -> None:
    outcomes = [decide(model="mock-flaky-50", call_index=i) for i in range(40)]
    failures = [o for o in outcomes if isinstance(o, Failure)]
    assert 0 < len(failures) < 40
    assert all(o.status == 500 for o in failures)
    assert answer(model="mock-slow-250").latency_ms == 250


# --- wire formats ----------------------------------------------------------------------


def test_openai_body_has_openai_shape() -> None:
    outcome = answer(input=["a", "b"], dimensions=4)
    body = openai_body(outcome, "text-embedding-3-small")
    parsed = EmbeddingsResponse.model_validate(body)
    assert parsed.object == "list"
    assert parsed.model == "text-embedding-3-small"
    assert [d.index for d in parsed.data] == [0, 1]
    assert all(d.object == "embedding" for d in parsed.data)
    assert parsed.data[0].embedding == list(outcome.vectors[0])
    assert body["usage"] == {"prompt_tokens": 2, "total_tokens": 2}


def test_openai_base64_decodes_to_the_float_vector() -> None:
    as_float = answer(input="x", dimensions=8)
    as_base64 = answer(input="x", dimensions=8, encoding_format="base64")
    encoded = openai_body(as_base64, "m")["data"]
    assert isinstance(encoded, list)
    raw = base64.b64decode(encoded[0]["embedding"])
    assert struct.unpack("<8f", raw) == as_float.vectors[0]
    assert to_base64((1.0,)) == base64.b64encode(b"\x00\x00\x80\x3f").decode()


def test_gemini_requests_read_into_openai_fields() -> None:
    single = {"content": {"parts": [{"text": "hel"}, {"text": "lo"}]}, "outputDimensionality": 8}
    assert read_gemini_request(single, "embedContent") == {"input": ["hello"], "dimensions": 8}
    batch = {
        "requests": [
            {"model": "models/g", "content": {"parts": [{"text": "a"}]}},
            {"model": "models/g", "content": {"parts": [{"text": "b"}]}},
        ]
    }
    assert read_gemini_request(batch, "batchEmbedContents") == {"input": ["a", "b"]}


@pytest.mark.parametrize(
    ("body", "method"),
    [
        ({}, "embedContent"),
        ({"content": {"parts": []}}, "embedContent"),
        ({"requests": []}, "batchEmbedContents"),
        ({"requests": "x"}, "batchEmbedContents"),
        (
            {"requests": [{"content": {"parts": [{"text": "a"}]}}] * (GEMINI_MAX_BATCH + 1)},
            "batchEmbedContents",
        ),
        (
            {
                "requests": [
                    {"content": {"parts": [{"text": "a"}]}, "outputDimensionality": 8},
                    {"content": {"parts": [{"text": "b"}]}, "outputDimensionality": 9},
                ]
            },
            "batchEmbedContents",
        ),
    ],
)
def test_gemini_bad_requests_are_400s(body: dict[str, object], method: str) -> None:
    outcome = read_gemini_request(body, method)
    assert isinstance(outcome, Failure)
    assert outcome.status == 400


def test_gemini_bodies() -> None:
    outcome = answer(input=["a", "b"], dimensions=2)
    assert gemini_body(outcome, "batchEmbedContents") == {
        "embeddings": [{"values": list(outcome.vectors[0])}, {"values": list(outcome.vectors[1])}]
    }
    assert gemini_body(outcome, "embedContent") == {
        "embedding": {"values": list(outcome.vectors[0])}
    }
