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
from workers.providers.http import HttpClient
from workers.providers.openai import error_from_response, usage_from_openai
from workers.providers.sse import SSEParser
from workers.providers.transport import map_transport_errors


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
    with map_transport_errors(deployment):
        async with client.stream_post(
            url,
            content=orjson.dumps(payload),
            headers={"content-type": "application/json", **headers},
            params=params,
            timeout_s=deployment.timeout_s,
        ) as response:
            if response.status_code >= 300:
                content = await response.aread()
                raise error_from_response(
                    deployment, response.status_code, response.headers, content
                )
            parser = SSEParser()
            async for raw in response.aiter_raw():
                for data in _events(deployment, parser, raw):
                    yield data
            for data in _close(deployment, parser):
                yield data


def _events(deployment: Deployment, parser: SSEParser, raw: bytes) -> list[StreamPiece]:
    try:
        events = parser.feed(raw)
    except ValueError as exc:
        raise ProviderServerError(f"{deployment.name}: {exc}") from exc
    return [piece for data in events if (piece := _piece(deployment, data)) is not None]


def _close(deployment: Deployment, parser: SSEParser) -> list[StreamPiece]:
    return [piece for data in parser.close() if (piece := _piece(deployment, data)) is not None]


def _piece(deployment: Deployment, data: bytes) -> StreamPiece | None:
    if data == b"[DONE]":
        return None
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProviderServerError(f"{deployment.name}: a stream chunk is not JSON") from exc
    if not isinstance(chunk, dict):
        raise ProviderServerError(f"{deployment.name}: a stream chunk is not an object")
    if "error" in chunk:
        raise ProviderServerError(f"{deployment.name}: the stream reported an error")
    usage = usage_from_openai(chunk["usage"]) if isinstance(chunk.get("usage"), dict) else None
    return StreamPiece(data=data, usage=usage)
