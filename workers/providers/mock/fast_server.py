"""A lean mock provider for benchmarks: OpenAI's non-streaming chat endpoint on raw asyncio.

Why: in the sync benchmark the mock provider shares the machine's two cores with
the gateway it is measuring, so every millisecond of CPU it spends is taken from
the system under test. `server.py` (aiohttp.web) costs ~0.26 ms of CPU per
request; this server answers the same requests with the same bodies (the same
pure `behaviour.decide` and `wire` renderers) from an `asyncio.Protocol` with
httptools' parser and one preformatted response, no request/response objects.
The benchmark uses it for BOTH the direct and the gateway runs, so the
comparison stays honest; `server.py` remains the mock for everything else.

Serves (HTTP/1.1 keep-alive; pipelined requests are answered in order):
    POST /v1/chat/completions   non-streaming chat; every model-name behaviour of
                                ``behaviour.decide`` (latency, errors, 429s, flaky).
                                ``stream: true`` answers 400: streaming is server.py's.
    GET  /healthz               ``{"status": "ok"}``
Anything else answers 404 with an OpenAI error body.

    python -m workers.providers.mock.fast_server [--host H] [--port P] [--latency-ms MS]

Defaults come from TOLLWAY_MOCK_FAST_HOST (127.0.0.1) and TOLLWAY_MOCK_FAST_PORT
(18081). Loopback by default; the mock accepts any or no API key.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import time
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Final, cast

import httptools
import orjson

from workers.providers.mock.behaviour import Answer, Failure, MockSettings, decide, invalid_request
from workers.providers.mock.until_signal import serve_until_signal
from workers.providers.mock.wire import completion_body, error_body

CHAT_PATH: Final = b"/v1/chat/completions"
HEALTH_PATH: Final = b"/healthz"
MAX_REQUEST_BYTES: Final = 16 * 1024 * 1024
DEFAULT_PORT: Final = 18081


@dataclass(frozen=True, slots=True)
class Prepared:
    """What to answer: HTTP status, wait before answering (ms), JSON body, extra headers."""

    status: int
    latency_ms: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def http_response(
    status: int, body: bytes, headers: tuple[tuple[str, str], ...], *, keep_alive: bool
) -> bytes:
    """One complete HTTP/1.1 response with a JSON body (Content-Length framing)."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    lines.extend(f"{name}: {value}" for name, value in headers)
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _json_object(body: bytes) -> dict[str, object] | Failure:
    """The body as a JSON object, or the 400 to answer instead."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return invalid_request(f"Malformed JSON body: {exc}")
    if not isinstance(payload, dict):
        return invalid_request("The request body must be a JSON object.")
    return payload


def _failure(failure: Failure) -> Prepared:
    return Prepared(
        failure.status, failure.latency_ms, orjson.dumps(error_body(failure)), failure.headers
    )


@dataclass(slots=True)
class FastMock:
    """The request handler, pure but for its per-model call counters.

    `handle` takes the method, path and body and returns what to answer; the
    caller supplies the clock (`created_s`, Unix seconds) so tests fix it.
    """

    settings: MockSettings
    id_prefix: str = field(default_factory=lambda: f"chatcmpl-mockfast{os.urandom(6).hex()}")
    _calls_by_model: dict[str, int] = field(default_factory=dict)
    _numbers: itertools.count[int] = field(default_factory=itertools.count)

    def handle(self, method: bytes, path: bytes, body: bytes, created_s: int) -> Prepared:
        path = path.split(b"?", 1)[0]
        if path == HEALTH_PATH and method == b"GET":
            return Prepared(200, 0, b'{"status":"ok"}')
        if path != CHAT_PATH or method != b"POST":
            return _failure(
                Failure(404, 0, "the fast mock serves only POST /v1/chat/completions", "not_found")
            )
        outcome = self._decide(body)
        if isinstance(outcome, Failure):
            return _failure(outcome)
        return self._completion(outcome, created_s)

    def _decide(self, body: bytes) -> tuple[Answer, str] | Failure:
        """`behaviour.decide` on the body, with the regular mock's 400s for what it cannot read."""
        payload = _json_object(body)
        if isinstance(payload, Failure):
            return payload
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            return invalid_request("'model' must be a non-empty string.", "model")
        call_index = self._calls_by_model.get(model, 0)
        self._calls_by_model[model] = call_index + 1
        outcome = decide(payload, model, self.settings, call_index)
        if isinstance(outcome, Failure):
            return outcome
        if outcome.stream:
            return invalid_request("the fast mock does not stream; use the aiohttp mock", "stream")
        return outcome, model

    def _completion(self, decided: tuple[Answer, str], created_s: int) -> Prepared:
        answer, model = decided
        response_id = f"{self.id_prefix}{next(self._numbers):x}"
        body = orjson.dumps(completion_body(answer.reply, model, response_id, created_s))
        return Prepared(200, answer.latency_ms, body, answer.headers)


class _Connection(asyncio.Protocol):
    """One client connection: httptools parses, answers leave in request order."""

    def __init__(self, mock: FastMock) -> None:
        self._mock = mock
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._body_bytes = 0
        # answers in request order: [response bytes or None while waiting, close after it]
        self._queue: deque[list[object]] = deque()
        self._timers: set[asyncio.TimerHandle] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self._transport = cast("asyncio.Transport", transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._answer(Prepared(400, 0, b'{"error":{"message":"bad HTTP"}}'), keep_alive=False)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes <= MAX_REQUEST_BYTES:
            self._body.append(body)

    def on_message_complete(self) -> None:
        keep_alive = self._parser.should_keep_alive()
        if self._body_bytes > MAX_REQUEST_BYTES:
            prepared = Prepared(413, 0, b'{"error":{"message":"request too large"}}')
            self._answer(prepared, keep_alive=False)
            return
        prepared = self._mock.handle(
            self._parser.get_method(), self._url, b"".join(self._body), int(time.time())
        )
        self._answer(prepared, keep_alive=keep_alive)

    def _answer(self, prepared: Prepared, *, keep_alive: bool) -> None:
        raw = http_response(prepared.status, prepared.body, prepared.headers, keep_alive=keep_alive)
        slot: list[object] = [None, not keep_alive]
        self._queue.append(slot)
        if prepared.latency_ms <= 0:
            slot[0] = raw
            self._flush()
            return
        loop = asyncio.get_running_loop()

        def ready() -> None:
            self._timers.discard(timer)
            slot[0] = raw
            self._flush()

        timer = loop.call_later(prepared.latency_ms / 1000, ready)
        self._timers.add(timer)

    def _flush(self) -> None:
        while self._queue and self._queue[0][0] is not None:
            raw, close = self._queue.popleft()
            if self._transport is None:
                return
            assert isinstance(raw, bytes)
            self._transport.write(raw)
            if close:
                self._transport.close()
                self._transport = None
                return


async def serve(host: str, port: int, settings: MockSettings) -> None:
    """Serve on `host:port` until cancelled."""
    mock = FastMock(settings)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(mock), host, port, backlog=2048)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default=os.environ.get("TOLLWAY_MOCK_FAST_HOST", "127.0.0.1"))
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("TOLLWAY_MOCK_FAST_PORT", DEFAULT_PORT))
    )
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--completion-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    settings = MockSettings(
        latency_ms=args.latency_ms, completion_tokens=args.completion_tokens, seed=args.seed
    )
    import uvloop

    uvloop.run(serve_until_signal(serve(args.host, args.port, settings)))


if __name__ == "__main__":
    main()
