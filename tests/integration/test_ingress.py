"""The ingress app on the real broker (KafkaBus), served in-process, with a router task."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from ingress.app import build_app
from ingress.kafka_bus import KafkaBus
from ingress.settings import IngressSettings
from schemas.settings import KafkaSettings
from tests.integration.conftest import routes_for

pytestmark = pytest.mark.kafka

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
async def bus_and_gateway(
    kafka_bootstrap: str, mock_url: str, run_router: Any
) -> AsyncIterator[tuple[KafkaBus, httpx.AsyncClient]]:
    run_router("tollway-router-it")
    bus = KafkaBus(
        KafkaSettings(bootstrap=kafka_bootstrap), client_id="it-ingress", result_index_max=10_000
    )
    await bus.start()
    app = build_app(IngressSettings(sync_timeout_s=30), routes_for(mock_url), bus)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://ingress", timeout=30
    ) as client:
        for _ in range(100):
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        yield bus, client
    await bus.stop()


@pytest.fixture
def gateway(bus_and_gateway: tuple[KafkaBus, httpx.AsyncClient]) -> httpx.AsyncClient:
    return bus_and_gateway[1]


async def test_sync_chat_completion_goes_through_kafka(gateway: httpx.AsyncClient) -> None:
    response = await gateway.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert response.headers["x-tollway-request-id"].startswith("req_")
    assert response.headers["x-tollway-deployment"] == "mock"


async def test_many_concurrent_sync_requests_each_get_their_own_answer(
    gateway: httpx.AsyncClient,
) -> None:
    bodies = [
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"question {i}"}]}
        for i in range(100)
    ]
    responses = await asyncio.gather(
        *(gateway.post("/v1/chat/completions", json=b) for b in bodies)
    )
    assert [r.status_code for r in responses] == [200] * 100
    assert len({r.headers["x-tollway-request-id"] for r in responses}) == 100


async def test_async_request_is_accepted_then_fetchable_by_id(gateway: httpx.AsyncClient) -> None:
    accepted = await gateway.post("/v1/async/chat/completions", json=CHAT)
    assert accepted.status_code == 202
    request_id = accepted.json()["id"]
    for _ in range(200):
        polled = await gateway.get(f"/v1/async/requests/{request_id}")
        assert polled.status_code == 200
        if polled.json()["status"] != "queued":
            break
        await asyncio.sleep(0.05)
    assert polled.json()["status"] == "succeeded"
    assert polled.json()["response"]["object"] == "chat.completion"


async def test_only_async_results_are_indexed_for_polling(
    bus_and_gateway: tuple[KafkaBus, httpx.AsyncClient],
) -> None:
    """Sync answers went to their caller: indexing them too tripled the ingress's memory
    growth in the soak (ingress/kafka_bus.py)."""
    bus, gateway = bus_and_gateway
    answered = await gateway.post("/v1/chat/completions", json=CHAT)
    accepted = await gateway.post("/v1/async/chat/completions", json=CHAT)
    assert (answered.status_code, accepted.status_code) == (200, 202)
    async_id = accepted.json()["id"]
    for _ in range(200):
        if bus.has_result(async_id):
            break
        await asyncio.sleep(0.05)
    assert bus.has_result(async_id)
    await asyncio.sleep(1.0)
    assert not bus.has_result(answered.headers["x-tollway-request-id"])


async def test_unknown_model_is_refused_before_kafka(gateway: httpx.AsyncClient) -> None:
    response = await gateway.post("/v1/chat/completions", json={**CHAT, "model": "no-such-model"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


async def test_kafka_unreachable_answers_503_and_never_2xx(mock_url: str) -> None:
    bus = KafkaBus(
        KafkaSettings(bootstrap="127.0.0.1:9", request_timeout_ms=1_000),
        client_id="it-down",
        result_index_max=1_000,
    )
    app = build_app(IngressSettings(), routes_for(mock_url), bus)
    # The bus never started (the broker is unreachable): readiness is 503 and a publish fails.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://ingress"
    ) as client:
        assert (await client.get("/readyz")).status_code == 503
        response = await client.post("/v1/async/chat/completions", json=CHAT)
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "service_unavailable"


async def test_streaming_relays_chunks_through_kafka(gateway: httpx.AsyncClient) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with gateway.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text
    assert chunks[-1]["usage"]["completion_tokens"] > 0


async def test_a_large_prompt_crosses_kafka(gateway: httpx.AsyncClient) -> None:
    """A 3 MiB prompt is over Kafka's 1 MiB default: the request topics take 12 MiB records."""
    big = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 3_000_000}]}
    response = await gateway.post("/v1/chat/completions", json=big)
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"
