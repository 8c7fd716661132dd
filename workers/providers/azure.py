"""Azure OpenAI adapter: the OpenAI wire format at Azure's deployment URLs.

POST {base_url}/openai/deployments/{model}/chat/completions?api-version={api_version}
with an `api-key` header. `Deployment.model` is the Azure deployment name
(defaulting to the requested model name) and `api_version` is required for azure
deployments. Request, answer, usage and error mapping are the OpenAI adapter's
(`openai.post_chat_completion`): Azure's content-filter refusal is a 400 with code
`content_filter`, kept as the ProviderBadRequest's code; its 429s carry
Retry-After (and retry-after-ms), both honoured.

Embeddings (`embed`): POST {base_url}/openai/deployments/{model}/embeddings with the
same api-version and key; body and answer as in `openai.post_embeddings`.

Azure's newer `/openai/v1/` path needs no api-version: point an `openai`
deployment at it instead. Entra ID (bearer token) authentication is not covered.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from typing import Any

from schemas.errors import ProviderError
from schemas.routes import Deployment
from workers.providers.base import ProviderReply, StreamPiece
from workers.providers.http import HttpClient
from workers.providers.openai import post_chat_completion, post_embeddings
from workers.providers.openai_stream import stream_chat_completion
from workers.providers.transport import api_key


class AzureOpenAIProvider:
    """`ChatProvider` for Azure OpenAI over the caller's pooled client."""

    def __init__(self, *, client: HttpClient, environ: Mapping[str, str] = os.environ) -> None:
        self._client = client
        self._environ = environ

    def _target(
        self, deployment: Deployment, request: dict[str, Any], operation: str = "chat/completions"
    ) -> tuple[str, dict[str, str], dict[str, str]]:
        if deployment.api_version is None:  # routes validation makes this unreachable
            raise ProviderError(f"{deployment.name}: an azure deployment needs api_version")
        azure_deployment = urllib.parse.quote(str(deployment.model or request["model"]), safe="")
        key = api_key(deployment, self._environ)
        url = f"{deployment.base_url.rstrip('/')}/openai/deployments/{azure_deployment}/{operation}"
        return url, ({"api-key": key} if key else {}), {"api-version": deployment.api_version}

    async def chat(self, deployment: Deployment, request: dict[str, Any]) -> ProviderReply:
        url, headers, params = self._target(deployment, request)
        return await post_chat_completion(
            self._client, deployment, request, url=url, headers=headers, params=params
        )

    async def chat_stream(
        self, deployment: Deployment, request: dict[str, Any]
    ) -> AsyncIterator[StreamPiece]:
        url, headers, params = self._target(deployment, request)
        async for piece in stream_chat_completion(
            self._client, deployment, request, url=url, headers=headers, params=params
        ):
            yield piece

    async def embed(self, deployment: Deployment, request: dict[str, Any]) -> ProviderReply:
        url, headers, params = self._target(deployment, request, "embeddings")
        return await post_embeddings(
            self._client, deployment, request, url=url, headers=headers, params=params
        )

    async def aclose(self) -> None:
        """The client belongs to the caller (the registry), which closes it."""
