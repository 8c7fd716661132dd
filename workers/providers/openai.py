"""OpenAI Chat Completions adapter (also every OpenAI-compatible server by base URL).

The request goes out as the client sent it (only `model` becomes the deployment's
upstream model) and the answer's bytes come back untouched: the canonical shape IS
this wire format. `post_chat_completion` is the one request/response path for
every OpenAI-format endpoint; `azure.py` reuses it with its own URL and header.

Errors are mapped at the edge by `transport.py` (the table is in its docstring);
here only the vendor's error `code` is read. A 2xx that is not a usable chat
completion (undecodable, not JSON, malformed usage) is a ProviderServerError.

Embeddings (`embed`, `post_embeddings`): POST {base_url}/embeddings with the client's
body (only `model` replaced); the answer's bytes go back untouched, so base64
vectors stay base64. Usage is `prompt_tokens` (no completion); an answer without a
`data` list is a ProviderServerError.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from typing import Any

import httpx

from schemas.errors import ProviderError, ProviderServerError
from schemas.records import ZERO_USAGE, Usage
from schemas.routes import Deployment
from workers.providers.base import ProviderReply, StreamPiece
from workers.providers.http import HttpClient
from workers.providers.transport import (
    DEFAULT_MAX_CONNECTIONS,
    api_key,
    build_client,
    error_for_status,
    error_object,
    json_object,
    post_json,
    token_count,
)


def error_from_response(
    deployment: Deployment, status: int, headers: Mapping[str, str], content: bytes
) -> ProviderError:
    """The `ProviderError` for a non-2xx OpenAI-format answer (`error.code` kept)."""
    raw_code = error_object(content).get("code")
    code = str(raw_code) if raw_code is not None else None
    return error_for_status(deployment, status, headers, code)


def usage_from_openai(usage: Any) -> Usage:
    """Usage from an OpenAI `usage` object; missing parts count as zero."""
    if not isinstance(usage, dict):
        return ZERO_USAGE.copy()
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return {
        "prompt_tokens": token_count(usage.get("prompt_tokens")),
        "completion_tokens": token_count(usage.get("completion_tokens")),
        "cached_tokens": token_count(prompt_details.get("cached_tokens")),
        "reasoning_tokens": token_count(completion_details.get("reasoning_tokens")),
        "cache_write_tokens": 0,  # OpenAI caches implicitly and bills no cache writes
    }


async def post_chat_completion(
    client: HttpClient,
    deployment: Deployment,
    request: Mapping[str, Any],
    *,
    url: str,
    headers: Mapping[str, str],
    params: Mapping[str, str] | None = None,
) -> ProviderReply:
    """Send a canonical request to an OpenAI-format endpoint and check the answer."""
    return await _post_openai_format(
        client,
        deployment,
        request,
        url=url,
        headers=headers,
        params=params,
        is_answer=lambda parsed: "choices" in parsed,
        not_answer="a chat completion",
    )


async def post_embeddings(
    client: HttpClient,
    deployment: Deployment,
    request: Mapping[str, Any],
    *,
    url: str,
    headers: Mapping[str, str],
    params: Mapping[str, str] | None = None,
) -> ProviderReply:
    """Send a canonical embeddings request to an OpenAI-format endpoint; check the answer."""
    reply = await _post_openai_format(
        client,
        deployment,
        request,
        url=url,
        headers=headers,
        params=params,
        is_answer=lambda parsed: isinstance(parsed.get("data"), list),
        not_answer="an embeddings list",
    )
    usage: Usage = {**reply.usage, "completion_tokens": 0, "reasoning_tokens": 0}
    return replace(reply, usage=usage)


async def _post_openai_format(
    client: HttpClient,
    deployment: Deployment,
    request: Mapping[str, Any],
    *,
    url: str,
    headers: Mapping[str, str],
    params: Mapping[str, str] | None,
    is_answer: Callable[[dict[str, Any]], bool],
    not_answer: str,
) -> ProviderReply:
    """POST the client's body (only `model` replaced) and keep the answer's bytes.

    A non-2xx is `error_from_response`; a 2xx that is not JSON, fails `is_answer`
    ("answer is not {not_answer}") or has malformed usage is a ProviderServerError.
    """
    upstream_model = deployment.model or request["model"]
    payload = dict(request, model=upstream_model)
    response = await post_json(
        client, deployment, url, headers=headers, payload=payload, params=params
    )
    if response.status_code >= 300:
        raise error_from_response(
            deployment, response.status_code, response.headers, response.content
        )
    parsed = json_object(deployment, response.content)
    if not is_answer(parsed):
        raise ProviderServerError(f"{deployment.name}: answer is not {not_answer}")
    try:
        usage = usage_from_openai(parsed.get("usage"))
    except (TypeError, ValueError, AttributeError) as exc:
        raise ProviderServerError(f"{deployment.name}: answer has malformed usage") from exc
    return ProviderReply(
        body=response.content,
        usage=usage,
        served_model=str(parsed.get("model") or upstream_model),
    )


class OpenAIProvider:
    """`ChatProvider` for the OpenAI wire format.

    Without `client` it builds and owns one pooled client (closed by `aclose`); with
    `client` it borrows the caller's (the registry's), and `aclose` leaves it open.
    """

    def __init__(
        self,
        *,
        environ: Mapping[str, str] = os.environ,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        transport: httpx.AsyncBaseTransport | None = None,
        client: HttpClient | None = None,
    ) -> None:
        self._owns_client = client is None
        self._client = client or build_client(max_connections=max_connections, transport=transport)
        self._environ = environ

    def _target(self, deployment: Deployment) -> tuple[str, dict[str, str]]:
        key = api_key(deployment, self._environ)
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return deployment.base_url.rstrip("/") + "/chat/completions", headers

    async def chat(self, deployment: Deployment, request: dict[str, Any]) -> ProviderReply:
        url, headers = self._target(deployment)
        return await post_chat_completion(
            self._client, deployment, request, url=url, headers=headers
        )

    def chat_stream(
        self, deployment: Deployment, request: dict[str, Any]
    ) -> AsyncIterator[StreamPiece]:
        # openai_stream imports this module (error and usage parsing): import here.
        from workers.providers.openai_stream import stream_chat_completion

        url, headers = self._target(deployment)
        return stream_chat_completion(self._client, deployment, request, url=url, headers=headers)

    async def embed(self, deployment: Deployment, request: dict[str, Any]) -> ProviderReply:
        url = deployment.base_url.rstrip("/") + "/embeddings"
        _, headers = self._target(deployment)
        return await post_embeddings(self._client, deployment, request, url=url, headers=headers)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
