"""Every adapter against the mock provider over loopback, through the registry.

The mock speaks the OpenAI, Azure-style, Anthropic and Gemini wire formats with the same
behaviours by model name, so one table checks that each adapter's URL, headers, body
and error mapping agree with a server speaking its dialect. No Kafka.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from schemas.errors import (
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderServerError,
)
from schemas.routes import Deployment, ProviderKind
from workers.providers.base import StreamPiece
from workers.providers.mock.behaviour import MockSettings
from workers.providers.mock.server import STATS_KEY, build_app
from workers.providers.registry import ProviderRegistry, build_registry

SETTINGS: Final = MockSettings(latency_ms=0, completion_tokens=8, seed=3)
KINDS: Final[tuple[ProviderKind, ...]] = ("openai", "anthropic", "gemini")
HELLO: Final[dict[str, Any]] = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"},
    ],
}


@pytest_asyncio.fixture
async def mock_root() -> AsyncIterator[tuple[str, web.Application]]:
    app = build_app(SETTINGS)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()  # the OS picks a free port
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}", app
    await runner.cleanup()


@pytest_asyncio.fixture
async def registry() -> AsyncIterator[ProviderRegistry]:
    providers = build_registry({"MOCK_KEY": "sk-mock"})
    yield providers
    await providers.aclose()


def _deployment(kind: ProviderKind, root: str) -> Deployment:
    # The OpenAI adapter appends /chat/completions to a base that ends in /v1; the
    # Anthropic and Gemini adapters append their own versioned paths to the host.
    base_url = f"{root}/v1" if kind == "openai" else root
    return Deployment(name=f"mock-{kind}", provider=kind, base_url=base_url, api_key_env="MOCK_KEY")


def _request(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, **HELLO, **fields}


@pytest.mark.parametrize("kind", KINDS)
async def test_plain_reply_and_usage(
    kind: ProviderKind, mock_root: tuple[str, web.Application], registry: ProviderRegistry
) -> None:
    root, app = mock_root
    reply = await registry.chat(_deployment(kind, root), _request("mock"))
    body = orjson.loads(reply.body)
    assert body["object"] == "chat.completion"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 8
    assert choice["finish_reason"] == "stop"
    assert reply.served_model == "mock"
    assert reply.usage["completion_tokens"] == 8
    assert reply.usage["prompt_tokens"] > 3  # the system prompt counts in every dialect
    assert body["usage"]["total_tokens"] == (
        reply.usage["prompt_tokens"] + reply.usage["completion_tokens"]
    )
    assert app[STATS_KEY].by_status == {200: 1}


async def test_the_same_prompt_gets_the_same_words_in_every_dialect(
    mock_root: tuple[str, web.Application], registry: ProviderRegistry
) -> None:
    root, _ = mock_root
    contents = set()
    for kind in KINDS:
        reply = await registry.chat(_deployment(kind, root), _request("mock"))
        contents.add(orjson.loads(reply.body)["choices"][0]["message"]["content"])
    assert len(contents) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_max_tokens_gives_length(
    kind: ProviderKind, mock_root: tuple[str, web.Application], registry: ProviderRegistry
) -> None:
    root, _ = mock_root
    reply = await registry.chat(_deployment(kind, root), _request("mock", max_tokens=3))
    assert orjson.loads(reply.body)["choices"][0]["finish_reason"] == "length"
    assert reply.usage["completion_tokens"] == 3


@pytest.mark.parametrize("kind", KINDS)
async def test_rate_limit_carries_retry_after(
    kind: ProviderKind, mock_root: tuple[str, web.Application], registry: ProviderRegistry
) -> None:
    root, _ = mock_root
    with pytest.raises(ProviderRateLimited) as info:
        await registry.chat(_deployment(kind, root), _request("mock-429-7"))
    assert info.value.retry_after_s == 7.0
    assert info.value.upstream_status == 429


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_are_retriable(
    kind: ProviderKind,
    status: int,
    mock_root: tuple[str, web.Application],
    registry: ProviderRegistry,
) -> None:
    root, _ = mock_root
    with pytest.raises(ProviderServerError) as info:
        await registry.chat(_deployment(kind, root), _request(f"mock-error-{status}"))
    assert info.value.retriable
    assert info.value.upstream_status == status


async def test_anthropic_overloaded_529_is_retriable(
    mock_root: tuple[str, web.Application], registry: ProviderRegistry
) -> None:
    root, _ = mock_root
    with pytest.raises(ProviderServerError) as info:
        await registry.chat(_deployment("anthropic", root), _request("mock-error-529"))
    assert (info.value.upstream_status, info.value.upstream_code) == (529, "overloaded_error")
    assert info.value.retriable


@pytest.mark.parametrize("kind", KINDS)
async def test_context_window_is_a_bad_request_with_a_canonical_code(
    kind: ProviderKind, mock_root: tuple[str, web.Application], registry: ProviderRegistry
) -> None:
    root, _ = mock_root
    with pytest.raises(ProviderBadRequest) as info:
        await registry.chat(_deployment(kind, root), _request("mock-context-window"))
    assert info.value.upstream_code == "context_length_exceeded"
    assert not info.value.retriable
    assert info.value.to_body()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("status", [401, 404])
async def test_misconfigured_deployment_fails_over_without_retry(
    kind: ProviderKind,
    status: int,
    mock_root: tuple[str, web.Application],
    registry: ProviderRegistry,
) -> None:
    root, _ = mock_root
    with pytest.raises(ProviderError) as info:
        await registry.chat(_deployment(kind, root), _request(f"mock-error-{status}"))
    assert type(info.value) is ProviderError
    assert info.value.upstream_status == status


async def test_content_filter_in_each_dialect(
    mock_root: tuple[str, web.Application], registry: ProviderRegistry
) -> None:
    """Each provider reports it its own way; the canonical outcome says content_filter."""
    root, _ = mock_root
    request = _request("mock-content-filter")
    with pytest.raises(ProviderBadRequest) as openai_error:
        await registry.chat(_deployment("openai", root), request)
    assert openai_error.value.upstream_code == "content_filter"
    refusal = await registry.chat(_deployment("anthropic", root), request)  # a 200 refusal
    (choice,) = orjson.loads(refusal.body)["choices"]
    assert (choice["finish_reason"], choice["message"]["content"]) == ("content_filter", None)
    with pytest.raises(ProviderBadRequest) as gemini_error:  # a blocked prompt
        await registry.chat(_deployment("gemini", root), request)
    assert gemini_error.value.upstream_code == "content_filter"


async def test_azure_adapter_uses_the_deployment_url_and_api_version(
    mock_root: tuple[str, web.Application], registry: ProviderRegistry
) -> None:
    root, app = mock_root
    azure = Deployment(
        name="mock-azure",
        provider="azure",
        base_url=root,
        model="mock-429-4",  # the Azure deployment name; the mock reads it as a behaviour
        api_key_env="MOCK_KEY",
        api_version="2024-10-21",
    )
    with pytest.raises(ProviderRateLimited) as info:
        await registry.chat(azure, _request("gpt-4o"))
    assert info.value.retry_after_s == 4.0
    reply = await registry.chat(azure.model_copy(update={"model": "mock"}), _request("gpt-4o"))
    assert orjson.loads(reply.body)["choices"][0]["finish_reason"] == "stop"
    assert reply.usage["completion_tokens"] == 8
    assert app[STATS_KEY].by_model == {"mock-429-4": 1, "mock": 1}


# --- the mock's dialects on the wire, for requests the adapters never send --------------


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        (
            "/v1/messages",
            {"model": "mock", "messages": [{"role": "user", "content": "hi"}]},
            400,
            {"type": "invalid_request_error", "message": "max_tokens: Field required"},
        ),
        (
            "/v1/messages",
            {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
            400,
            {"type": "invalid_request_error", "message": "model: Field required"},
        ),
        (
            "/v1beta/models/mock:countTokens",
            {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
            404,
            {
                "code": 404,
                "message": "the mock serves only :generateContent and :streamGenerateContent",
                "status": "NOT_FOUND",
            },
        ),
        (
            "/v1beta/models/mock:streamGenerateContent",  # no alt=sse: Gemini's JSON array
            {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
            400,
            {
                "code": 400,
                "message": "the mock streams only server-sent events: add alt=sse",
                "status": "INVALID_ARGUMENT",
            },
        ),
        (
            "/v1beta/models/mock:generateContent",
            {"contents": []},
            400,
            {
                "code": 400,
                "message": "* GenerateContentRequest.contents: contents is not specified",
                "status": "INVALID_ARGUMENT",
            },
        ),
        (
            "/openai/deployments/mock/chat/completions",
            {"model": "mock", "messages": [{"role": "user", "content": "hi"}]},
            404,
            {
                "message": "Resource not found",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            },
        ),
    ],
)
async def test_mock_refusals_speak_each_dialect(
    mock_root: tuple[str, web.Application],
    path: str,
    body: dict[str, Any],
    status: int,
    error: dict[str, Any],
) -> None:
    root, app = mock_root
    async with aiohttp.ClientSession() as session, session.post(root + path, json=body) as answer:
        assert answer.status == status
        parsed = await answer.json()
    assert parsed["error"] == error
    if "messages" in path:
        assert parsed["type"] == "error"
    assert app[STATS_KEY].by_model == {}  # refused before any behaviour was chosen


async def test_mock_counts_every_dialect_by_model(
    mock_root: tuple[str, web.Application], registry: ProviderRegistry
) -> None:
    root, app = mock_root
    for kind in KINDS:
        await registry.chat(_deployment(kind, root), _request("mock-slow-1"))
    with pytest.raises(ProviderServerError):
        await registry.chat(_deployment("gemini", root), _request("mock-flaky-100"))
    assert app[STATS_KEY].snapshot() == {
        "total": 4,
        "by_status": {"200": 3, "500": 1},
        "by_model": {"mock-flaky-100": 1, "mock-slow-1": 3},
    }


# --- streaming: every dialect's stream through its adapter, chunk by chunk -------------


async def _stream(
    registry: ProviderRegistry, deployment: Deployment, request: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[StreamPiece]]:
    streamed = {**request, "stream": True, "stream_options": {"include_usage": True}}
    pieces = [piece async for piece in registry.chat_stream(deployment, streamed)]
    return [orjson.loads(piece.data) for piece in pieces], pieces


@pytest.mark.parametrize("kind", KINDS)
async def test_streamed_reply_is_the_unstreamed_reply_in_chunks(
    kind: ProviderKind, mock_root: tuple[str, web.Application], registry: ProviderRegistry
) -> None:
    root, app = mock_root
    deployment = _deployment(kind, root)
    whole = orjson.loads((await registry.chat(deployment, _request("mock"))).body)
    chunks, pieces = await _stream(registry, deployment, _request("mock"))
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert len([d for d in deltas if d]) == 8  # one chunk per word, as the mock sends
    assert "".join(d or "" for d in deltas) == whole["choices"][0]["message"]["content"]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == whole["usage"]
    assert pieces[-1].usage is not None
    assert pieces[-1].usage["completion_tokens"] == 8
    assert app[STATS_KEY].by_status == {200: 2}


@pytest.mark.parametrize("kind", KINDS)
async def test_streamed_max_tokens_gives_length(
    kind: ProviderKind, mock_root: tuple[str, web.Application], registry: ProviderRegistry
) -> None:
    root, _ = mock_root
    chunks, pieces = await _stream(
        registry, _deployment(kind, root), _request("mock", max_tokens=3)
    )
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert pieces[-1].usage is not None
    assert pieces[-1].usage["completion_tokens"] == 3


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("model", "cls", "status"),
    [
        ("mock-429-7", ProviderRateLimited, 429),
        ("mock-error-503", ProviderServerError, 503),
        ("mock-context-window", ProviderBadRequest, 400),
    ],
)
async def test_stream_errors_come_before_the_first_chunk(
    kind: ProviderKind,
    model: str,
    cls: type[ProviderError],
    status: int,
    mock_root: tuple[str, web.Application],
    registry: ProviderRegistry,
) -> None:
    """Raised before any piece, so the router can still retry or fail over."""
    root, _ = mock_root
    streamed = {**_request(model), "stream": True}
    with pytest.raises(ProviderError) as info:
        await anext(registry.chat_stream(_deployment(kind, root), streamed))
    assert type(info.value) is cls
    assert info.value.upstream_status == status
    if cls is ProviderBadRequest:
        assert info.value.upstream_code == "context_length_exceeded"
    if isinstance(info.value, ProviderRateLimited):
        assert info.value.retry_after_s == 7.0


async def test_streamed_content_filter_in_each_dialect(
    mock_root: tuple[str, web.Application], registry: ProviderRegistry
) -> None:
    root, _ = mock_root
    request = {**_request("mock-content-filter"), "stream": True}
    for kind in ("openai", "gemini"):  # a 400, and a blocked prompt: before any chunk
        with pytest.raises(ProviderBadRequest) as info:
            await anext(registry.chat_stream(_deployment(kind, root), request))
        assert info.value.upstream_code == "content_filter"
    chunks, _ = await _stream(registry, _deployment("anthropic", root), request)  # a refusal
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]] == [
        None,
        "content_filter",
    ]
