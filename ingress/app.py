"""The ingress ASGI app: authenticate, validate, admit, publish; answer sync or async.

    POST /v1/chat/completions         publish, wait for the reply (sync), answer OpenAI JSON
    POST /v1/async/chat/completions   publish, answer 202 {id} once Kafka acknowledged it
    POST /v1/embeddings               publish, wait for the reply (sync only), answer as chat
    GET  /v1/async/requests/{id}      queued | succeeded | failed, with the result
    POST /v1/async/bulk/chat/completions   many async requests per call (ingress/bulk_api.py)
    GET  /v1/models                   the routing table's public model names
    GET  /healthz, /readyz            alive; ready = Kafka reachable and result index caught up

Handlers are thin: validation is `admission.py`, transport is a `Bus`. A 2xx
or 202 is sent only after the record is acknowledged by Kafka (acks=all); if
Kafka cannot take it the answer is 503 and nothing was accepted. Every error is
an OpenAI error body.

Tenancy: `AuthMiddleware` (ingress/auth.py) resolves the caller's virtual key to a
`Principal` before any handler runs; every handler acts for that team and key only.
Another team's async request ids answer 404 (ids are signed per team, ingress/ids.py),
never 403, so an id's existence does not leak. Governance (approved models,
denial-of-wallet caps, the queue cap) is `gatekeeper.py`.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ingress.admission import (
    CHAT_ENDPOINT,
    BudgetCheck,
    apply_admission,
    build_envelope,
    parse_chat_request,
)
from ingress.auth import (
    Authenticator,
    AuthMiddleware,
    Principal,
    open_authenticator,
    principal_in,
)
from ingress.bus import Bus, StreamItem, wait_reply
from ingress.embeddings import parse_embeddings_request
from ingress.gatekeeper import Gatekeeper, RequestContext
from ingress.idempotency import SEED_SCOPE_KEY
from ingress.ids import new_request_id, verify_request_id
from ingress.queue_limit import TeamQueues
from ingress.settings import IngressSettings
from schemas import topics
from schemas.errors import (
    BodyTooLarge,
    DeadlineExceeded,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    TollwayError,
)
from schemas.openai import EMBEDDINGS_ENDPOINT
from schemas.records import BatchState, Mode, RequestEnvelope, Result
from schemas.routes import RoutesConfig
from workers.cache.canonical import CACHE_HEADER, CACHE_STATUS_KEY, cache_control_metadata
from workers.callbacks.events import (
    CALLBACK_URL_KEY,
    RESERVED_PREFIX,
    InvalidCallbackUrl,
    validate_callback_url,
)
from workers.router.rate_limits import RETRY_AFTER_KEY
from workers.telemetry.metrics import error_metrics

REQUEST_ID_HEADER = "x-tollway-request-id"


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def error_response(error: TollwayError, request_id: str | None = None) -> Response:
    error_metrics().count(type(error).__name__)  # tollway_errors_total{error_class}
    headers = error.headers()
    if request_id is not None:
        headers[REQUEST_ID_HEADER] = request_id
    return json_response(error.to_body(), error.http_status, headers)


def result_headers(result: Result) -> dict[str, str]:
    """The response headers a finished sync result carries, on every API surface."""
    headers = {
        REQUEST_ID_HEADER: result["request_id"],
        "x-tollway-attempts": str(result["attempts"]),
    }
    if result["deployment"]:
        headers["x-tollway-deployment"] = result["deployment"]
    retry_after = result["metadata"].get(RETRY_AFTER_KEY)  # a router's 429/503 (0009, 0014)
    if retry_after is not None:
        headers["retry-after"] = retry_after
    cache = result["metadata"].get(CACHE_STATUS_KEY)  # hit | semantic-hit | miss (0017)
    if cache is not None:
        headers[CACHE_HEADER] = cache
    return headers


def stream_cache_header(first: Mapping[str, object]) -> dict[str, str]:
    """x-tollway-cache for a stream: its first chunk says whether it came from the cache."""
    cache = first.get("cache")
    return {CACHE_HEADER: cache} if isinstance(cache, str) and cache else {}


def result_response(result: Result) -> Response:
    return Response(
        result["body"], result["http_status"], result_headers(result), media_type="application/json"
    )


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


def take_callback_url(body: bytes, mode: Mode) -> tuple[bytes, dict[str, str]]:
    """Move a top-level `callback_url` out of the body into reserved metadata.

    Only async requests take one (their result is delivered by signed webhook,
    workers/callbacks); the address is checked again at every delivery (SSRF guard).
    """
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body, {}  # admission reports the syntax error
    if not isinstance(raw, dict) or "callback_url" not in raw:
        return body, {}
    if mode != "async":
        raise InvalidRequest("callback_url is only accepted by /v1/async/...", param="callback_url")
    try:
        url = validate_callback_url(raw.pop("callback_url"))
    except InvalidCallbackUrl as exc:
        raise InvalidRequest(str(exc), param="callback_url") from exc
    return orjson.dumps(raw), {CALLBACK_URL_KEY: url}


def with_field(body: bytes, field: str, value: object) -> bytes:
    """`body` (a JSON object parse_chat_request has validated) with one top-level field set."""
    raw = orjson.loads(body)
    raw[field] = value
    return orjson.dumps(raw)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request that passed admission (`Ingress.prepare`) and is not published yet."""

    envelope: RequestEnvelope
    principal: Principal
    stream: bool
    """A sync request that asked for server-sent events."""

    @property
    def request_id(self) -> str:
        return self.envelope["request_id"]


