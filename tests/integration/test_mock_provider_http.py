"""The mock LLM provider's aiohttp app, in-process on loopback (TestServer/TestClient).

Latency 0, so the whole file takes about a second. The pure behaviour table is in
tests/unit/test_mock_provider.py.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from workers.providers.mock.behaviour import (
    MockSettings,
    flaky_fails,
)
from workers.providers.mock.server import STATS_KEY, build_app, serve

Client = TestClient[web.Request, web.Application]

SETTINGS = MockSettings(latency_ms=0, completion_tokens=16, seed=7)
HELLO = {"messages": [{"role": "user", "content": "hello"}]}


def _request(**fields: object) -> dict[str, object]:
    return {"model": "mock", **HELLO, **fields}


# --- the aiohttp app --------------------------------------------------------------------


@pytest_asyncio.fixture
async def client() -> AsyncIterator[Client]:
    async with TestClient(TestServer(build_app(SETTINGS))) as test_client:
        yield test_client


async def _post(client: Client, body: object) -> tuple[int, Any, aiohttp.ClientResponse]:
    response = await client.post(
        "/v1/chat/completions",
        data=orjson.dumps(body),
        headers={"Authorization": "Bearer sk-anything", "Content-Type": "application/json"},
    )
    return response.status, orjson.loads(await response.read()), response


async def test_normal_reply_has_the_openai_shape(client: Client) -> None:
    status, body, response = await _post(client, _request())
    assert status == 200
    assert response.content_type == "application/json"
    assert str(body["id"]).startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == "mock"
    assert isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split(" ")) == 16
    usage = body["usage"]
    assert usage == {
        "prompt_tokens": 5,
        "completion_tokens": 16,
        "total_tokens": 21,
    }


async def test_same_request_same_answer_new_id(client: Client) -> None:
    _, first, _ = await _post(client, _request())
    _, second, _ = await _post(client, _request())
    assert first["choices"] == second["choices"]
    assert first["usage"] == second["usage"]
    assert first["id"] != second["id"]


async def test_max_tokens_gives_finish_reason_length(client: Client) -> None:
    _, body, _ = await _post(client, _request(max_tokens=4))
    [choice] = body["choices"]
    assert choice["finish_reason"] == "length"
    assert len(choice["message"]["content"].split(" ")) == 4
    assert body["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize(
    ("model", "status", "error_type", "code"),
    [
        ("mock-error-500", 500, "server_error", None),
        ("mock-error-400", 400, "invalid_request_error", None),
        ("mock-error-503", 503, "server_error", None),
        ("mock-context-window", 400, "invalid_request_error", "context_length_exceeded"),
        ("mock-content-filter", 400, "invalid_request_error", "content_filter"),
        ("mock-flaky-100", 500, "server_error", None),
        ("mock-slow-x", 400, "invalid_request_error", "invalid_mock_model"),
    ],
)
async def test_error_behaviours(
    client: Client, model: str, status: int, error_type: str, code: str | None
) -> None:
    got_status, body, _ = await _post(client, _request(model=model))
    assert got_status == status
    error = body["error"]
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == (error_type, code)


async def test_rate_limit_sends_retry_after(client: Client) -> None:
    status, body, response = await _post(client, _request(model="mock-429-2"))
    assert status == 429
    assert response.headers["Retry-After"] == "2"
    assert body["error"]["code"] == "rate_limit_exceeded"


async def test_flaky_model_fails_on_the_seeded_calls(client: Client) -> None:
    statuses = [(await _post(client, _request(model="mock-flaky-40")))[0] for _ in range(30)]
    expected = [500 if flaky_fails(SETTINGS.seed, i, 40) else 200 for i in range(30)]
    assert statuses == expected


async def _events(response: aiohttp.ClientResponse) -> list[bytes]:
    text = await response.read()
    assert text.endswith(b"\n\n")
    events = text.split(b"\n\n")[:-1]
    assert all(event.startswith(b"data: ") for event in events)
    return [event.removeprefix(b"data: ") for event in events]


async def test_streaming_sends_word_deltas_usage_and_done(client: Client) -> None:
    _, plain, _ = await _post(client, _request(max_tokens=5))
    response = await client.post(
        "/v1/chat/completions",
        json=_request(max_tokens=5, stream=True, stream_options={"include_usage": True}),
    )
    assert response.status == 200
    assert response.content_type == "text/event-stream"
    events = await _events(response)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(event) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    role, *words, final, usage = chunks
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(words) == 5
    content = "".join(word["choices"][0]["delta"]["content"] for word in words)
    assert content == plain["choices"][0]["message"]["content"]
    assert final["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "length",
    }
    assert all(chunk["usage"] is None for chunk in [role, *words, final])
    assert usage["choices"] == []
    assert usage["usage"] == plain["usage"]


async def test_streaming_without_usage_has_no_usage_chunk(client: Client) -> None:
    response = await client.post("/v1/chat/completions", json=_request(stream=True))
    events = await _events(response)
    chunks = [orjson.loads(event) for event in events[:-1]]
    assert len(chunks) == 1 + 16 + 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in chunk for chunk in chunks)


async def test_streamed_error_is_a_plain_json_error(client: Client) -> None:
    status, body, response = await _post(client, _request(model="mock-error-500", stream=True))
    assert status == 500
    assert response.content_type == "application/json"
    assert body["error"]["type"] == "server_error"


async def test_streaming_with_a_chunk_interval() -> None:
    settings = MockSettings(latency_ms=0, completion_tokens=3, stream_chunk_interval_ms=1)
    async with TestClient(TestServer(build_app(settings))) as paced:
        response = await paced.post("/v1/chat/completions", json=_request(stream=True))
        events = await _events(response)
    assert len(events) == 1 + 3 + 1 + 1


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"{not json", None),
        (b"", None),
        (b"[1, 2]", None),
        (b'{"messages": []}', "model"),
        (b'{"model": 5, "messages": []}', "model"),
    ],
)
async def test_unreadable_requests_answer_400(
    client: Client, raw: bytes, param: str | None
) -> None:
    response = await client.post("/v1/chat/completions", data=raw)
    assert response.status == 400
    body = orjson.loads(await response.read())
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param
    assert body["error"]["code"] is None
    assert body["error"]["message"]


async def test_models_and_healthz(client: Client) -> None:
    response = await client.get("/v1/models")
    models = orjson.loads(await response.read())
    assert models["object"] == "list"
    assert "mock-error-500" in {model["id"] for model in models["data"]}
    assert {model["object"] for model in models["data"]} == {"model"}
    health = await client.get("/healthz")
    assert (health.status, orjson.loads(await health.read())) == (200, {"status": "ok"})


async def test_stats_count_chat_requests_by_status_and_model(client: Client) -> None:
    await _post(client, _request())
    await _post(client, _request())
    await _post(client, _request(model="mock-error-500"))
    await client.post("/v1/chat/completions", data=b"{")
    await client.get("/healthz")
    stats = orjson.loads(await (await client.get("/stats")).read())
    assert stats == {
        "total": 4,
        "by_status": {"200": 2, "400": 1, "500": 1},
        "by_model": {"mock": 2, "mock-error-500": 1},
    }
    assert client.app is not None
    assert client.app[STATS_KEY].total == 4
    reset = orjson.loads(await (await client.delete("/stats")).read())
    assert reset == {"total": 0, "by_status": {}, "by_model": {}}


async def test_latency_applies_and_timeout_never_answers(client: Client) -> None:
    loop = asyncio.get_running_loop()
    started_s = loop.time()
    status, _, _ = await _post(client, _request(model="mock-slow-60"))
    assert status == 200
    assert loop.time() - started_s >= 0.06
    with pytest.raises(asyncio.TimeoutError):
        await client.post(
            "/v1/chat/completions",
            json=_request(model="mock-timeout"),
            timeout=aiohttp.ClientTimeout(total=0.1),
        )
    stats = orjson.loads(await (await client.get("/stats")).read())
    assert stats["by_model"]["mock-timeout"] == 1


async def test_serve_listens_until_cancelled() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = asyncio.create_task(serve("127.0.0.1", port, SETTINGS))
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    assert response.status == 200
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.01)
        else:
            pytest.fail("serve() never started listening")
    server.cancel()
    with pytest.raises(asyncio.CancelledError):
        await server
