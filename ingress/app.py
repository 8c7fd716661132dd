"""The ingress ASGI app: authenticate, validate, admit, publish; answer sync or async.

    POST /v1/chat/completions         publish, wait for the reply (sync), answer OpenAI JSON
    POST /v1/async/chat/completions   publish, answer 202 {id} once Kafka acknowledged it
    GET  /v1/async/requests/{id}      queued | succeeded | failed, with the result
    GET  /v1/models                   the routing table's public model names
    GET  /healthz, /readyz            alive; ready = Kafka reachable and result index caught up

Handlers are thin: validation is `admission.py`, transport is a `Bus`. A 2xx
or 202 is sent only after the record is acknowledged by Kafka (acks=all); if
Kafka cannot take it the answer is 503 and nothing was accepted. Every error is
an OpenAI error body. Tenancy arrives with virtual keys; until then every
caller belongs to the team `default`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingress.admission import build_envelope, parse_chat_request
from ingress.bus import Bus, wait_reply
from ingress.ids import new_request_id, verify_request_id
from ingress.settings import IngressSettings
from schemas import topics
from schemas.errors import BodyTooLarge, NotFound, ServiceUnavailable, TollwayError
from schemas.records import Mode, Result
from schemas.routes import RoutesConfig

DEFAULT_TEAM = "default"
REQUEST_ID_HEADER = "x-tollway-request-id"


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def error_response(error: TollwayError, request_id: str | None = None) -> Response:
    headers = error.headers()
    if request_id is not None:
        headers[REQUEST_ID_HEADER] = request_id
    return json_response(error.to_body(), error.http_status, headers)


def result_response(result: Result) -> Response:
    headers = {
        REQUEST_ID_HEADER: result["request_id"],
        "x-tollway-attempts": str(result["attempts"]),
    }
    if result["deployment"]:
        headers["x-tollway-deployment"] = result["deployment"]
    return Response(result["body"], result["http_status"], headers, media_type="application/json")


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The body, refusing (413) as soon as it exceeds `limit_bytes`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise BodyTooLarge(f"The request body exceeds the limit of {limit_bytes} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise BodyTooLarge(f"The request body exceeds the limit of {limit_bytes} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Ingress:
    """The handlers, closed over their collaborators (no globals)."""

    def __init__(
        self, settings: IngressSettings, routes: RoutesConfig, bus: Bus, ingress_id: str
    ) -> None:
        self.settings = settings
        self.routes = routes
        self.bus = bus
        self.ingress_id = ingress_id
        self._secret = settings.id_secret.get_secret_value().encode()

    async def _accept(self, request: Request, mode: Mode) -> tuple[str, Any]:
        """Validate and publish; returns (request_id, reply future or None)."""
        body = await read_body(request, self.settings.max_body_bytes)
        chat = parse_chat_request(body, self.routes)
        team_id = DEFAULT_TEAM
        request_id = new_request_id(self._secret, team_id)
        received = now_ms()
        deadline = received + int(self.settings.sync_timeout_s * 1000)
        envelope = build_envelope(
            request_id=request_id,
            team_id=team_id,
            key_id=None,
            mode=mode,
            model=chat.model,
            body=body,
            now_ms=received,
            deadline_ms=deadline,
            ingress_id=self.ingress_id,
            reply_partition=self.bus.reply_partition if mode == "sync" else None,
            metadata=chat.metadata,
        )
        future = self.bus.expect_reply(request_id) if mode == "sync" else None
        try:
            await self.bus.publish(topics.REQUESTS_INTERACTIVE.name, envelope)
        except BaseException:
            self.bus.forget_reply(request_id)
            raise
        return request_id, future

    async def chat_completions(self, request: Request) -> Response:
        request_id, future = await self._accept(request, "sync")
        try:
            result = await wait_reply(self.bus, future, request_id, self.settings.sync_timeout_s)
        except TollwayError as exc:
            return error_response(exc, request_id)
        return result_response(result)

    async def async_chat_completions(self, request: Request) -> Response:
        request_id, _ = await self._accept(request, "async")
        return json_response(
            {"id": request_id, "object": "async.request", "status": "queued"},
            202,
            {REQUEST_ID_HEADER: request_id, "location": f"/v1/async/requests/{request_id}"},
        )

    async def get_async_request(self, request: Request) -> Response:
        request_id = request.path_params["request_id"]
        if not verify_request_id(self._secret, DEFAULT_TEAM, request_id):
            raise NotFound(f"No request with id {request_id!r}.", param="request_id")
        result = await self.bus.lookup(request_id)
        if result is None:
            return json_response({"id": request_id, "object": "async.request", "status": "queued"})
        return json_response(
            {
                "id": request_id,
                "object": "async.request",
                "status": result["status"],
                "http_status": result["http_status"],
                "deployment": result["deployment"],
                "attempts": result["attempts"],
                "response": orjson.loads(result["body"])
                if result["status"] == "succeeded"
                else None,
                "error": orjson.loads(result["body"]).get("error")
                if result["status"] == "failed"
                else None,
            }
        )

    async def list_models(self, _: Request) -> Response:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "tollway"}
            for name in self.routes.public_names()
        ]
        return json_response({"object": "list", "data": data})

    async def healthz(self, _: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, _: Request) -> Response:
        if not self.bus.ready():
            return error_response(ServiceUnavailable("Kafka is not reachable yet."))
        return json_response({"status": "ready", "ingress_id": self.ingress_id})


async def _tollway_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, TollwayError)
    return error_response(exc)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error_type = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    body = {"error": {"message": str(exc.detail), "type": error_type, "param": None, "code": None}}
    return json_response(body, exc.status_code)


async def _unexpected(_: Request, exc: Exception) -> Response:
    # Never echo internals: the type name is enough to find the log line.
    body = {
        "error": {
            "message": "Internal error.",
            "type": "server_error",
            "param": None,
            "code": type(exc).__name__,
        }
    }
    return json_response(body, 500)


def build_app(
    settings: IngressSettings,
    routes: RoutesConfig,
    bus: Bus,
    *,
    ingress_id: str | None = None,
    lifespan_hooks: tuple[Callable[[], Any], Callable[[], Any]] | None = None,
) -> Starlette:
    """The ASGI app. `lifespan_hooks` = (start, stop) coroutines for the bus."""
    ingress = Ingress(
        settings, routes, bus, ingress_id or f"ingress-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    )

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if lifespan_hooks is not None:
            await lifespan_hooks[0]()
        try:
            yield
        finally:
            if lifespan_hooks is not None:
                await lifespan_hooks[1]()

    return Starlette(
        routes=[
            Route("/v1/chat/completions", ingress.chat_completions, methods=["POST"]),
            Route("/v1/async/chat/completions", ingress.async_chat_completions, methods=["POST"]),
            Route("/v1/async/requests/{request_id}", ingress.get_async_request, methods=["GET"]),
            Route("/v1/models", ingress.list_models, methods=["GET"]),
            Route("/healthz", ingress.healthz, methods=["GET"]),
            Route("/readyz", ingress.readyz, methods=["GET"]),
        ],
        exception_handlers={
            TollwayError: _tollway_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
        lifespan=lifespan,
    )
