"""The protocols provider adapters implement.

Adapters translate the canonical OpenAI request (a dict, as validated by the
ingress: Chat Completions, or Embeddings for `EmbeddingProvider`) into their wire
format, call the provider, and translate the answer back. Failures are raised as
`schemas.errors.ProviderError` subclasses; nothing above this layer sees a vendor
or transport exception.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from schemas.records import Usage
from schemas.routes import Deployment


@dataclass(frozen=True, slots=True)
class ProviderReply:
    """A successful provider call, already in the canonical shape.

    `body` is the OpenAI answer JSON as bytes (a chat.completion, or an embeddings
    list), ready to hand to the client; `usage` is what the provider reported
    (zeros when it reported none; an embeddings call has prompt tokens only).
    """

    body: bytes
    usage: Usage
    served_model: str


@dataclass(frozen=True, slots=True)
class StreamPiece:
    """One streamed chunk in the canonical shape: `chat.completion.chunk` JSON bytes.

    `usage` is set on the chunk that carried the usage (OpenAI sends it last, with
    empty `choices`, when `stream_options.include_usage` is true).
    """

    data: bytes
    usage: Usage | None = None


class ChatProvider(Protocol):
    """Calls one deployment with a canonical chat request."""

    async def chat(self, deployment: Deployment, request: dict[str, Any]) -> ProviderReply:
        """Raise a `ProviderError` subclass on any failure."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class StreamingChatProvider(ChatProvider, Protocol):
    """A provider that can also stream (the router's provider is one)."""

    def chat_stream(
        self, deployment: Deployment, request: dict[str, Any]
    ) -> AsyncIterator[StreamPiece]:
        """Stream a chat; a `ProviderError` before the first piece allows fallback."""
        ...


class EmbeddingProvider(Protocol):
    """Calls one deployment with a canonical embeddings request (`EmbeddingsRequest`)."""

    async def embed(self, deployment: Deployment, request: dict[str, Any]) -> ProviderReply:
        """The OpenAI embeddings list for `request`, in the `encoding_format` it asked
        for; raise a `ProviderError` subclass on any failure."""
        ...
