"""workers/providers/azure.py over `httpx.MockTransport`: no sockets.

Azure shares the OpenAI adapter's request/answer path; these tests pin what differs
(deployment URL, `api-version`, `api-key`) and the Azure-specific payloads (content
filter results in 200s, the content-filter 400, retry-after-ms).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import httpx
import orjson
import pytest
import pytest_asyncio
from pydantic import ValidationError

from schemas.errors import (
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderServerError,
)
from schemas.routes import Deployment
from workers.providers.azure import AzureOpenAIProvider
from workers.providers.http import HttpxClient

Handler = Callable[[httpx.Request], httpx.Response]

DEPLOYMENT: Final = Deployment(
    name="azure-east",
    provider="azure",
    base_url="https://contoso.openai.azure.test/",
    model="gpt4o-prod",
    api_key_env="TEST_AZURE_KEY",
    api_version="2024-10-21",
    timeout_s=15.0,
)
REQUEST: Final[dict[str, Any]] = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 5,
}
COMPLETION: Final[dict[str, Any]] = {
    "id": "chatcmpl-AZ1",
    "object": "chat.completion",
    "created": 1_760_000_000,
    "model": "gpt-4o-2024-11-20",
    "prompt_filter_results": [
        {"prompt_index": 0, "content_filter_results": {"hate": {"filtered": False}}}
    ],
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hello"},
            "finish_reason": "stop",
            "content_filter_results": {"hate": {"filtered": False, "severity": "safe"}},
        }
    ],
    "usage": {
        "prompt_tokens": 1_200,
        "completion_tokens": 40,
        "total_tokens": 1_240,
        "prompt_tokens_details": {"cached_tokens": 1_024},
        "completion_tokens_details": {"reasoning_tokens": 0},
    },
}


class Upstream:
    def __init__(self) -> None:
        self.handler: Handler = lambda _: httpx.Response(200, json=COMPLETION)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest_asyncio.fixture
async def provider(upstream: Upstream) -> AsyncIterator[AzureOpenAIProvider]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as raw_client:
        client = HttpxClient(raw_client)
        yield AzureOpenAIProvider(client=client, environ={"TEST_AZURE_KEY": "azure-key-1"})


async def test_deployment_url_api_version_and_api_key(
    provider: AzureOpenAIProvider, upstream: Upstream
) -> None:
    body = orjson.dumps(COMPLETION)
    upstream.handler = lambda _: httpx.Response(200, content=body)
    reply = await provider.chat(DEPLOYMENT, REQUEST)
    (sent,) = upstream.requests
    assert str(sent.url) == (
        "https://contoso.openai.azure.test/openai/deployments/gpt4o-prod/chat/completions"
        "?api-version=2024-10-21"
    )
    assert sent.headers["api-key"] == "azure-key-1"
    assert "authorization" not in sent.headers
    assert sent.extensions["timeout"]["read"] == 15.0
    assert orjson.loads(sent.content) == {**REQUEST, "model": "gpt4o-prod"}
    assert reply.body == body  # Azure answers in the canonical shape: bytes untouched
    assert reply.served_model == "gpt-4o-2024-11-20"
    assert reply.usage == {
        "prompt_tokens": 1_200,
        "completion_tokens": 40,
        "cached_tokens": 1_024,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
    }


async def test_deployment_name_defaults_to_the_model_and_is_one_path_segment(
    upstream: Upstream,
) -> None:
    plain = Deployment(
        name="plain", provider="azure", base_url="http://azure.test", api_version="2025-01-01"
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as raw_client:
        client = HttpxClient(raw_client)
        provider = AzureOpenAIProvider(client=client, environ={})
        await provider.chat(plain, {**REQUEST, "model": "gpt-4o"})
        await provider.chat(plain, {**REQUEST, "model": "../x?api-version=1"})
    first, second = upstream.requests
    assert (
        first.url.raw_path == b"/openai/deployments/gpt-4o/chat/completions?api-version=2025-01-01"
    )
    assert "api-key" not in first.headers
    assert second.url.host == "azure.test"
    assert second.url.raw_path == (
        b"/openai/deployments/..%2Fx%3Fapi-version%3D1/chat/completions?api-version=2025-01-01"
    )


def test_routes_require_api_version_for_azure_only() -> None:
    with pytest.raises(ValidationError, match="api_version"):
        Deployment(name="a", provider="azure", base_url="https://x.test")
    with pytest.raises(ValidationError, match="only used by azure"):
        Deployment(name="o", provider="openai", base_url="https://x.test", api_version="1")


async def test_content_filter_400_keeps_its_code(
    provider: AzureOpenAIProvider, upstream: Upstream
) -> None:
    body = {
        "error": {
            "message": "The response was filtered due to the prompt triggering Azure OpenAI's "
            "content management policy.",
            "type": None,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
            "innererror": {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": {"violence": {"filtered": True, "severity": "high"}},
            },
        }
    }
    upstream.handler = lambda _: httpx.Response(400, json=body)
    with pytest.raises(ProviderBadRequest) as info:
        await provider.chat(DEPLOYMENT, REQUEST)
    assert info.value.upstream_code == "content_filter"
    assert info.value.to_body()["error"]["code"] == "content_filter"


async def test_content_filtered_completion_passes_through(
    provider: AzureOpenAIProvider, upstream: Upstream
) -> None:
    filtered = {
        **COMPLETION,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None},
                "finish_reason": "content_filter",
                "content_filter_results": {"sexual": {"filtered": True, "severity": "medium"}},
            }
        ],
    }
    upstream.handler = lambda _: httpx.Response(200, json=filtered)
    reply = await provider.chat(DEPLOYMENT, REQUEST)
    assert orjson.loads(reply.body)["choices"][0]["finish_reason"] == "content_filter"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "6"}, 6.0),
        ({"retry-after-ms": "1500", "retry-after": "2"}, 1.5),
        ({}, None),
    ],
)
async def test_rate_limit(
    provider: AzureOpenAIProvider,
    upstream: Upstream,
    headers: dict[str, str],
    expected: float | None,
) -> None:
    body = {"error": {"code": "429", "message": "Requests to the ChatCompletions_Create ..."}}
    upstream.handler = lambda _: httpx.Response(429, json=body, headers=headers)
    with pytest.raises(ProviderRateLimited) as info:
        await provider.chat(DEPLOYMENT, REQUEST)
    assert info.value.retry_after_s == expected
    assert info.value.upstream_code == "429"


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (401, "401", ProviderError),
        (404, "DeploymentNotFound", ProviderError),
        (400, "context_length_exceeded", ProviderBadRequest),
        (500, "InternalServerError", ProviderServerError),
    ],
)
async def test_error_statuses(
    provider: AzureOpenAIProvider,
    upstream: Upstream,
    status: int,
    code: str,
    cls: type[ProviderError],
) -> None:
    body = {"error": {"code": code, "message": "upstream says no"}}
    upstream.handler = lambda _: httpx.Response(status, json=body)
    with pytest.raises(ProviderError) as info:
        await provider.chat(DEPLOYMENT, REQUEST)
    assert type(info.value) is cls
    assert (info.value.upstream_status, info.value.upstream_code) == (status, code)


async def test_unusable_200_is_a_server_error(
    provider: AzureOpenAIProvider, upstream: Upstream
) -> None:
    upstream.handler = lambda _: httpx.Response(200, content=b"<html>portal</html>")
    with pytest.raises(ProviderServerError):
        await provider.chat(DEPLOYMENT, REQUEST)
