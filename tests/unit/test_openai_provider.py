"""workers/providers/openai.py over `httpx.MockTransport`: no sockets.

Every failure must come out as a `ProviderError` subclass: anything else escapes the
executor and leaves the record's offset unfinished.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import httpx
import orjson
import pytest
import pytest_asyncio

from schemas.errors import (
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderError,
    ProviderRateLimited,
    ProviderServerError,
    ProviderTimeout,
)
from schemas.routes import Deployment
from workers.providers.openai import OpenAIProvider, usage_from_openai

Handler = Callable[[httpx.Request], httpx.Response]

DEPLOYMENT: Final = Deployment(
    name="primary",
    base_url="https://api.example.test/v1/",
    model="gpt-4o-mini-2024-07-18",
    api_key_env="TEST_OPENAI_KEY",
    timeout_s=12.0,
)
PLAIN: Final = Deployment(name="plain", base_url="http://mock.test/v1")
REQUEST: Final[dict[str, Any]] = {
    "model": "gpt",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 5,
}
COMPLETION: Final[dict[str, Any]] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
    ],
    "usage": {
        "prompt_tokens": 20,
        "completion_tokens": 7,
        "total_tokens": 27,
        "prompt_tokens_details": {"cached_tokens": 16},
        "completion_tokens_details": {"reasoning_tokens": 3},
    },
}


class Upstream:
    """Records requests and answers them with `handler`."""

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
async def provider(upstream: Upstream) -> AsyncIterator[OpenAIProvider]:
    client = OpenAIProvider(
        environ={"TEST_OPENAI_KEY": "sk-test-123"}, transport=httpx.MockTransport(upstream)
    )
    yield client
    await client.aclose()


async def test_success_parses_usage_and_keeps_the_body(
    provider: OpenAIProvider, upstream: Upstream
) -> None:
    body = orjson.dumps(COMPLETION) + b"\n"
    upstream.handler = lambda _: httpx.Response(200, content=body)
    reply = await provider.chat(DEPLOYMENT, REQUEST)
    assert reply.body == body  # the provider's bytes, untouched
    assert reply.usage == {
        "prompt_tokens": 20,
        "completion_tokens": 7,
        "cached_tokens": 16,
        "reasoning_tokens": 3,
        "cache_write_tokens": 0,
    }
    assert reply.served_model == "gpt-4o-mini-2024-07-18"


async def test_request_uses_the_upstream_model_and_the_key_from_environ(
    provider: OpenAIProvider, upstream: Upstream
) -> None:
    await provider.chat(DEPLOYMENT, REQUEST)
    (sent,) = upstream.requests
    assert sent.method == "POST"
    assert str(sent.url) == "https://api.example.test/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-test-123"
    assert sent.headers["content-type"] == "application/json"
    assert orjson.loads(sent.content) == {**REQUEST, "model": "gpt-4o-mini-2024-07-18"}
    assert sent.extensions["timeout"]["read"] == 12.0
    assert REQUEST["model"] == "gpt"  # the caller's dict is not modified


async def test_without_deployment_model_or_key(
    provider: OpenAIProvider, upstream: Upstream
) -> None:
    upstream.handler = lambda _: httpx.Response(200, json={"choices": []})
    reply = await provider.chat(PLAIN, REQUEST)
    (sent,) = upstream.requests
    assert "authorization" not in sent.headers
    assert orjson.loads(sent.content)["model"] == "gpt"
    assert str(sent.url) == "http://mock.test/v1/chat/completions"
    assert reply.served_model == "gpt"  # the answer named no model
    assert reply.usage == usage_from_openai(None)


async def test_missing_key_in_environ_sends_no_authorization(upstream: Upstream) -> None:
    provider = OpenAIProvider(environ={}, transport=httpx.MockTransport(upstream))
    try:
        await provider.chat(DEPLOYMENT, REQUEST)
    finally:
        await provider.aclose()
    assert "authorization" not in upstream.requests[0].headers


def _error_body(code: object = None) -> bytes:
    return orjson.dumps({"error": {"message": "upstream says no", "type": "x", "code": code}})


@pytest.mark.parametrize(
    ("status", "body", "cls", "upstream_code", "retriable"),
    [
        (429, _error_body("rate_limit_exceeded"), ProviderRateLimited, "rate_limit_exceeded", True),
        (500, _error_body(), ProviderServerError, None, True),
        (503, _error_body("overloaded"), ProviderServerError, "overloaded", True),
        (502, b"<html>bad gateway</html>", ProviderServerError, None, True),
        (408, _error_body(), ProviderTimeout, None, True),
        (400, _error_body("invalid_value"), ProviderBadRequest, "invalid_value", False),
        (400, _error_body(42), ProviderBadRequest, "42", False),
        (400, b'{"error": "flat string"}', ProviderBadRequest, None, False),
        (400, b'["not", "an", "object"]', ProviderBadRequest, None, False),
        (422, _error_body(), ProviderBadRequest, None, False),
        (401, _error_body("invalid_api_key"), ProviderError, "invalid_api_key", False),
        (403, _error_body(), ProviderError, None, False),
        (404, _error_body("model_not_found"), ProviderError, "model_not_found", False),
    ],
)
async def test_error_statuses(
    provider: OpenAIProvider,
    upstream: Upstream,
    status: int,
    body: bytes,
    cls: type[ProviderError],
    upstream_code: str | None,
    retriable: bool,
) -> None:
    upstream.handler = lambda _: httpx.Response(status, content=body)
    with pytest.raises(ProviderError) as info:
        await provider.chat(DEPLOYMENT, REQUEST)
    error = info.value
    assert type(error) is cls
    assert (error.upstream_status, error.upstream_code, error.retriable) == (
        status,
        upstream_code,
        retriable,
    )
    assert "upstream says no" not in error.message  # provider text is not echoed


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("7", 7.0), ("1.5", 1.5), ("-3", 0.0), ("Wed, 21 Oct 2015 07:28:00 GMT", None), (None, None)],
)
async def test_rate_limit_retry_after(
    provider: OpenAIProvider, upstream: Upstream, retry_after: str | None, expected: float | None
) -> None:
    headers = {} if retry_after is None else {"retry-after": retry_after}
    upstream.handler = lambda _: httpx.Response(429, content=_error_body(), headers=headers)
    with pytest.raises(ProviderRateLimited) as info:
        await provider.chat(DEPLOYMENT, REQUEST)
    assert info.value.retry_after_s == expected


def _raise(exc: Exception) -> Handler:
    def handler(_: httpx.Request) -> httpx.Response:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (httpx.ReadTimeout("read timed out"), ProviderTimeout),
        (httpx.ConnectTimeout("connect timed out"), ProviderConnectionError),  # nothing sent
        (httpx.PoolTimeout("pool exhausted"), ProviderTimeout),
        (httpx.ConnectError("connection refused"), ProviderConnectionError),
        (httpx.RemoteProtocolError("server disconnected"), ProviderConnectionError),
        (httpx.ReadError("connection reset"), ProviderConnectionError),
    ],
)
async def test_transport_errors(
    provider: OpenAIProvider, upstream: Upstream, exc: Exception, cls: type[ProviderError]
) -> None:
    upstream.handler = _raise(exc)
    with pytest.raises(cls) as info:
        await provider.chat(DEPLOYMENT, REQUEST)
    assert info.value.retriable
    assert info.value.upstream_status is None
    assert info.value.__cause__ is not None
    assert info.value.__cause__.__cause__ is exc  # TransportFailure keeps the original


def _with_usage(usage: bytes) -> bytes:
    """A completion with a raw `usage` JSON fragment (orjson cannot write ints past 64 bits)."""
    return orjson.dumps({**COMPLETION, "usage": None}).replace(b'"usage":null', b'"usage":' + usage)


@pytest.mark.parametrize(
    "handler",
    [
        lambda _: httpx.Response(200, content=b"<html>maintenance</html>"),
        lambda _: httpx.Response(200, content=b""),
        lambda _: httpx.Response(200, json=["choices"]),
        lambda _: httpx.Response(200, json={"object": "error"}),
        lambda _: httpx.Response(
            200, headers={"content-encoding": "gzip"}, stream=httpx.ByteStream(b"not gzip")
        ),
        lambda _: httpx.Response(200, json={**COMPLETION, "usage": {"prompt_tokens": "many"}}),
        lambda _: httpx.Response(
            200, json={**COMPLETION, "usage": {"prompt_tokens_details": ["cached", 3]}}
        ),
        lambda _: httpx.Response(200, json={**COMPLETION, "usage": {"prompt_tokens": -5}}),
        lambda _: httpx.Response(200, content=_with_usage(b'{"completion_tokens": 1e30}')),
        lambda _: httpx.Response(
            200, content=_with_usage(b'{"prompt_tokens": 99999999999999999999}')
        ),
    ],
    ids=[
        "html",
        "empty",
        "array",
        "no-choices",
        "undecodable-gzip",
        "non-numeric-usage",
        "usage-details-not-an-object",
        "negative-usage",
        "usage-beyond-avro-long",
        "usage-beyond-int64",
    ],
)
async def test_unusable_200_is_a_server_error(
    provider: OpenAIProvider, upstream: Upstream, handler: Handler
) -> None:
    upstream.handler = handler
    with pytest.raises(ProviderServerError) as info:
        await provider.chat(DEPLOYMENT, REQUEST)
    assert info.value.retriable


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (None, (0, 0, 0, 0)),
        ("not a dict", (0, 0, 0, 0)),
        ({}, (0, 0, 0, 0)),
        ({"prompt_tokens": 5, "completion_tokens": None}, (5, 0, 0, 0)),
        ({"prompt_tokens": 5, "prompt_tokens_details": None}, (5, 0, 0, 0)),
        ({"prompt_tokens_details": {"cached_tokens": 2, "audio_tokens": 1}}, (0, 0, 2, 0)),
        ({"completion_tokens_details": {"reasoning_tokens": 9}}, (0, 0, 0, 9)),
        (COMPLETION["usage"], (20, 7, 16, 3)),
    ],
)
def test_usage_from_openai(usage: Any, expected: tuple[int, int, int, int]) -> None:
    parsed = usage_from_openai(usage)
    assert (
        parsed["prompt_tokens"],
        parsed["completion_tokens"],
        parsed["cached_tokens"],
        parsed["reasoning_tokens"],
    ) == expected