class Ingress:
    """The handlers, closed over their collaborators (no globals)."""

    def __init__(
        self,
        settings: IngressSettings,
        routes: RoutesConfig,
        bus: Bus,
        ingress_id: str,
        budgets: BudgetCheck | None = None,
        *,
        authenticator: Authenticator,
        gatekeeper: Gatekeeper,
    ) -> None:
        self.settings = settings
        self.routes = routes
        self.bus = bus
        self.budgets = budgets
        """The budget-state view; None when no budgets are configured (nothing on the path)."""
        self.ingress_id = ingress_id
        self.authenticator = authenticator
        self.gatekeeper = gatekeeper
        self._secret = settings.id_secret.get_secret_value().encode()

    @staticmethod
    def identify(request: Request) -> tuple[Principal, RequestContext]:
        """The authenticated caller and what the request's headers add (400 if malformed)."""
        return principal_in(request.scope), RequestContext.from_headers(request.headers)

    async def _accept(
        self, request: Request, mode: Mode, headers: dict[str, str] | None = None
    ) -> tuple[str, Any]:
        """Validate and publish; returns (request_id, the reply future / stream queue / None).
        Response headers from admission (a budget warning) are added to `headers`."""
        body = await read_body(request, self.settings.max_body_bytes)
        extra: dict[str, str] = {}
        if b'"callback_url"' in body:
            body, extra = take_callback_url(body, mode)
        extra.update(cache_control_metadata(request.headers.get("cache-control")))
        seed = request.scope.get(SEED_SCOPE_KEY)  # set by the Idempotency-Key middleware
        principal, context = self.identify(request)
        return await self.submit(
            body,
            mode,
            principal=principal,
            context=context,
            extra_metadata=extra,
            id_seed=seed,
            response_headers=headers,
        )

    async def submit(
        self,
        body: bytes,
        mode: Mode,
        *,
        principal: Principal,
        context: RequestContext | None = None,
        endpoint: str = CHAT_ENDPOINT,
        extra_metadata: dict[str, str] | None = None,
        id_seed: str | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> tuple[str, Any]:
        """Validate a canonical (OpenAI-format) body for `principal` and publish it durably.

        Returns (request_id, waiter): for sync, the reply future or (stream) the
        chunk queue; None for async. Other API surfaces (e.g. Anthropic's
        /v1/messages) translate their body to the canonical one and call this.
        Two steps, `prepare` then `publish` (the bulk endpoint, ingress/bulk_api.py,
        prepares many and publishes them together).
        """
        prepared = self.prepare(
            body,
            mode,
            principal=principal,
            context=context,
            endpoint=endpoint,
            extra_metadata=extra_metadata,
            id_seed=id_seed,
            response_headers=response_headers,
        )
        request_id = prepared.request_id
        waiter: Any = None
        if mode == "sync":
            waiter = (
                self.bus.expect_stream(request_id)
                if prepared.stream
                else self.bus.expect_reply(request_id)
            )
        try:
            await self.publish(prepared)
        except BaseException:
            self.bus.forget_reply(request_id)
            raise
        return request_id, waiter

    def prepare(
        self,
        body: bytes,
        mode: Mode,
        *,
        principal: Principal,
        context: RequestContext | None = None,
        endpoint: str = CHAT_ENDPOINT,
        extra_metadata: dict[str, str] | None = None,
        id_seed: str | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> Prepared:
        """Every admission check of `submit` (a `TollwayError` when one refuses), and the
        envelope to publish. No I/O and no await: an async request's queue-cap check and
        its slot (`Gatekeeper.async_accepted`) happen together, so requests prepared one
        after another count each other. The caller must `publish` what it prepared; a
        failed publish gives the slot back."""
        gate = self.gatekeeper
        team_id, key_id = principal.team_id, principal.key_id
        wallet = gate.wallet(principal)
        wallet.check_input_bytes(len(body))
        if endpoint == EMBEDDINGS_ENDPOINT:  # no stream, no client metadata in this API
            embed = parse_embeddings_request(body, self.routes, team_id=team_id, key_id=key_id)
            model, stream, metadata, user = embed.model, False, {}, embed.user
        else:
            chat = parse_chat_request(body, self.routes, team_id=team_id, key_id=key_id)
            model, stream, metadata = chat.model, bool(chat.stream), dict(chat.metadata or {})
            user = chat.user
            implied_cap = wallet.check_output_tokens(
                {"max_tokens": chat.max_tokens, "max_completion_tokens": chat.max_completion_tokens}
            )
            if implied_cap is not None:  # the wallet limit, not the provider's maximum
                body = with_field(body, "max_completion_tokens", implied_cap)
        if stream and mode != "sync":
            raise InvalidRequest("stream=true needs the synchronous endpoint.", param="stream")
        if any(key.startswith(RESERVED_PREFIX) for key in metadata):
            raise InvalidRequest(
                f"metadata keys starting with {RESERVED_PREFIX!r} are reserved.", param="metadata"
            )
        context = context or RequestContext()
        tags = gate.tags_for(principal, context, metadata)
        gate.check_model(principal, model, tags)  # 403 model_not_allowed
        metadata = gate.annotate(metadata, tags, gate.end_user_for(context, user))
        metadata.update(extra_metadata or {})
        received = now_ms()
        if mode == "async":
            gate.check_async_queue(principal, received)  # 429 queue_limit_exceeded
        if self.budgets is not None:  # 429 / 503 raised here: nothing is published
            admitted = apply_admission(self.budgets.check(team_id, key_id, model), body, metadata)
            model, body, metadata = admitted.model, admitted.body, admitted.metadata
            if response_headers is not None:
                response_headers.update(admitted.headers)
        request_id = new_request_id(self._secret, team_id, id_seed)
        deadline = received + int(self.settings.sync_timeout_s * 1000)
        envelope = build_envelope(
            request_id=request_id,
            team_id=team_id,
            key_id=key_id,
            mode=mode,
            model=model,
            body=body,
            now_ms=received,
            deadline_ms=deadline,
            ingress_id=self.ingress_id,
            reply_partition=self.bus.reply_partition if mode == "sync" else None,
            metadata=metadata,
            endpoint=endpoint,
        )
        if mode == "async":  # counted from now on: given back if the publish fails
            gate.async_accepted(principal, request_id, received)
        return Prepared(envelope, principal, stream)

    async def publish(self, prepared: Prepared) -> None:
        """Write a prepared request to Kafka and wait for acks=all (`ServiceUnavailable`,
        503, when it could not be written; nothing was accepted then)."""
        try:
            await self.bus.publish(topics.REQUESTS_INTERACTIVE.name, prepared.envelope)
        except BaseException:
            if prepared.envelope["mode"] == "async":
                self.gatekeeper.async_released(prepared.principal, prepared.request_id)
            raise

    async def chat_completions(self, request: Request) -> Response:
        headers: dict[str, str] = {}
        request_id, future = await self._accept(request, "sync", headers)
        if isinstance(future, asyncio.Queue):
            return await self._stream(request_id, future, headers)
        try:
            result = await self.wait(request_id, future)
        except TollwayError as exc:
            response = error_response(exc, request_id)
        else:
            response = result_response(result)
        response.headers.update(headers)
        return response

    async def wait(self, request_id: str, future: asyncio.Future[Result]) -> Result:
        """The sync reply of a submitted request (`DeadlineExceeded` after the timeout)."""
        return await wait_reply(self.bus, future, request_id, self.settings.sync_timeout_s)

    async def _stream(
        self,
        request_id: str,
        queue: asyncio.Queue[StreamItem],
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Server-sent events relayed from tollway.replies as the router produces them.

        The status line is decided by the first item: a chunk starts a 200 event
        stream; a failed Result before any chunk is an ordinary error response (so
        fallback and errors look the same as without streaming). After the first
        chunk an error can only be reported in-stream. Chunks of another execution
        (after a redelivery) are dropped.
        """
        deadline = asyncio.get_running_loop().time() + self.settings.sync_timeout_s

        async def next_item() -> StreamItem:
            async with asyncio.timeout_at(deadline):
                return await queue.get()

        try:
            first = await next_item()
        except TimeoutError:
            self.bus.forget_reply(request_id)
            return error_response(DeadlineExceeded("No first chunk in time."), request_id)
        if "seq" not in first:
            self.bus.forget_reply(request_id)
            return result_response(first)
        execution_id = first["execution_id"]
        headers = {**(headers or {}), **stream_cache_header(first)}

        async def events() -> AsyncIterator[bytes]:
            try:
                item: StreamItem = first
                while True:
                    if "seq" in item:
                        if item["execution_id"] == execution_id:
                            yield b"data: " + item["data"] + b"\n\n"  # type: ignore[typeddict-item]
                    else:
                        if item["status"] == "failed":
                            yield b"data: " + item["body"] + b"\n\n"
                        yield b"data: [DONE]\n\n"
                        return
                    item = await next_item()
            except TimeoutError:
                error = DeadlineExceeded("The stream did not finish in time.")
                yield b"data: " + orjson.dumps(error.to_body()) + b"\n\n"
            finally:
                self.bus.forget_reply(request_id)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={REQUEST_ID_HEADER: request_id, "cache-control": "no-cache", **(headers or {})},
        )

    async def embeddings(self, request: Request) -> Response:
        """POST /v1/embeddings: sync only, the answer relayed as the provider gave it."""
        body = await read_body(request, self.settings.max_body_bytes)
        headers: dict[str, str] = {}
        principal, context = self.identify(request)
        request_id, future = await self.submit(
            body,
            "sync",
            principal=principal,
            context=context,
            endpoint=EMBEDDINGS_ENDPOINT,
            id_seed=request.scope.get(SEED_SCOPE_KEY),
            response_headers=headers,
        )
        try:
            result = await self.wait(request_id, future)
        except TollwayError as exc:
            response = error_response(exc, request_id)
        else:
            response = result_response(result)
        response.headers.update(headers)
        return response

    async def async_chat_completions(self, request: Request) -> Response:
        headers: dict[str, str] = {}
        request_id, _ = await self._accept(request, "async", headers)
        return json_response(
            {"id": request_id, "object": "async.request", "status": "queued"},
            202,
            {
                REQUEST_ID_HEADER: request_id,
                "location": f"/v1/async/requests/{request_id}",
                **headers,
            },
        )

    async def get_async_request(self, request: Request) -> Response:
        request_id = request.path_params["request_id"]
        team_id = principal_in(request.scope).team_id
        if not verify_request_id(self._secret, team_id, request_id):  # another team's: 404
            raise NotFound("No request with this id.", param="request_id")
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

    async def list_models(self, request: Request) -> Response:
        """The routing table's public names that this caller's policies approve."""
        names = self.gatekeeper.visible_models(
            principal_in(request.scope), self.routes.public_names()
        )
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "tollway"} for name in names
        ]
        return json_response({"object": "list", "data": data})

    async def healthz(self, _: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, _: Request) -> Response:
        if not self.bus.ready():
            return error_response(ServiceUnavailable("Kafka is not reachable yet."))
        if self.budgets is not None and not self.budgets.ready:
            return error_response(ServiceUnavailable("The budget state is still loading."))
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
    extra_routes: Sequence[Callable[[Ingress], list[BaseRoute]]] = (),
    budgets: BudgetCheck | None = None,
    authenticator: Authenticator | None = None,
    batch_states: Callable[[str], Iterable[BatchState]] | None = None,
) -> Starlette:
    """The ASGI app. `lifespan_hooks` = (start, stop) coroutines for the bus;
    `extra_routes` = factories of more API surfaces built on the same `Ingress`;
    `budgets` = the budget-state view (admission; /readyz waits for it), None = no budgets;
    `authenticator` = who may call (ingress/auth.py): ingress/server.py always passes
    the one `TOLLWAY_AUTH` chooses (keys by default); omitted, the app is in open mode
    (every caller is team `default`: tests and embedding only);
    `batch_states(team_id)` = a team's batches, for the queue cap (none when omitted)."""
    authenticator = authenticator or open_authenticator()
    queues = TeamQueues(
        replicas=settings.replicas,
        batch_states=batch_states or (lambda _: ()),
        finished=bus.has_result,
        max_age_ms=int(settings.queued_max_age_s * 1000),
    )
    gatekeeper = Gatekeeper(
        routes=routes,
        tag_policy=authenticator.tag_policy,
        wallet_defaults=settings.wallet_defaults,
        queues=queues,
    )
    ingress = Ingress(
        settings,
        routes,
        bus,
        ingress_id or f"ingress-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        budgets,
        authenticator=authenticator,
        gatekeeper=gatekeeper,
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
            Route(EMBEDDINGS_ENDPOINT, ingress.embeddings, methods=["POST"]),
            Route("/v1/async/requests/{request_id}", ingress.get_async_request, methods=["GET"]),
            Route("/v1/models", ingress.list_models, methods=["GET"]),
            Route("/healthz", ingress.healthz, methods=["GET"]),
            Route("/readyz", ingress.readyz, methods=["GET"]),
            *(route for factory in extra_routes for route in factory(ingress)),
        ],
        exception_handlers={
            TollwayError: _tollway_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
        middleware=[Middleware(AuthMiddleware, authenticator=authenticator)],
        lifespan=lifespan,
    )
