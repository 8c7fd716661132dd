"""workers/providers/registry.py: dispatch by `Deployment.provider` over one client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import httpx
import orjson
import pytest

from schemas.errors import ProviderError
from schemas.records import ZERO_USAGE
from schemas.routes import Deployment, ProviderKind
from workers.providers.base import ChatProvider, ProviderReply, StreamPiece
from workers.providers.http import HttpxClient
from workers.providers.openai import OpenAIProvider
from workers.providers.registry import ProviderRegistry, build_registry

REQUEST: Final[dict[str, Any]] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
DEPLOYMENTS: Final[dict[ProviderKind, Deployment]] = {
    "openai": Deployment(name="o", provider="openai", base_url="http://o.test/v1"),
    "anthropic": Deployment(name="a", provider="anthropic", base_url="http://a.test"),
    "gemini": Deployment(name="g", provider="gemini", base_url="http://g.test"),
    "azure": Deployment(name="z", provider="azure", base_url="http://z.test", api_version="v"),
}
ANSWERS: Final[dict[str, dict[str, Any]]] = {
    "o.test": {"choices": [], "model": "m"},
    "z.test": {"choices": [], "model": "m"},
    "a.test": {"type": "message", "content": [], "stop_reason": "end_turn", "usage": {}},
    "g.test": {"candidates": [{"content": {"parts": [{"text": "x"}]}}]},
}


class RecordingTransport(httpx.MockTransport):
    """Answers each host in its own dialect and remembers being closed."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.closed = False
        super().__init__(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(str(request.url))
        return httpx.Response(200, json=ANSWERS[request.url.host])

    async def aclose(self) -> None:
        self.closed = True


async def test_build_registry_dispatches_every_kind_over_one_client() -> None:
    transport = RecordingTransport()
    registry = build_registry({}, transport=transport)
    for deployment in DEPLOYMENTS.values():
        reply = await registry.chat(deployment, REQUEST)
        assert "choices" in orjson.loads(reply.body)
    assert transport.urls == [
        "http://o.test/v1/chat/completions",
        "http://a.test/v1/messages",
        "http://g.test/v1beta/models/m:generateContent",
        "http://z.test/openai/deployments/m/chat/completions?api-version=v",
    ]
    assert not transport.closed
    await registry.aclose()
    assert transport.closed


class FakeAdapter:
    def __init__(self, label: str) -> None:
        self.label = label
        self.calls: list[str] = []
        self.closed = False

    async def chat(self, deployment: Deployment, request: dict[str, Any]) -> ProviderReply:
        self.calls.append(deployment.name)
        return ProviderReply(body=self.label.encode(), usage=ZERO_USAGE.copy(), served_model="m")

    async def aclose(self) -> None:
        self.closed = True


async def test_registry_routes_each_call_to_its_kind_and_closes_every_adapter() -> None:
    openai, gemini = FakeAdapter("openai"), FakeAdapter("gemini")
    adapters: dict[ProviderKind, ChatProvider] = {"openai": openai, "gemini": gemini}
    registry = ProviderRegistry(adapters)
    assert (await registry.chat(DEPLOYMENTS["gemini"], REQUEST)).body == b"gemini"
    assert (await registry.chat(DEPLOYMENTS["openai"], REQUEST)).body == b"openai"
    assert (openai.calls, gemini.calls) == (["o"], ["g"])
    with pytest.raises(ProviderError) as info:
        await registry.chat(DEPLOYMENTS["anthropic"], REQUEST)
    assert type(info.value) is ProviderError  # not the request's fault: fail over
    assert not info.value.retriable
    await registry.aclose()
    assert openai.closed
    assert gemini.closed


async def test_an_openai_provider_leaves_a_borrowed_client_open() -> None:
    async with httpx.AsyncClient(transport=RecordingTransport()) as raw_client:
        client = HttpxClient(raw_client)
        await OpenAIProvider(client=client).aclose()
        assert not raw_client.is_closed


class StreamingFake(FakeAdapter):
    async def chat_stream(
        self, deployment: Deployment, request: dict[str, Any]
    ) -> AsyncIterator[StreamPiece]:
        self.calls.append(f"stream:{deployment.name}")
        for word in (b"a", b"b"):
            yield StreamPiece(word)


async def test_chat_stream_uses_the_adapters_stream_or_one_piece() -> None:
    streaming = StreamingFake("openai")
    whole = FakeAdapter(
        orjson.dumps(
            {
                "id": "msg_1",
                "object": "chat.completion",
                "model": "claude",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hi"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1},
            }
        ).decode()
    )
    registry = ProviderRegistry({"openai": streaming, "anthropic": whole})
    pieces = [p.data async for p in registry.chat_stream(DEPLOYMENTS["openai"], REQUEST)]
    assert (pieces, streaming.calls) == ([b"a", b"b"], ["stream:o"])
    (piece,) = [p async for p in registry.chat_stream(DEPLOYMENTS["anthropic"], REQUEST)]
    assert piece.usage == ZERO_USAGE
    chunk = orjson.loads(piece.data)
    assert chunk["object"] == "chat.completion.chunk"
    assert chunk["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": "hi"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert chunk["usage"] == {"prompt_tokens": 3, "completion_tokens": 1}
    with pytest.raises(ProviderError):
        [p async for p in registry.chat_stream(DEPLOYMENTS["gemini"], REQUEST)]
