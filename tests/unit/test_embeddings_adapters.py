"""Embeddings in the OpenAI, Azure and Gemini adapters and the registry, over
`httpx.MockTransport` with payloads in each vendor's real format: no sockets."""

from __future__ import annotations

import array
import base64
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import httpx
import orjson
import pytest
import pytest_asyncio

from schemas.errors import (
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderServerError,
)
from schemas.openai import EmbeddingsResponse
from schemas.routes import EMBEDDING_PROVIDERS, Deployment
from workers.providers.gemini_embeddings import (
    encode_base64,
    estimate_prompt_tokens,
    from_batch_embed,
    to_batch_embed_request,
)
from workers.providers.registry import ProviderRegistry, build_registry

Handler = Callable[[httpx.Request], httpx.Response]

OPENAI: Final = Deployment(
    name="oa", base_url="https://api.example.test/v1/", api_key_env="OA_KEY", timeout_s=7
)
AZURE: Final = Deployment(
    name="az",
    provider="azure",
    base_url="https://res.openai.azure.test",
    model="emb-deploy",
    api_version="2024-10-21",
    api_key_env="AZ_KEY",
)
GEMINI: Final = Deployment(
    name="ge",
    provider="gemini",
    base_url="https://generativelanguage.example.test",
    model="gemini-embedding-001",
    api_key_env="GE_KEY",
)
ANTHROPIC: Final = Deployment(name="an", provider="anthropic", base_url="https://an.test")
ENVIRON: Final = {"OA_KEY": "sk-oa", "AZ_KEY": "az-key", "GE_KEY": "ge-key"}

# Captured shape of OpenAI's answer (vectors shortened).
OPENAI_FLOAT_ANSWER: Final[dict[str, Any]] = {
    "object": "list",
    "data": [
        {"object": "embedding", "index": 0, "embedding": [-0.006929283, -0.005336422, 0.0112]},
        {"object": "embedding", "index": 1, "embedding": [0.0241, -0.0132, 0.0033]},
    ],
    "model": "text-embedding-3-small",
    "usage": {"prompt_tokens": 8, "total_tokens": 8},
}
VECTOR_B64: Final = base64.b64encode(array.array("f", [0.5, -0.25, 1.0]).tobytes()).decode()
OPENAI_BASE64_ANSWER: Final[dict[str, Any]] = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": VECTOR_B64}],
    "model": "text-embedding-3-small",
    "usage": {"prompt_tokens": 2, "total_tokens": 2},
}
GEMINI_ANSWER: Final[dict[str, Any]] = {
    "embeddings": [
        {"values": [0.013168523, -0.008711934, -0.046782676]},
        {"values": [0.5, 0.25, -1.0]},
    ]
}


class Upstream:
    """Records requests and answers them with `handler`."""

    def __init__(self) -> None:
        self.handler: Handler = lambda _: httpx.Response(200, json=OPENAI_FLOAT_ANSWER)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest_asyncio.fixture
async def registry(upstream: Upstream) -> AsyncIterator[ProviderRegistry]:
    providers = build_registry(ENVIRON, transport=httpx.MockTransport(upstream))
    yield providers
    await providers.aclose()


def test_the_registry_embeds_with_exactly_the_embedding_providers() -> None:
    assert set(build_registry({}).embedders) == EMBEDDING_PROVIDERS


# --- OpenAI ----------------------------------------------------------------------------


async def test_openai_sends_the_body_with_the_upstream_model_and_keeps_the_answer_bytes(
    registry: ProviderRegistry, upstream: Upstream
) -> None:
    answer = orjson.dumps(OPENAI_FLOAT_ANSWER) + b"\n"
    upstream.handler = lambda _: httpx.Response(200, content=answer)
    request = {"model": "embed", "input": ["a", "b"], "dimensions": 3, "user": "u"}
    reply = await registry.embed(
        OPENAI.model_copy(update={"model": "text-embedding-3-small"}), request
    )

    (sent,) = upstream.requests
    assert str(sent.url) == "https://api.example.test/v1/embeddings"
    assert sent.headers["authorization"] == "Bearer sk-oa"
    assert orjson.loads(sent.content) == {**request, "model": "text-embedding-3-small"}
    assert sent.extensions["timeout"]["read"] == 7
    assert request["model"] == "embed"  # the caller's dict is untouched
    assert reply.body == answer  # the provider's bytes, as they came
    assert reply.usage == {
        "prompt_tokens": 8,
        "completion_tokens": 0,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
    }
    assert reply.served_model == "text-embedding-3-small"
    assert EmbeddingsResponse.model_validate_json(reply.body).data[1].index == 1


async def test_openai_base64_vectors_pass_through_untouched(
    registry: ProviderRegistry, upstream: Upstream
) -> None:
    upstream.handler = lambda _: httpx.Response(200, json=OPENAI_BASE64_ANSWER)
    reply = await registry.embed(OPENAI, {"model": "m", "input": "x", "encoding_format": "base64"})
    assert orjson.loads(upstream.requests[0].content)["encoding_format"] == "base64"
    assert orjson.loads(reply.body)["data"][0]["embedding"] == VECTOR_B64


