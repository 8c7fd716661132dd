"""Anthropic Messages API surface: POST /v1/messages, so Anthropic SDK clients reach any backend.

    POST /v1/messages   translate to the canonical chat request, publish it through
                        `Ingress.submit` (the same validation, admission and Kafka
                        guarantee as /v1/chat/completions), wait for the reply (or relay
                        the stream) and answer in Anthropic's format

The translations are pure (`anthropic_format.py` for the request, `anthropic_answer.py`
for the answer); this module only moves bytes. Every error, from validation to a
failed result, is an Anthropic error body with the status Tollway chose. The virtual
key comes as `x-api-key` (the SDK's way) or `Authorization: Bearer` (ingress/auth.py);
`anthropic-version` is accepted and not checked.
Wiring: `build_app(..., extra_routes=[anthropic_routes])`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ingress.anthropic_answer import (
    StreamTranslator,
    error_body,
    error_from_openai,
    message_id,
    sse,
    to_message,
)
from ingress.anthropic_format import MESSAGES_ENDPOINT, parse_messages_request, to_chat_request
from ingress.app import (
    REQUEST_ID_HEADER,
    Ingress,
    json_response,
    read_body,
    result_headers,
    stream_cache_header,
)
from ingress.bus import StreamItem
from schemas.errors import DeadlineExceeded, TollwayError
from schemas.records import Result
from workers.cache.canonical import cache_control_metadata

ANTHROPIC_REQUEST_ID_HEADER = "request-id"
"""Anthropic's own request id header; the SDK exposes it as `message._request_id`."""


def anthropic_routes(ingress: Ingress) -> list[BaseRoute]:
    """The routes of the Anthropic surface, for `build_app(extra_routes=...)`."""
    return [Route(MESSAGES_ENDPOINT, MessagesApi(ingress).create, methods=["POST"])]


def _id_headers(request_id: str) -> dict[str, str]:
    return {REQUEST_ID_HEADER: request_id, ANTHROPIC_REQUEST_ID_HEADER: request_id}


def error_response(error: TollwayError, request_id: str | None = None) -> Response:
    headers = error.headers()
    if request_id is not None:
        headers.update(_id_headers(request_id))
    return json_response(
        error_body(error.http_status, error.message, request_id), error.http_status, headers
    )


def result_response(result: Result) -> Response:
    """A finished sync result as a Message, or as an error with the result's status."""
    request_id = result["request_id"]
    headers = {**_id_headers(request_id), **result_headers(result)}
    if result["status"] == "failed":
        body = error_from_openai(result["body"], result["http_status"], request_id)
        return json_response(body, result["http_status"], headers)
    try:
        message = to_message(
            orjson.loads(result["body"]),
            message_id=message_id(request_id),
            cache_write_tokens=result["cache_write_tokens"],
        )
    except TollwayError as exc:
        return error_response(exc, request_id)
    return json_response(message, 200, headers)


class MessagesApi:
    """POST /v1/messages over the shared `Ingress`."""

    def __init__(self, ingress: Ingress) -> None:
        self.ingress = ingress

    async def create(self, request: Request) -> Response:
        headers: dict[str, str] = {}  # from admission: x-tollway-budget-warning (soft budget)
        try:
            body = await read_body(request, self.ingress.settings.max_body_bytes)
            principal, context = self.ingress.identify(request)
            chat = to_chat_request(parse_messages_request(body))
            request_id, waiter = await self.ingress.submit(
                orjson.dumps(chat),
                "sync",
                principal=principal,
                context=context,
                endpoint=MESSAGES_ENDPOINT,
                # Cache-Control: no-cache / no-store, as on /v1/chat/completions (0017).
                extra_metadata=cache_control_metadata(request.headers.get("cache-control")),
                response_headers=headers,
            )
        except TollwayError as exc:
            return error_response(exc)
        if isinstance(waiter, asyncio.Queue):
            response = await self._stream(request_id, chat["model"], waiter)
        else:
            try:
                result = await self.ingress.wait(request_id, waiter)
            except TollwayError as exc:
                response = error_response(exc, request_id)
            else:
                response = result_response(result)
        response.headers.update(headers)
        return response

    async def _stream(
        self, request_id: str, model: str, queue: asyncio.Queue[StreamItem]
    ) -> Response:
        """Anthropic stream events from the relayed chunks, with `Ingress._stream`'s rules:
        the first item decides the status line (a failure before any chunk is a plain
        error response), chunks of another execution are dropped, and a later failure or
        the deadline is an in-stream `error` event."""
        bus = self.ingress.bus
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ingress.settings.sync_timeout_s

        async def next_item() -> StreamItem:
            async with asyncio.timeout_at(deadline):
                return await queue.get()

        try:
            first = await next_item()
        except TimeoutError:
            bus.forget_reply(request_id)
            return error_response(DeadlineExceeded("No first chunk in time."), request_id)
        if "seq" not in first:
            bus.forget_reply(request_id)
            return result_response(first)
        execution_id = first["execution_id"]
        translator = StreamTranslator(message_id(request_id), model)

        async def events() -> AsyncIterator[bytes]:
            item: Any = first
            try:
                while "seq" in item:
                    if item["execution_id"] == execution_id:
                        for event in translator.feed(orjson.loads(item["data"])):
                            yield sse(event)
                    item = await next_item()
                if item["status"] == "failed":
                    failure = error_from_openai(item["body"], item["http_status"], request_id)
                    yield sse(failure)
                    return
                for event in translator.finish(item["cache_write_tokens"]):
                    yield sse(event)
            except TimeoutError:
                timeout = DeadlineExceeded("The stream did not finish in time.")
                yield sse(error_body(timeout.http_status, timeout.message, request_id))
            finally:
                bus.forget_reply(request_id)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={
                **_id_headers(request_id),
                "cache-control": "no-cache",
                **stream_cache_header(first),
            },
        )
