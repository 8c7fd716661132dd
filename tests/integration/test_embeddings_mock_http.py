"""Embeddings contract tests: the OpenAI, Azure and Gemini adapters (production aiohttp
transport) against the mock provider's HTTP app, in-process on loopback. No Kafka."""

from __future__ import annotations

import array
import base64
from collections.abc import AsyncIterator
from typing import Any, Final

import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openai.types import CreateEmbeddingResponse

from schemas.errors import ProviderBadRequest, ProviderRateLimited, ProviderServerError
from schemas.routes import Deployment
from workers.providers.mock.behaviour import MockSettings
from workers.providers.mock.server import build_app
from workers.providers.registry import ProviderRegistry, build_registry

Client = TestClient[web.Request, web.Application]
SETTINGS: Final = MockSettings(latency_ms=0, seed=3)


@pytest_asyncio.fixture
async def mock() -> AsyncIterator[Client]:
    async with TestClient(TestServer(build_app(SETTINGS), host="127.0.0.1")) as client:
        yield client


@pytest_asyncio.fixture
async def registry() -> AsyncIterator[ProviderRegistry]:
    providers = build_registry({})  # the production aiohttp transport
    yield providers
    await providers.aclose()


def base(mock: Client) -> str:
    return f"http://127.0.0.1:{mock.server.port}"


def openai_at(mock: Client) -> Deployment:
    return Deployment(name="mock-openai", base_url=f"{base(mock)}/v1")


def azure_at(mock: Client) -> Deployment:
    return Deployment(
        name="mock-azure",
        provider="azure",
        base_url=base(mock),
        model="emb-deploy",
        api_version="2024-10-21",
    )


def gemini_at(mock: Client, model: str = "gemini-embedding-001") -> Deployment:
    return Deployment(name="mock-gemini", provider="gemini", base_url=base(mock), model=model)


def floats(body: bytes) -> list[list[float]]:
    """The vectors of an OpenAI list answer, decoding base64 the way the openai SDK does."""
    out: list[list[float]] = []
    for item in orjson.loads(body)["data"]:
        vector = item["embedding"]
        out.append(
            array.array("f", base64.b64decode(vector)).tolist()
            if isinstance(vector, str)
            else vector
        )
    return out


async def test_openai_adapter_float_and_base64_give_the_same_vectors(
    mock: Client, registry: ProviderRegistry
) -> None:
    request: dict[str, Any] = {"model": "text-embedding-3-small", "input": ["alpha", "beta"]}
    as_float = await registry.embed(openai_at(mock), request)
    as_base64 = await registry.embed(openai_at(mock), {**request, "encoding_format": "base64"})

    parsed = CreateEmbeddingResponse.model_validate_json(as_float.body)
    assert [len(d.embedding) for d in parsed.data] == [1536, 1536]
    assert parsed.usage.prompt_tokens == as_float.usage["prompt_tokens"] == 2 + 1  # ceil(n/4)
    assert isinstance(orjson.loads(as_base64.body)["data"][0]["embedding"], str)
    assert floats(as_base64.body) == floats(as_float.body)
    assert as_float.served_model == "text-embedding-3-small"


async def test_dimensions_and_token_inputs_reach_the_mock(
    mock: Client, registry: ProviderRegistry
) -> None:
    reply = await registry.embed(
        openai_at(mock),
        {"model": "text-embedding-3-large", "input": [[1, 2, 3], [4]], "dimensions": 32},
    )
    assert [len(v) for v in floats(reply.body)] == [32, 32]
    assert reply.usage["prompt_tokens"] == 4


async def test_azure_adapter_against_the_mock(mock: Client, registry: ProviderRegistry) -> None:
    reply = await registry.embed(azure_at(mock), {"model": "x", "input": "hello", "dimensions": 8})
    assert orjson.loads(reply.body)["model"] == "emb-deploy"  # the Azure deployment was asked
    assert len(floats(reply.body)[0]) == 8


async def test_gemini_adapter_against_the_mock(mock: Client, registry: ProviderRegistry) -> None:
    reply = await registry.embed(
        gemini_at(mock), {"model": "g", "input": ["hello", "world!"], "dimensions": 16}
    )
    parsed = CreateEmbeddingResponse.model_validate_json(reply.body)
    assert [len(d.embedding) for d in parsed.data] == [16, 16]
    # The mock, like the Gemini API, reports no tokens: the adapter estimates 4 chars a token.
    assert parsed.usage.prompt_tokens == reply.usage["prompt_tokens"] == 2 + 2
    # Same input, same vector, whichever wire format carried it.
    via_openai = await registry.embed(
        openai_at(mock), {"model": "g", "input": ["hello", "world!"], "dimensions": 16}
    )
    assert floats(via_openai.body) == floats(reply.body)  # float32 values survive JSON


async def test_gemini_base64(mock: Client, registry: ProviderRegistry) -> None:
    request = {"model": "g", "input": "x", "dimensions": 4, "encoding_format": "base64"}
    reply = await registry.embed(gemini_at(mock), request)
    assert isinstance(orjson.loads(reply.body)["data"][0]["embedding"], str)
    plain = await registry.embed(gemini_at(mock), {**request, "encoding_format": "float"})
    assert floats(reply.body) == floats(plain.body)


async def test_rate_limits_carry_their_retry_hint_in_both_dialects(
    mock: Client, registry: ProviderRegistry
) -> None:
    with pytest.raises(ProviderRateLimited) as openai_429:
        await registry.embed(openai_at(mock), {"model": "mock-429-2", "input": "x"})
    assert openai_429.value.retry_after_s == 2.0
    with pytest.raises(ProviderRateLimited) as gemini_429:
        await registry.embed(gemini_at(mock, "mock-429-3"), {"model": "g", "input": "x"})
    assert gemini_429.value.retry_after_s == 3.0  # from RetryInfo, Gemini's only hint


async def test_server_errors_and_refusals(mock: Client, registry: ProviderRegistry) -> None:
    with pytest.raises(ProviderServerError):
        await registry.embed(openai_at(mock), {"model": "mock-error-503", "input": "x"})
    with pytest.raises(ProviderBadRequest) as too_long:
        await registry.embed(openai_at(mock), {"model": "mock-context-window", "input": "x"})
    assert too_long.value.upstream_code == "context_length_exceeded"
    with pytest.raises(ProviderBadRequest) as too_many:
        await registry.embed(gemini_at(mock), {"model": "g", "input": ["x"] * 101})
    assert too_many.value.upstream_code == "INVALID_ARGUMENT"


async def test_the_mock_routes_and_counts_embeddings(mock: Client) -> None:
    single = await mock.post(
        "/v1beta/models/gemini-embedding-001:embedContent",
        json={"content": {"parts": [{"text": "hi"}]}, "outputDimensionality": 3},
    )
    assert single.status == 200
    assert len((await single.json())["embedding"]["values"]) == 3
    no_version = await mock.post(
        "/openai/deployments/d/embeddings", json={"model": "m", "input": "x"}
    )
    assert no_version.status == 404
    bad = await mock.post("/v1/embeddings", json={"model": "m", "input": ""})
    assert bad.status == 400
    assert (await bad.json())["error"]["param"] == "input"
    generate = await mock.post(
        "/v1beta/models/gemini-2.5-flash:generateContent",
        json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
    )
    assert generate.status == 200  # the embeddings route does not shadow generateContent
    stats = await (await mock.get("/stats")).json()
    assert stats["by_model"]["gemini-embedding-001"] == 1
    assert stats["by_status"]["400"] == 1