@pytest.mark.parametrize(
    ("status", "body", "headers", "error", "code"),
    [
        (
            400,
            {
                "error": {
                    "message": "This model's maximum context length is 8192 tokens, however "
                    "you requested 9000 tokens (9000 in your prompt; 0 for the completion).",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            },
            {},
            ProviderBadRequest,
            None,
        ),
        (
            429,
            {
                "error": {
                    "message": "Rate limit reached for text-embedding-3-small",
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            },
            {"retry-after-ms": "1500"},
            ProviderRateLimited,
            "rate_limit_exceeded",
        ),
        (
            500,
            {"error": {"message": "The server had an error", "type": "server_error"}},
            {},
            ProviderServerError,
            None,
        ),
        (
            404,
            {
                "error": {
                    "message": "The model `text-embedding-9` does not exist",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "model_not_found",
                }
            },
            {},
            ProviderError,
            "model_not_found",
        ),
    ],
)
async def test_openai_errors_map_onto_the_tree(
    registry: ProviderRegistry,
    upstream: Upstream,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str],
    error: type[ProviderError],
    code: str | None,
) -> None:
    upstream.handler = lambda _: httpx.Response(status, json=body, headers=headers)
    with pytest.raises(ProviderError) as caught:
        await registry.embed(OPENAI, {"model": "m", "input": "x"})
    assert type(caught.value) is error
    assert caught.value.upstream_code == code
    if isinstance(caught.value, ProviderRateLimited):
        assert caught.value.retry_after_s == 1.5


@pytest.mark.parametrize(
    "answer",
    [
        b"not json",
        b"[]",
        orjson.dumps({"object": "list", "model": "m"}),  # no data
        orjson.dumps({**OPENAI_FLOAT_ANSWER, "usage": {"prompt_tokens": -1}}),
    ],
)
async def test_openai_unusable_answers_are_server_errors(
    registry: ProviderRegistry, upstream: Upstream, answer: bytes
) -> None:
    upstream.handler = lambda _: httpx.Response(200, content=answer)
    with pytest.raises(ProviderServerError):
        await registry.embed(OPENAI, {"model": "m", "input": "x"})


# --- Azure -----------------------------------------------------------------------------


async def test_azure_posts_to_the_deployment_embeddings_url(
    registry: ProviderRegistry, upstream: Upstream
) -> None:
    reply = await registry.embed(AZURE, {"model": "text-embedding-3-small", "input": ["a", "b"]})
    (sent,) = upstream.requests
    assert sent.url.path == "/openai/deployments/emb-deploy/embeddings"
    assert sent.url.params["api-version"] == "2024-10-21"
    assert sent.headers["api-key"] == "az-key"
    assert "authorization" not in sent.headers
    assert orjson.loads(sent.content)["model"] == "emb-deploy"
    assert reply.usage["prompt_tokens"] == 8


async def test_azure_deployment_not_found_fails_over(
    registry: ProviderRegistry, upstream: Upstream
) -> None:
    body = {
        "error": {"code": "DeploymentNotFound", "message": "The API deployment does not exist."}
    }
    upstream.handler = lambda _: httpx.Response(404, json=body)
    with pytest.raises(ProviderError) as caught:
        await registry.embed(AZURE, {"model": "m", "input": "x"})
    assert type(caught.value) is ProviderError  # this deployment's fault: the plan goes on
    assert not caught.value.ends_plan
    assert caught.value.upstream_code == "DeploymentNotFound"


# --- Gemini ----------------------------------------------------------------------------


def test_gemini_request_is_one_batch_entry_per_input() -> None:
    request = {"model": "e", "input": ["first", "second"], "dimensions": 768, "user": "u"}
    assert to_batch_embed_request(request, "gemini-embedding-001") == {
        "requests": [
            {
                "model": "models/gemini-embedding-001",
                "content": {"parts": [{"text": "first"}]},
                "outputDimensionality": 768,
            },
            {
                "model": "models/gemini-embedding-001",
                "content": {"parts": [{"text": "second"}]},
                "outputDimensionality": 768,
            },
        ]
    }
    single = to_batch_embed_request({"model": "e", "input": "only"}, "m")
    assert single == {"requests": [{"model": "models/m", "content": {"parts": [{"text": "only"}]}}]}


@pytest.mark.parametrize("value", [[1, 2, 3], [[1], [2]]])
def test_gemini_refuses_token_id_inputs(value: object) -> None:
    with pytest.raises(ProviderBadRequest) as caught:
        to_batch_embed_request({"model": "e", "input": value}, "m")
    assert caught.value.upstream_code == "unsupported_parameter"
    assert caught.value.param == "input"


def test_gemini_answer_becomes_the_openai_list_with_estimated_usage() -> None:
    body, usage = from_batch_embed(GEMINI_ANSWER, {"input": ["hello", "a" * 9]}, "g-model")
    assert orjson.loads(body) == {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": 0,
                "embedding": GEMINI_ANSWER["embeddings"][0]["values"],
            },
            {"object": "embedding", "index": 1, "embedding": [0.5, 0.25, -1.0]},
        ],
        "model": "g-model",
        "usage": {"prompt_tokens": 2 + 3, "total_tokens": 5},  # ceil(5/4) + ceil(9/4)
    }
    assert usage["prompt_tokens"] == 5
    assert usage["completion_tokens"] == 0


