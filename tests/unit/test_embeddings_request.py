"""schemas/openai.py EmbeddingsRequest and ingress/embeddings.py: what /v1/embeddings admits."""

from __future__ import annotations

from typing import Any, Final

import orjson
import pytest

from ingress.embeddings import parse_embeddings_request, response_bytes_floor
from schemas.errors import InvalidRequest, MalformedJSON, ResponseTooLarge, UnknownModel
from schemas.openai import MAX_EMBEDDING_INPUTS, EmbeddingsRequest
from schemas.routes import Deployment, ModelRoute, RoutesConfig

OPENAI: Final = Deployment(name="oa", base_url="https://api.example.test/v1")
ANTHROPIC: Final = Deployment(name="an", provider="anthropic", base_url="https://an.test")
GEMINI: Final = Deployment(name="ge", provider="gemini", base_url="https://ge.test")
ROUTES: Final = RoutesConfig(
    models={
        "text-embedding-3-small": ModelRoute(deployments=(OPENAI,)),
        "text-embedding-3-large": ModelRoute(deployments=(OPENAI,)),
        "claude": ModelRoute(deployments=(ANTHROPIC,)),
        "mixed": ModelRoute(deployments=(ANTHROPIC, GEMINI)),
        "custom-embedder": ModelRoute(deployments=(OPENAI,)),
    }
)


def parse(**fields: Any) -> EmbeddingsRequest:
    body = {"model": "text-embedding-3-small", "input": "hello", **fields}
    return parse_embeddings_request(orjson.dumps(body), ROUTES)


@pytest.mark.parametrize(
    ("value", "count"),
    [
        ("one text", 1),
        (["a", "b", "c"], 3),
        ([1, 2, 3], 1),  # one input given as token ids
        ([[1, 2], [3]], 2),
        (["x"] * MAX_EMBEDDING_INPUTS, MAX_EMBEDDING_INPUTS),
    ],
)
def test_valid_inputs_and_their_count(value: object, count: int) -> None:
    request = parse(input=value, dimensions=8)  # small vectors: 2,048 of them fit a result
    assert request.input == value
    assert request.input_count() == count


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "'input' must not be an empty string"),
        ([], "'input' must not be an empty array"),
        (["x"] * (MAX_EMBEDDING_INPUTS + 1), "'input' holds 2049 items; at most 2048"),
        (["a", ""], "'input[1]' must be a non-empty string"),
        (["a", 1], "'input[1]' must be a non-empty string"),
        ([1, "a"], "'input[1]' must be a token id"),
        ([1, -1], "'input[1]' must be a token id"),
        ([True], "'input[0]' must be a token id"),
        ([1.5], "'input[0]' must be a token id"),
        ([[1], []], "'input[1]' must be a non-empty token-id array"),
        ([[1], [2, "x"]], "'input[1][1]' must be a token id"),
        ({"text": "a"}, "'input' must be a string, an array of strings"),
        (None, "'input' must be a string, an array of strings"),
    ],
)
def test_invalid_inputs_are_a_400_naming_the_item(value: object, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse(input=value)
    assert type(caught.value) is InvalidRequest
    assert caught.value.http_status == 400
    assert caught.value.param == "input"
    assert message in caught.value.message


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"encoding_format": "int8"}, "encoding_format"),
        ({"dimensions": 0}, "dimensions"),
        ({"dimensions": "256"}, "dimensions"),  # strict: no string-to-int coercion
        ({"dimensions": 100_000}, "dimensions"),
        ({"user": 5}, "user"),
        ({"model": ""}, "model"),
        ({"temperature": 1}, "temperature"),  # unknown fields are refused, as OpenAI does
    ],
)
def test_invalid_fields_are_a_400_naming_the_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse(**fields)
    assert caught.value.param == param
    assert param in caught.value.message


def test_every_openai_field_is_taken() -> None:
    request = parse(input=["a"], encoding_format="base64", dimensions=256, user="u-1")
    assert (request.encoding_format, request.dimensions, request.user) == ("base64", 256, "u-1")


def test_syntax_errors_and_non_objects() -> None:
    with pytest.raises(MalformedJSON):
        parse_embeddings_request(b"{nope", ROUTES)
    with pytest.raises(InvalidRequest, match="JSON object"):
        parse_embeddings_request(b"[1]", ROUTES)


def test_unknown_model_is_404() -> None:
    with pytest.raises(UnknownModel):
        parse(model="nope")


def test_a_route_of_anthropic_deployments_only_is_a_400_naming_the_model() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse(model="claude")
    assert caught.value.http_status == 400
    assert caught.value.error_type == "invalid_request_error"
    assert caught.value.param == "model"
    assert "`claude` cannot create embeddings" in caught.value.message
    assert "anthropic" in caught.value.message


def test_a_mixed_route_is_admitted_for_its_embedding_deployments() -> None:
    assert parse(model="mixed").model == "mixed"


def test_aliases_count_as_models() -> None:
    routes = RoutesConfig.model_validate(
        {
            "models": {"text-embedding-3-small": {"deployments": [OPENAI.model_dump()]}},
            "aliases": {"teams": {"acme": {"embed": "text-embedding-3-small"}}},
        }
    )
    body = orjson.dumps({"model": "embed", "input": "x"})
    assert parse_embeddings_request(body, routes, team_id="acme").model == "embed"
    with pytest.raises(UnknownModel):
        parse_embeddings_request(body, routes, team_id="other")


# --- the answer must fit a Kafka record ------------------------------------------------


def test_answers_too_large_for_a_result_are_refused_before_any_call() -> None:
    many = ["x"] * 2_000
    with pytest.raises(ResponseTooLarge) as caught:
        parse(input=many)  # 2,000 x 1,536 floats: tens of MB
    assert caught.value.http_status == 400
    assert caught.value.code == "response_too_large"
    assert "fewer inputs" in caught.value.message
    # base64 is ~2x smaller than the float floor, and fewer dimensions shrink it further
    parse(input=["x"] * 100, encoding_format="base64")
    parse(input=many, encoding_format="base64", dimensions=64)
    with pytest.raises(ResponseTooLarge):
        parse(input=["x"] * 100, model="text-embedding-3-large", encoding_format="base64")


def test_the_floor_is_only_computed_for_known_lengths() -> None:
    route = ROUTES.resolve("custom-embedder")
    request = EmbeddingsRequest(model="custom-embedder", input=["x"] * 2_000)
    assert response_bytes_floor(request, route) is None  # unknown model: the router checks
    with_dimensions = EmbeddingsRequest(model="custom-embedder", input=["x"] * 2, dimensions=3)
    assert response_bytes_floor(with_dimensions, route) == 2 * (3 * 10 + 50)
    base64 = EmbeddingsRequest(
        model="custom-embedder", input="x", dimensions=3, encoding_format="base64"
    )
    assert response_bytes_floor(base64, route) == 16 + 50  # 12 bytes -> 16 base64 chars


def test_a_smaller_limit_is_honoured() -> None:
    body = orjson.dumps({"model": "text-embedding-3-small", "input": ["a", "b"]})
    with pytest.raises(ResponseTooLarge):
        parse_embeddings_request(body, ROUTES, max_result_bytes=10_000)
