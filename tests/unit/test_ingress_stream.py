"""Streaming through the ingress (SSE relayed from reply chunks), with the in-memory bus."""

from __future__ import annotations

from typing import Final

import httpx
import orjson

from ingress.app import REQUEST_ID_HEADER, build_app
from ingress.bus import MemoryBus, StreamItem
from ingress.settings import IngressSettings
from schemas.records import RequestEnvelope, StreamChunk
from schemas.routes import default_routes
from tests.unit.test_ingress_app import _result
from workers.cache.canonical import CACHE_HEADER

STREAM_CHAT: Final = {
    "model": "gpt-4o-mini",
    "stream": True,
    "messages": [{"role": "user", "content": "hello"}],
}


def _chunk(
    envelope: RequestEnvelope, seq: int, text: str, execution: str = "exec-1"
) -> StreamChunk:
    data = {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
    }
    return {
        "request_id": envelope["request_id"],
        "execution_id": execution,
        "seq": seq,
        "data": orjson.dumps(data),
        "cache": None,
    }


def _client(bus: MemoryBus) -> httpx.AsyncClient:
    app = build_app(IngressSettings(id_secret="s", sync_timeout_s=5), default_routes({}), bus)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def _events(body: bytes) -> list[bytes]:
    return [line[6:] for line in body.split(b"\n\n") if line.startswith(b"data: ")]


async def test_chunks_are_relayed_in_order_then_done() -> None:
    async def stream(envelope: RequestEnvelope) -> list[StreamItem]:
        return [
            _chunk(envelope, 0, "Hel"),
            _chunk(envelope, 0, "stale", execution="exec-0"),  # another execution: dropped
            _chunk(envelope, 1, "lo"),
            _result(envelope),
        ]

    async with _client(MemoryBus(stream)) as client:
        response = await client.post("/v1/chat/completions", json=STREAM_CHAT)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers[REQUEST_ID_HEADER].startswith("req_")
    events = _events(response.content)
    assert events[-1] == b"[DONE]"
    texts = [orjson.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert texts == ["Hel", "lo"]


async def test_a_failure_before_the_first_chunk_is_a_plain_error_response() -> None:
    async def fail(envelope: RequestEnvelope) -> list[StreamItem]:
        return [_result(envelope, failed=True)]

    async with _client(MemoryBus(fail)) as client:
        response = await client.post("/v1/chat/completions", json=STREAM_CHAT)
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "upstream_error"


async def test_a_failure_after_chunks_is_reported_in_stream() -> None:
    async def broken(envelope: RequestEnvelope) -> list[StreamItem]:
        return [_chunk(envelope, 0, "partial"), _result(envelope, failed=True)]

    async with _client(MemoryBus(broken)) as client:
        response = await client.post("/v1/chat/completions", json=STREAM_CHAT)
    events = _events(response.content)
    assert response.status_code == 200
    assert orjson.loads(events[1])["error"]["type"] == "upstream_error"
    assert events[-1] == b"[DONE]"


async def test_streaming_is_refused_on_the_async_endpoint() -> None:
    async def never(_: RequestEnvelope) -> None:
        return None

    async with _client(MemoryBus(never)) as client:
        response = await client.post("/v1/async/chat/completions", json=STREAM_CHAT)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "stream"


async def test_a_stream_served_from_the_cache_says_so_in_its_headers() -> None:
    async def cached(envelope: RequestEnvelope) -> list[StreamItem]:
        first = _chunk(envelope, 0, "Hel")
        first["cache"] = "semantic-hit"  # set by the router's cache replay on chunk 0 only
        return [first, _chunk(envelope, 1, "lo"), _result(envelope)]

    async def live(envelope: RequestEnvelope) -> list[StreamItem]:
        return [_chunk(envelope, 0, "Hel"), _result(envelope)]

    async with _client(MemoryBus(cached)) as client:
        response = await client.post("/v1/chat/completions", json=STREAM_CHAT)
    assert response.headers[CACHE_HEADER] == "semantic-hit"
    assert _events(response.content)[-1] == b"[DONE]"
    async with _client(MemoryBus(live)) as client:
        response = await client.post("/v1/chat/completions", json=STREAM_CHAT)
    assert CACHE_HEADER not in response.headers