def test_gemini_reported_usage_wins_over_the_estimate() -> None:
    answer = {**GEMINI_ANSWER, "usageMetadata": {"promptTokenCount": 42, "totalTokenCount": 42}}
    _, usage = from_batch_embed(answer, {"input": ["a", "b"]}, "m")
    assert usage["prompt_tokens"] == 42


def test_gemini_base64_is_little_endian_float32() -> None:
    body, _ = from_batch_embed(
        GEMINI_ANSWER, {"input": ["a", "b"], "encoding_format": "base64"}, "m"
    )
    encoded = orjson.loads(body)["data"][1]["embedding"]
    assert encoded == encode_base64([0.5, 0.25, -1.0])
    assert base64.b64decode(encoded) == b"\x00\x00\x00?\x00\x00\x80>\x00\x00\x80\xbf"


def test_gemini_estimate_counts_every_input_as_at_least_one_token() -> None:
    assert estimate_prompt_tokens(["", "abcd", "abcde"]) == 1 + 1 + 2


@pytest.mark.parametrize(
    "answer",
    [
        {"embeddings": [{"values": [1.0]}]},  # one vector for two inputs
        {"embedding": {"values": [1.0]}},  # embedContent's shape, not the batch's
        {"embeddings": [{"values": ["x"]}, {"values": [1.0]}]},
    ],
)
async def test_gemini_unusable_answers_are_server_errors(
    registry: ProviderRegistry, upstream: Upstream, answer: dict[str, Any]
) -> None:
    upstream.handler = lambda _: httpx.Response(200, json=answer)
    with pytest.raises(ProviderServerError):
        await registry.embed(GEMINI, {"model": "e", "input": ["a", "b"]})


async def test_gemini_call_uses_batch_embed_contents_and_the_key_header(
    registry: ProviderRegistry, upstream: Upstream
) -> None:
    upstream.handler = lambda _: httpx.Response(200, json=GEMINI_ANSWER)
    reply = await registry.embed(GEMINI, {"model": "embed", "input": ["a", "b"]})
    (sent,) = upstream.requests
    assert str(sent.url) == (
        "https://generativelanguage.example.test/v1beta/models/gemini-embedding-001:batchEmbedContents"
    )
    assert sent.headers["x-goog-api-key"] == "ge-key"
    assert len(orjson.loads(sent.content)["requests"]) == 2
    assert reply.served_model == "gemini-embedding-001"
    parsed = EmbeddingsResponse.model_validate_json(reply.body)
    assert [d.index for d in parsed.data] == [0, 1]


async def test_gemini_model_name_cannot_leave_the_path(
    registry: ProviderRegistry, upstream: Upstream
) -> None:
    upstream.handler = lambda _: httpx.Response(200, json={"embeddings": [{"values": [1.0]}]})
    plain = GEMINI.model_copy(update={"model": None})
    await registry.embed(plain, {"model": "../../evil?x=1", "input": "a"})
    assert upstream.requests[0].url.host == "generativelanguage.example.test"
    assert upstream.requests[0].url.raw_path.startswith(b"/v1beta/models/..%2F..%2Fevil%3Fx%3D1:")


@pytest.mark.parametrize(
    ("status", "body", "error", "code"),
    [
        (
            429,
            {
                "error": {
                    "code": 429,
                    "message": "Resource has been exhausted (e.g. check quota).",
                    "status": "RESOURCE_EXHAUSTED",
                    "details": [
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "9s"}
                    ],
                }
            },
            ProviderRateLimited,
            "RESOURCE_EXHAUSTED",
        ),
        (
            400,
            {
                "error": {
                    "code": 400,
                    "message": "* BatchEmbedContentsRequest.requests: at most 100 requests can "
                    "be in one batch\n",
                    "status": "INVALID_ARGUMENT",
                }
            },
            ProviderBadRequest,
            "INVALID_ARGUMENT",
        ),
    ],
)
async def test_gemini_errors_map_onto_the_tree(
    registry: ProviderRegistry,
    upstream: Upstream,
    status: int,
    body: dict[str, Any],
    error: type[ProviderError],
    code: str,
) -> None:
    upstream.handler = lambda _: httpx.Response(status, json=body)
    with pytest.raises(ProviderError) as caught:
        await registry.embed(GEMINI, {"model": "e", "input": "a"})
    assert type(caught.value) is error
    assert caught.value.upstream_code == code
    if isinstance(caught.value, ProviderRateLimited):
        assert caught.value.retry_after_s == 9.0


# --- no embeddings API -----------------------------------------------------------------


async def test_anthropic_has_no_embedder(registry: ProviderRegistry, upstream: Upstream) -> None:
    with pytest.raises(ProviderError, match="no embeddings for anthropic"):
        await registry.embed(ANTHROPIC, {"model": "claude", "input": "x"})
    assert upstream.requests == []
