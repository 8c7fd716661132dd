"""Streaming from an OpenAI-format endpoint (OpenAI, Azure, every compatible server).

Yields each `chat.completion.chunk` as a `StreamPiece`, untouched (the canonical
shape is this wire format), with the usage parsed from the chunk that carries
it. A non-2xx answer raises the same errors as a plain call, before any piece,
so the plan can still fail over; a broken stream raises a `ProviderError` that
the router turns into `StreamBroken` once chunks were relayed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from schemas.errors import ProviderServerError
from schemas.routes import Deployment
from workers.providers.base import StreamPiece
from workers.providers.event_stream import stream_sse
from workers.providers.http import HttpClient
from workers.providers.openai import error_from_response, usage_from_openai


async def stream_chat_completion(
    client: HttpClient,
    deployment: Deployment,
    request: Mapping[str, Any],
    *,
    url: str,
    headers: Mapping[str, str],
    params: Mapping[str, str] | None = None,
) -> AsyncIterator[StreamPiece]:
    payload = {**request, "model": deployment.model or request["model"], "stream": True}
    async for piece in stream_sse(
        client,
        deployment,
        url=url,
        headers=headers,
        payload=payload,
        pieces=lambda data: _pieces(deployment, data),
        error_from_response=error_from_response,
        params=params,
    ):
        yield piece


def _pieces(deployment: Deployment, data: bytes) -> list[StreamPiece]:
    """The chunk in one SSE event's data, untouched (none for the `[DONE]` sentinel)."""
    if data == b"[DONE]":
        return []
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProviderServerError(f"{deployment.name}: a stream chunk is not JSON") from exc
    if not isinstance(chunk, dict):
        raise ProviderServerError(f"{deployment.name}: a stream chunk is not an object")
    if "error" in chunk:
        raise ProviderServerError(f"{deployment.name}: the stream reported an error")
    usage = usage_from_openai(chunk["usage"]) if isinstance(chunk.get("usage"), dict) else None
    return [StreamPiece(data=data, usage=usage)]
