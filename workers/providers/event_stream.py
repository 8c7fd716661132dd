"""The HTTP side of a translated stream (Anthropic, Gemini): POST, check, parse, translate.

`stream_translated` sends the provider's streaming request, and:

    non-2xx answer              -> the adapter's own `error_from_response`, raised
                                   before any piece: the plan may retry or fail over
    each network chunk          -> SSE events (sse.py) -> JSON objects -> the pure
                                   translator's pieces, yielded as soon as they exist
                                   (nothing is buffered beyond the current SSE event)
    end of the body             -> the translator's `close` (its final pieces, or a
                                   ProviderServerError for a stream cut short)
    transport failure           -> `map_transport_errors` (ProviderTimeout, ...)
    an event that is not a JSON object -> ProviderServerError

The router relays each piece as it comes and turns an error raised after the first
relayed piece into `StreamBroken` (workers/router/execution.py, StreamRelay).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

import orjson

from schemas.errors import ProviderError, ProviderServerError
from schemas.routes import Deployment
from workers.providers.base import StreamPiece
from workers.providers.http import HttpClient
from workers.providers.sse import SSEParser
from workers.providers.transport import map_transport_errors

ErrorFromResponse = Callable[[Deployment, int, Mapping[str, str], bytes], ProviderError]


class EventTranslator(Protocol):
    """A pure translator of one provider's stream events into canonical pieces."""

    def feed(self, event: Mapping[str, Any]) -> list[StreamPiece]: ...

    def close(self) -> list[StreamPiece]: ...


async def stream_translated(
    client: HttpClient,
    deployment: Deployment,
    *,
    url: str,
    headers: Mapping[str, str],
    payload: object,
    translator: EventTranslator,
    error_from_response: ErrorFromResponse,
    params: Mapping[str, str] | None = None,
) -> AsyncIterator[StreamPiece]:
    """The canonical pieces of one streamed call, yielded as the provider sends them."""
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
                    for piece in translator.feed(_json_event(deployment, data)):
                        yield piece
            for data in parser.close():
                for piece in translator.feed(_json_event(deployment, data)):
                    yield piece
            for piece in translator.close():
                yield piece


def _events(deployment: Deployment, parser: SSEParser, raw: bytes) -> list[bytes]:
    try:
        return parser.feed(raw)
    except ValueError as exc:
        raise ProviderServerError(f"{deployment.name}: {exc}") from exc


def _json_event(deployment: Deployment, data: bytes) -> dict[str, Any]:
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProviderServerError(f"{deployment.name}: a stream event is not JSON") from exc
    if not isinstance(event, dict):
        raise ProviderServerError(f"{deployment.name}: a stream event is not an object")
    return event
