"""The mock provider's HTTP adapter: aiohttp.web serving three providers' chat APIs.

Routes:
    POST   /v1/chat/completions  JSON or server-sent events, as ``behaviour.decide`` plans.
    POST   /openai/deployments/{deployment}/chat/completions?api-version=...
                                 Azure OpenAI's URL for the same API (404 without
                                 api-version, as Azure answers); the body's model
                                 picks the behaviour.
    POST   /v1/messages          Anthropic Messages API, JSON or (``stream: true``) its
                                 named server-sent events (``anthropic_wire``).
    POST   /v1beta/models/{model}:generateContent
    POST   /v1beta/models/{model}:streamGenerateContent?alt=sse
                                 Gemini, JSON or server-sent events (``gemini_wire``).
    POST   /v1/embeddings        OpenAI embeddings, float or base64 (``embeddings``).
    POST   /openai/deployments/{deployment}/embeddings?api-version=...   Azure's URL for it.
    POST   /v1beta/models/{model}:embedContent, :batchEmbedContents
                                 Gemini embeddings (``embeddings``).
    GET    /v1/models            OpenAI model list (examples; every name is served).
    GET    /healthz              ``{"status": "ok"}``.
    GET    /stats                requests seen (chat and embeddings): total, by status, by model.
    DELETE /stats                reset those counts (between benchmark phases).

Every chat route picks the same behaviour by model name (the Anthropic and Gemini
readers hand ``decide`` the fields it reads) and answers in its own provider's
dialect, errors included. Every stream waits the model's latency, sends its events
up to the first word at once (the latency is the time to first token), then one
event per ``stream_chunk_interval_ms`` (all at once when 0). Any ``Authorization``,
``x-api-key`` or ``x-goog-api-key`` header, or none, is accepted. The hot path is
deliberately bare: orjson in and out, no pydantic, no per-request logging (the access
log is off), so one core serves thousands of requests per second. Guarantee: a request is counted in
``/stats`` as soon as its outcome is decided, before the latency wait, so a caller that
gave up (``mock-timeout``) is still counted, under the status it would have received.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable, Mapping

import orjson
from aiohttp import web

from workers.providers.mock import anthropic_wire, gemini_wire
from workers.providers.mock import embeddings as embedding_wire
from workers.providers.mock.behaviour import (
    Answer,
    Failure,
    MockSettings,
    Outcome,
    decide,
    invalid_request,
)
from workers.providers.mock.stream_plan import StreamPlan
from workers.providers.mock.until_signal import serve_until_signal
from workers.providers.mock.wire import completion_body, error_body, models_body, stream_chunks

MAX_REQUEST_BYTES = 16 * 1024 * 1024
SHUTDOWN_TIMEOUT_S = 1.0
"""Grace for in-flight requests at shutdown; the mock owes its callers nothing more."""

_JSON_HEADERS = {"Content-Type": "application/json"}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_DONE = b"data: [DONE]\n\n"
_GEMINI_METHODS = frozenset({"generateContent", "streamGenerateContent"})
_GEMINI_EMBED_PATH = "/v1beta/models/{model:[^/:]+}:{method:embedContent|batchEmbedContents}"
_GEMINI_SERVED = ":generateContent and :streamGenerateContent"

Rendered = tuple[int, dict[str, object], tuple[tuple[str, str], ...]]
Renderer = Callable[[Outcome, Mapping[str, object], str, str], Rendered]
StreamRenderer = Callable[[Outcome, Mapping[str, object], str, str], Rendered | StreamPlan]
ErrorRenderer = Callable[[Failure], Mapping[str, object]]


class RequestStats:
    """Counts of chat completion requests, for tests and benchmarks to read provider calls."""

    __slots__ = ("by_model", "by_status", "total")

    def __init__(self) -> None:
        self.total = 0
        self.by_status: dict[int, int] = {}
        self.by_model: dict[str, int] = {}

    def record(self, status: int, model: str | None) -> None:
        """Count one request answered (or to be answered) with ``status``."""
        self.total += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if model is not None:
            self.by_model[model] = self.by_model.get(model, 0) + 1

    def reset(self) -> None:
        """Forget every count."""
        self.total = 0
        self.by_status.clear()
        self.by_model.clear()

    def snapshot(self) -> dict[str, object]:
        """The ``/stats`` JSON object; status keys are strings, as JSON requires."""
        return {
            "total": self.total,
            "by_status": {str(status): count for status, count in sorted(self.by_status.items())},
            "by_model": dict(sorted(self.by_model.items())),
        }


STATS_KEY = web.AppKey("mock_stats", RequestStats)
SETTINGS_KEY = web.AppKey("mock_settings", MockSettings)


def build_app(settings: MockSettings) -> web.Application:
    """A fresh mock provider app; its counters (``app[STATS_KEY]``) start at zero."""
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    stats = RequestStats()
    app[STATS_KEY] = stats
    app[SETTINGS_KEY] = settings
    handlers = _Handlers(settings, stats)
    app.router.add_post("/v1/chat/completions", handlers.chat_completions)
    app.router.add_post(
        "/openai/deployments/{deployment}/chat/completions", handlers.azure_chat_completions
    )
    app.router.add_post("/v1/messages", handlers.anthropic_messages)
    app.router.add_post("/v1/embeddings", handlers.embeddings)
    app.router.add_post("/openai/deployments/{deployment}/embeddings", handlers.azure_embeddings)
    # Before the generic Gemini route, which would take these methods too.
    app.router.add_post(_GEMINI_EMBED_PATH, handlers.gemini_embeddings)
    app.router.add_post("/v1beta/models/{target}", handlers.gemini_generate_content)
    app.router.add_get("/v1/models", handlers.models)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/stats", handlers.stats)
    app.router.add_delete("/stats", handlers.reset_stats)
    return app


async def serve(host: str, port: int, settings: MockSettings) -> None:
    """Serve the mock on ``host:port`` until cancelled, then close within ~1 s."""
    runner = web.AppRunner(
        build_app(settings),
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=2048).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run(host: str, port: int, settings: MockSettings) -> None:
    """Serve the mock in this process until SIGTERM or SIGINT (uvloop when available)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency
        asyncio.run(serve_until_signal(serve(host, port, settings)))
    else:
        uvloop.run(serve_until_signal(serve(host, port, settings)))


