"""The Anthropic and Gemini adapters stream for real, over loopback HTTP. No Kafka.

- A gated server sends a stream's first events, then waits until the test has
  received the first piece before it sends the rest: a piece that only arrives after
  the whole body (a buffering adapter) fails the test instead of passing slowly.
- The mock provider, pacing its events (`stream_chunk_interval_ms`), shows the same
  from the timing side: the first chunk arrives long before the last.
- Through the router's `StreamRelay`: chunks are relayed as they come, the answer is
  assembled and billed, an error after the first relayed chunk is `StreamBroken`,
  and an error event before any output still lets the plan fail over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import pytest
import pytest_asyncio
from aiohttp import web

from schemas.errors import ProviderServerError, StreamBroken
from schemas.records import StreamChunk
from schemas.routes import Deployment, ProviderKind
from workers.providers.mock.behaviour import MockSettings
from workers.providers.mock.server import build_app
from workers.providers.registry import ProviderRegistry, build_registry
from workers.router.execution import StreamRelay

KINDS: Final[tuple[ProviderKind, ...]] = ("anthropic", "gemini")
REQUEST: Final[dict[str, Any]] = {
    "model": "mock",
    "messages": [{"role": "user", "content": "stream to me"}],
    "stream": True,
    "stream_options": {"include_usage": True},
}
FIRST_PIECE_TIMEOUT_S: Final = 5.0
"""Generous on a loaded 2-core machine; a buffering adapter never gets there at all."""

# --- the gated server --------------------------------------------------------------------

ANTHROPIC_HEAD: Final[list[dict[str, Any]]] = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_gated",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-gated",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 7, "output_tokens": 1},
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "first"}},
]
ANTHROPIC_TAIL: Final[list[dict[str, Any]]] = [
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " last"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 2},
    },
    {"type": "message_stop"},
]
ANTHROPIC_OVERLOADED: Final = {
    "type": "error",
    "error": {"type": "overloaded_error", "message": "Overloaded"},
}


def _gemini_event(text: str, finish_reason: str | None = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if finish_reason:
        candidate["finishReason"] = finish_reason
    return {
        "candidates": [candidate],
        "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 2},
        "modelVersion": "gemini-gated",
        "responseId": "resp_gated",
    }


GEMINI_HEAD: Final = [_gemini_event("first")]
GEMINI_TAIL: Final = [_gemini_event(" last", "STOP")]
GEMINI_UNAVAILABLE: Final = {"error": {"code": 503, "message": "busy", "status": "UNAVAILABLE"}}


@dataclass
class Gated:
    """A server that sends `head`, waits for `gate`, then sends `tail`."""

    root: str
    gate: asyncio.Event
    head: dict[ProviderKind, list[dict[str, Any]]] = field(default_factory=dict)
    tail: dict[ProviderKind, list[dict[str, Any]]] = field(default_factory=dict)
    tail_sent: bool = False


def _frame(kind: ProviderKind, event: dict[str, Any]) -> bytes:
    name = b"event: " + str(event["type"]).encode() + b"\n" if kind == "anthropic" else b""
    return name + b"data: " + orjson.dumps(event) + b"\n\n"


@pytest_asyncio.fixture
async def gated() -> AsyncIterator[Gated]:
    server = Gated(root="", gate=asyncio.Event())
    server.head = {"anthropic": ANTHROPIC_HEAD, "gemini": GEMINI_HEAD}
    server.tail = {"anthropic": ANTHROPIC_TAIL, "gemini": GEMINI_TAIL}

    async def stream(request: web.Request, kind: ProviderKind) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"".join(_frame(kind, e) for e in server.head[kind]))
        await server.gate.wait()
        await response.write(b"".join(_frame(kind, e) for e in server.tail[kind]))
        server.tail_sent = True
        await response.write_eof()
        return response

    async def anthropic(request: web.Request) -> web.StreamResponse:
        return await stream(request, "anthropic")

    async def gemini(request: web.Request) -> web.StreamResponse:
        return await stream(request, "gemini")

    app = web.Application()
    app.router.add_post("/v1/messages", anthropic)
    app.router.add_post("/v1beta/models/{target}", gemini)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()  # the OS picks a free port
    host, port = runner.addresses[0][:2]
    server.root = f"http://{host}:{port}"
    yield server
    server.gate.set()  # release a handler still waiting
    await runner.cleanup()


@pytest_asyncio.fixture
async def registry() -> AsyncIterator[ProviderRegistry]:
    providers = build_registry({})  # the production client: aiohttp
    yield providers
    await providers.aclose()


def _deployment(kind: ProviderKind, root: str) -> Deployment:
    return Deployment(name=f"{kind}-stream", provider=kind, base_url=root, timeout_s=30)


@pytest.mark.parametrize("kind", KINDS)
async def test_the_first_chunk_arrives_before_the_provider_sent_the_rest(
    kind: ProviderKind, gated: Gated, registry: ProviderRegistry
) -> None:
    stream = registry.chat_stream(_deployment(kind, gated.root), REQUEST)
    role = await asyncio.wait_for(anext(stream), FIRST_PIECE_TIMEOUT_S)
    first = await asyncio.wait_for(anext(stream), FIRST_PIECE_TIMEOUT_S)
    assert not gated.tail_sent  # the server is still holding the rest back
    assert orjson.loads(role.data)["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert orjson.loads(first.data)["choices"][0]["delta"] == {"content": "first"}
    gated.gate.set()
    rest = [orjson.loads(piece.data) async for piece in stream]
    assert gated.tail_sent
    assert rest[0]["choices"][0]["delta"] == {"content": " last"}
    assert rest[-1]["usage"]["completion_tokens"] == 2


# --- the mock provider, paced -------------------------------------------------------------

INTERVAL_MS: Final = 100
WORDS: Final = 6


@pytest_asyncio.fixture
async def paced_mock() -> AsyncIterator[str]:
    settings = MockSettings(
        latency_ms=0, completion_tokens=WORDS, stream_chunk_interval_ms=INTERVAL_MS
    )
    runner = web.AppRunner(build_app(settings))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()


@pytest.mark.parametrize("kind", KINDS)
async def test_mock_words_arrive_one_interval_apart(
    kind: ProviderKind, paced_mock: str, registry: ProviderRegistry
) -> None:
    started_s = time.monotonic()
    arrivals_s: list[float] = []
    async for piece in registry.chat_stream(_deployment(kind, paced_mock), REQUEST):
        chunk = orjson.loads(piece.data)
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            arrivals_s.append(time.monotonic() - started_s)
    assert len(arrivals_s) == WORDS
    # The mock sends word 1 at once and each next one INTERVAL_MS later: the first
    # arrives (WORDS - 1) intervals before the last, not together with it.
    spread_s = arrivals_s[-1] - arrivals_s[0]
    assert spread_s >= (WORDS - 1) * INTERVAL_MS / 1000 * 0.9
    assert arrivals_s[0] < spread_s


# --- through the router's StreamRelay -----------------------------------------------------


def _relay(registry: ProviderRegistry, sink: list[StreamChunk], **request: Any) -> StreamRelay:
    return StreamRelay(registry, {**REQUEST, **request}, "req_1", "exe_1", sink.append)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("client_wants_usage", [True, False])
async def test_relay_assembles_and_bills_a_translated_stream(
    kind: ProviderKind, client_wants_usage: bool, paced_mock: str, registry: ProviderRegistry
) -> None:
    sink: list[StreamChunk] = []
    relay = _relay(registry, sink, stream_options={"include_usage": client_wants_usage})
    reply = await relay(_deployment(kind, paced_mock))
    chunks = [orjson.loads(chunk["data"]) for chunk in sink]
    assert [chunk["seq"] for chunk in sink] == list(range(len(sink)))
    words = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    completion = orjson.loads(reply.body)
    assert completion["choices"][0]["message"]["content"] == words
    assert len(words.split()) == WORDS
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert reply.usage["completion_tokens"] == WORDS  # billed whether or not the client asked
    assert (chunks[-1]["choices"] == []) is client_wants_usage


@pytest.mark.parametrize(
    ("kind", "error_event"), [("anthropic", ANTHROPIC_OVERLOADED), ("gemini", GEMINI_UNAVAILABLE)]
)
async def test_an_error_after_the_first_chunk_breaks_the_stream(
    kind: ProviderKind, error_event: dict[str, Any], gated: Gated, registry: ProviderRegistry
) -> None:
    gated.tail[kind] = [error_event]
    gated.gate.set()
    sink: list[StreamChunk] = []
    with pytest.raises(StreamBroken) as info:
        await _relay(registry, sink)(_deployment(kind, gated.root))
    assert len(sink) == 2  # role and the first word reached the client
    assert isinstance(info.value.__cause__, ProviderServerError)


@pytest.mark.parametrize(
    ("kind", "head"),
    [("anthropic", [*ANTHROPIC_HEAD[:3], ANTHROPIC_OVERLOADED]), ("gemini", [GEMINI_UNAVAILABLE])],
)
async def test_an_error_before_any_output_still_allows_fallback(
    kind: ProviderKind, head: list[dict[str, Any]], gated: Gated, registry: ProviderRegistry
) -> None:
    gated.head[kind] = head
    gated.gate.set()
    sink: list[StreamChunk] = []
    relay = _relay(registry, sink)
    with pytest.raises(ProviderServerError) as info:
        await relay(_deployment(kind, gated.root))
    assert type(info.value) is ProviderServerError  # retriable, not StreamBroken
    assert info.value.retriable
    assert (relay.sent, sink) == (0, [])
