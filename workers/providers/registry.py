"""One `ChatProvider` that dispatches each call to the adapter of its deployment's kind.

The router holds a single provider; routes mix OpenAI, Anthropic, Gemini and Azure
deployments. `build_registry` builds one adapter per `ProviderKind` over ONE pooled
httpx client (aiohttp transport), so every upstream shares the connection pool and
`aclose` releases it once.

The registry is a `StreamingChatProvider`: `chat_stream` uses the adapter's own
`chat_stream` when it has one, and otherwise relays the adapter's whole answer as
one chunk, so a streamed request can fail over to a provider that cannot stream.

`embed` dispatches an embeddings request to the deployment kind's embedder: the
OpenAI and Azure adapters themselves, and `GeminiEmbeddingProvider` for Gemini
(`schemas.routes.EMBEDDING_PROVIDERS`; Anthropic has no embeddings API, and the
router plans embeddings over those kinds only).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import httpx

from schemas.errors import ProviderError
from schemas.routes import Deployment, ProviderKind
from workers.providers import canonical
from workers.providers.anthropic import AnthropicProvider
from workers.providers.azure import AzureOpenAIProvider
from workers.providers.base import ChatProvider, EmbeddingProvider, ProviderReply, StreamPiece
from workers.providers.gemini import GeminiProvider
from workers.providers.gemini_embeddings import GeminiEmbeddingProvider
from workers.providers.http import HttpClient
from workers.providers.openai import OpenAIProvider
from workers.providers.transport import DEFAULT_MAX_CONNECTIONS, build_client


@runtime_checkable
class _Embedder(EmbeddingProvider, Protocol):
    """For the isinstance check: an adapter that also embeds."""


class ProviderRegistry:
    """`ChatProvider` dispatching on `deployment.provider`.

    `client`, when given, is closed by `aclose` after every adapter's own `aclose`.
    `embedders` serve `embed` per kind (default: the adapters that have `embed`).
    """

    def __init__(
        self,
        adapters: Mapping[ProviderKind, ChatProvider],
        *,
        client: HttpClient | None = None,
        embedders: Mapping[ProviderKind, EmbeddingProvider] | None = None,
    ) -> None:
        self._adapters = dict(adapters)
        self._client = client
        self.embedders: dict[ProviderKind, EmbeddingProvider] = (
            dict(embedders)
            if embedders is not None
            else {
                kind: adapter
                for kind, adapter in self._adapters.items()
                if isinstance(adapter, _Embedder)
            }
        )

    async def chat(self, deployment: Deployment, request: dict[str, Any]) -> ProviderReply:
        return await self._adapter(deployment).chat(deployment, request)

    async def chat_stream(
        self, deployment: Deployment, request: dict[str, Any]
    ) -> AsyncIterator[StreamPiece]:
        adapter = self._adapter(deployment)
        stream: Callable[..., AsyncIterator[StreamPiece]] | None = getattr(
            adapter, "chat_stream", None
        )
        if stream is not None:
            async for piece in stream(deployment, request):
                yield piece
            return
        reply = await adapter.chat(deployment, {**request, "stream": False})
        yield StreamPiece(canonical.completion_as_chunk(reply.body), reply.usage)

    async def embed(self, deployment: Deployment, request: dict[str, Any]) -> ProviderReply:
        embedder = self.embedders.get(deployment.provider)
        if embedder is None:
            # The router plans embeddings over EMBEDDING_PROVIDERS only: a configuration gap.
            raise ProviderError(f"{deployment.name}: no embeddings for {deployment.provider}")
        return await embedder.embed(deployment, request)

    def _adapter(self, deployment: Deployment) -> ChatProvider:
        adapter = self._adapters.get(deployment.provider)
        if adapter is None:
            # A configuration gap, not the request's fault: another deployment may serve.
            raise ProviderError(f"{deployment.name}: no adapter for {deployment.provider}")
        return adapter

    async def aclose(self) -> None:
        for adapter in self._adapters.values():
            await adapter.aclose()
        if self._client is not None:
            await self._client.aclose()


def build_registry(
    environ: Mapping[str, str] = os.environ,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ProviderRegistry:
    """Every adapter over one pooled client; `transport` replaces aiohttp in tests.

    API keys are read from `environ` at call time, by the variable each deployment
    names (`Deployment.api_key_env`).
    """
    client = build_client(max_connections=max_connections, transport=transport)
    openai = OpenAIProvider(client=client, environ=environ)
    azure = AzureOpenAIProvider(client=client, environ=environ)
    adapters: dict[ProviderKind, ChatProvider] = {
        "openai": openai,
        "anthropic": AnthropicProvider(client=client, environ=environ),
        "gemini": GeminiProvider(client=client, environ=environ),
        "azure": azure,
    }
    embedders: dict[ProviderKind, EmbeddingProvider] = {
        "openai": openai,
        "azure": azure,
        "gemini": GeminiEmbeddingProvider(client=client, environ=environ),
    }
    return ProviderRegistry(adapters, client=client, embedders=embedders)
