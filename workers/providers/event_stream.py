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

`stream_sse` is the HTTP half alone (POST, status check, SSE parsing), shared with
openai_stream.py, whose chunks need no translation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
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


class TranslatorType(Protocol):
    """The constructor the chat stream translators share (anthropic_stream, gemini_stream)."""

    def __call__(
        self, *, source: str, requested_model: str, created_s: int, include_usage: bool
    ) -> EventTranslator: ...


async def stream_chat_translated(
    client: HttpClient,
    deployment: Deployment,
    request: Mapping[str, Any],
    *,
    translator_type: TranslatorType,
    upstream_model: str,
    created_s: int,
    url: str,
    headers: Mapping[str, str],
    payload: object,
    error_from_response: ErrorFromResponse,
    params: Mapping[str, str] | None = None,
) -> AsyncIterator[StreamPiece]:
    """`stream_translated` for a canonical chat request, with a fresh translator.

    The translator names the deployment as the error source, reports `upstream_model`
    and `created_s` (epoch s) in its chunks, and ends with a usage chunk only when the
    client asked (`stream_options.include_usage`), as OpenAI does.
    """
    options = request.get("stream_options") or {}
    translator = translator_type(
        source=deployment.name,
        requested_model=upstream_model,
        created_s=created_s,
        include_usage=bool(options.get("include_usage")),
    )
    async for piece in stream_translated(
        client,
        deployment,
        url=url,
        headers=headers,
        payload=payload,
        translator=translator,
        error_from_response=error_from_response,
        params=params,
    ):
        yield piece


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
    async for piece in stream_sse(
        client,
        deployment,
        url=url,
        headers=headers,
        payload=payload,
        pieces=lambda data: translator.feed(_json_event(deployment, data)),
        error_from_response=error_from_response,
        params=params,
    ):
        yield piece
    for piece in translator.close():
        yield piece


async def stream_sse(
    client: HttpClient,
    deployment: Deployment,
    *,
    url: str,
    headers: Mapping[str, str],
    payload: object,
    pieces: Callable[[bytes], Iterable[StreamPiece]],
    error_from_response: ErrorFromResponse,
    params: Mapping[str, str] | None = None,
) -> AsyncIterator[StreamPiece]:
    """POST `payload` as JSON and yield `pieces(data)` for each SSE event's data.

    The one HTTP path of every streamed call (this module's translated streams and
    openai_stream.py's untouched chunks). `pieces` runs inside this generator, so an
    error it raises closes the response at once. A non-2xx answer raises
    `error_from_response` before any piece; transport failures are mapped by
    `map_transport_errors`; SSE that cannot be parsed is a ProviderServerError.
    """
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
                    for piece in pieces(data):
                        yield piece
            for data in parser.close():
                for piece in pieces(data):
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