class _Handlers:
    """Request handlers sharing the settings, the counters and the per-model call index."""

    def __init__(self, settings: MockSettings, stats: RequestStats) -> None:
        self._settings = settings
        self._stats = stats
        self._calls_by_model: dict[str, int] = {}
        self._response_numbers = itertools.count()
        # Random per process so ids from two mock processes do not collide.
        self._process_id = os.urandom(6).hex()
        self._id_prefix = f"chatcmpl-mock{self._process_id}"

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        payload = await _json_object(request)
        if isinstance(payload, Failure):
            return self._refuse(payload)
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            return self._refuse(invalid_request("'model' must be a non-empty string.", "model"))

        call_index = self._calls_by_model.get(model, 0)
        self._calls_by_model[model] = call_index + 1
        outcome = decide(payload, model, self._settings, call_index)
        self._stats.record(outcome.status, model)
        if outcome.latency_ms > 0:
            await asyncio.sleep(outcome.latency_ms / 1000)
        if isinstance(outcome, Failure):
            return _json_response(error_body(outcome), outcome.status, outcome.headers)
        response_id = f"{self._id_prefix}{next(self._response_numbers):x}"
        created_s = int(time.time())
        if outcome.stream:
            return await self._stream(request, outcome, model, response_id, created_s)
        body = completion_body(outcome.reply, model, response_id, created_s)
        return _json_response(body, 200, outcome.headers)

    async def azure_chat_completions(self, request: web.Request) -> web.StreamResponse:
        if not request.query.get("api-version"):
            return self._refuse(Failure(404, 0, "Resource not found", "invalid_request_error"))
        return await self.chat_completions(request)

    async def anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        payload = await _json_object(request)
        if isinstance(payload, Failure):
            return self._refuse(payload, anthropic_wire.error_body)
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            failure = invalid_request("model: Field required", "model")
            return self._refuse(failure, anthropic_wire.error_body)
        fields = anthropic_wire.read_request(payload)
        if isinstance(fields, Failure):
            return self._refuse(fields, anthropic_wire.error_body)
        if fields.get("stream") is True:
            stream = (anthropic_wire.render_stream, _named_event)
            return await self._answer_stream(request, model, fields, stream, "msg_mock")
        return await self._answer(model, fields, anthropic_wire.render, "msg_mock")

    async def gemini_generate_content(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["target"].rpartition(":")
        if method not in _GEMINI_METHODS or not model:
            failure = Failure(404, 0, f"the mock serves only {_GEMINI_SERVED}", "not_found")
            return self._refuse(failure, gemini_wire.error_body)
        if method == "streamGenerateContent" and request.query.get("alt") != "sse":
            failure = invalid_request("the mock streams only server-sent events: add alt=sse")
            return self._refuse(failure, gemini_wire.error_body)
        payload = await _json_object(request)
        if isinstance(payload, Failure):
            return self._refuse(payload, gemini_wire.error_body)
        fields = gemini_wire.read_request(payload)
        if isinstance(fields, Failure):
            return self._refuse(fields, gemini_wire.error_body)
        if method == "streamGenerateContent":
            stream = (gemini_wire.render_stream, _data_event)
            return await self._answer_stream(request, model, fields, stream, "mock")
        return await self._answer(model, fields, gemini_wire.render, "mock")

    def _decide(self, model: str, fields: dict[str, object], id_prefix: str) -> tuple[Outcome, str]:
        """The outcome of this call to ``model`` and a fresh response id."""
        call_index = self._calls_by_model.get(model, 0)
        self._calls_by_model[model] = call_index + 1
        outcome = decide(fields, model, self._settings, call_index)
        return outcome, f"{id_prefix}{self._process_id}{next(self._response_numbers):x}"

    async def _answer(
        self, model: str, fields: dict[str, object], render: Renderer, id_prefix: str
    ) -> web.Response:
        """Decide, count, wait, then answer unstreamed in ``render``'s dialect."""
        outcome, response_id = self._decide(model, fields, id_prefix)
        status, body, headers = render(outcome, fields, model, response_id)
        self._stats.record(status, model)
        if outcome.latency_ms > 0:
            await asyncio.sleep(outcome.latency_ms / 1000)
        return _json_response(body, status, headers)

    async def _answer_stream(
        self,
        request: web.Request,
        model: str,
        fields: dict[str, object],
        stream: tuple[StreamRenderer, Callable[[Mapping[str, object]], bytes]],
        id_prefix: str,
    ) -> web.StreamResponse:
        """Decide, count, wait, then stream in the renderer's dialect (or answer its
        error as JSON); ``stream`` is the renderer and the SSE framing of one event."""
        render, frame = stream
        outcome, response_id = self._decide(model, fields, id_prefix)
        rendered = render(outcome, fields, model, response_id)
        self._stats.record(200 if isinstance(rendered, StreamPlan) else rendered[0], model)
        if outcome.latency_ms > 0:
            await asyncio.sleep(outcome.latency_ms / 1000)
        if not isinstance(rendered, StreamPlan):
            status, body, headers = rendered
            return _json_response(body, status, headers)
        events = [frame(event) for event in rendered.events]
        return await self._write_events(request, events, rendered.lead)

    async def models(self, _request: web.Request) -> web.Response:
        return _json_response(models_body(), 200)

    async def healthz(self, _request: web.Request) -> web.Response:
        return _json_response({"status": "ok"}, 200)

    async def stats(self, _request: web.Request) -> web.Response:
        return _json_response(self._stats.snapshot(), 200)

    async def reset_stats(self, _request: web.Request) -> web.Response:
        self._stats.reset()
        return _json_response(self._stats.snapshot(), 200)

    async def embeddings(self, request: web.Request) -> web.Response:
        payload = await _json_object(request)
        if isinstance(payload, Failure):
            return self._refuse(payload)
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            return self._refuse(invalid_request("'model' must be a non-empty string.", "model"))
        outcome = await self._embed(model, payload)
        if isinstance(outcome, Failure):
            return _json_response(error_body(outcome), outcome.status, outcome.headers)
        return _json_response(embedding_wire.openai_body(outcome, model), 200)

    async def azure_embeddings(self, request: web.Request) -> web.Response:
        if not request.query.get("api-version"):
            return self._refuse(Failure(404, 0, "Resource not found", "invalid_request_error"))
        return await self.embeddings(request)

    async def gemini_embeddings(self, request: web.Request) -> web.Response:
        model, method = request.match_info["model"], request.match_info["method"]
        payload = await _json_object(request)
        if isinstance(payload, Failure):
            return self._refuse(payload, gemini_wire.error_body)
        fields = embedding_wire.read_gemini_request(payload, method)
        if isinstance(fields, Failure):
            return self._refuse(fields, gemini_wire.error_body)
        outcome = await self._embed(model, fields)
        if isinstance(outcome, Failure):
            return _json_response(gemini_wire.error_body(outcome), outcome.status)
        return _json_response(embedding_wire.gemini_body(outcome, method), 200)

    async def _embed(
        self, model: str, fields: Mapping[str, object]
    ) -> embedding_wire.Embeddings | Failure:
        """Decide, count and wait out one embeddings call."""
        call_index = self._calls_by_model.get(model, 0)
        self._calls_by_model[model] = call_index + 1
        outcome = embedding_wire.decide_embeddings(fields, model, self._settings, call_index)
        self._stats.record(outcome.status, model)
        if outcome.latency_ms > 0:
            await asyncio.sleep(outcome.latency_ms / 1000)
        return outcome

    def _refuse(self, failure: Failure, render_error: ErrorRenderer = error_body) -> web.Response:
        self._stats.record(failure.status, None)
        return _json_response(render_error(failure), failure.status, failure.headers)

    async def _stream(
        self,
        request: web.Request,
        answer: Answer,
        model: str,
        response_id: str,
        created_s: int,
    ) -> web.StreamResponse:
        chunks = stream_chunks(answer.reply, model, response_id, created_s, answer.include_usage)
        events = [_data_event(chunk) for chunk in chunks]
        events.append(_DONE)
        # Role chunk and first word together: the latency is the time to first token.
        return await self._write_events(request, events, 2)

    async def _write_events(
        self, request: web.Request, events: list[bytes], lead: int
    ) -> web.StreamResponse:
        """Send ``events[:lead]`` at once, then one event per configured interval."""
        response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
        await response.prepare(request)
        interval_ms = self._settings.stream_chunk_interval_ms
        if interval_ms == 0:
            await response.write(b"".join(events))
        else:
            await response.write(b"".join(events[:lead]))
            for event in events[lead:]:
                await asyncio.sleep(interval_ms / 1000)
                await response.write(event)
        await response.write_eof()
        return response


def _data_event(event: Mapping[str, object]) -> bytes:
    """One server-sent event with only a ``data:`` line (OpenAI, Gemini)."""
    return b"data: " + orjson.dumps(event) + b"\n\n"


def _named_event(event: Mapping[str, object]) -> bytes:
    """One server-sent event named after its ``type`` (Anthropic's framing)."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


async def _json_object(request: web.Request) -> dict[str, object] | Failure:
    """The request body as a JSON object, or the 400 to answer instead."""
    try:
        payload = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        return invalid_request(f"Malformed JSON body: {exc}")
    if not isinstance(payload, dict):
        return invalid_request("The request body must be a JSON object.")
    return payload


def _json_response(
    body: Mapping[str, object], status: int, headers: tuple[tuple[str, str], ...] = ()
) -> web.Response:
    all_headers = {**_JSON_HEADERS, **dict(headers)} if headers else _JSON_HEADERS
    return web.Response(body=orjson.dumps(body), status=status, headers=all_headers)
