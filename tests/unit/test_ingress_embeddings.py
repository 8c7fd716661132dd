"""POST /v1/embeddings on ingress/app.py, in-process over ASGI with the in-memory bus."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import httpx
import orjson
import pytest_asyncio
from openai.types import CreateEmbeddingResponse

from ingress.app import REQUEST_ID_HEADER, build_app
from ingress.bus import MemoryBus
from ingress.settings import IngressSettings
from schemas import topics
from schemas.openai import EMBEDDINGS_ENDPOINT, ErrorBody
from schemas.records import RequestEnvelope, Result
from schemas.routes import Deployment, ModelRoute, RoutesConfig, default_routes

ANSWER: Final = {
    "object": "list",
    "data": [
        {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]},
        {"object": "embedding", "index": 1, "embedding": [0.3, 0.4]},
    ],
    "model": "text-embedding-3-small",
    "usage": {"prompt_tokens": 4, "total_tokens": 4},
}
CLAUDE: Final = Deployment(name="claude", provider="anthropic", base_url="https://an.test")
ROUTES: Final = RoutesConfig(
    models={**default_routes({}).models, "claude": ModelRoute(deployments=(CLAUDE,))}
)


async def answer(envelope: RequestEnvelope) -> Result:
    return {
        "request_id": envelope["request_id"],
        "team_id": envelope["team_id"],
        "key_id": envelope["key_id"],
        "mode": envelope["mode"],
        "execution_id": "exec-1",
        "status": "succeeded",
        "http_status": 200,
        "body": orjson.dumps(ANSWER),
        "error_type": None,
        "requested_model": envelope["model"],
        "served_model": "text-embedding-3-small",
        "provider": "openai",
        "deployment": "mock",
        "attempts": 1,
        "prompt_tokens": 4,
        "completion_tokens": 0,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "received_at_ms": envelope["received_at_ms"],
        "finished_at_ms": envelope["received_at_ms"] + 5,
        "metadata": envelope["metadata"],
    }


@pytest_asyncio.fixture
async def app_client() -> AsyncIterator[tuple[httpx.AsyncClient, MemoryBus]]:
    bus = MemoryBus(answer)
    app = build_app(IngressSettings(id_secret="unit-secret"), ROUTES, bus, ingress_id="ingress-t")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        yield client, bus


Client = tuple[httpx.AsyncClient, MemoryBus]


async def test_embeddings_are_published_and_answered_in_openai_shape(app_client: Client) -> None:
    client, bus = app_client
    body: dict[str, Any] = {
        "model": "text-embedding-3-small",
        "input": ["a", "b"],
        "encoding_format": "float",
    }
    response = await client.post("/v1/embeddings", json=body)

    assert response.status_code == 200
    assert response.json() == ANSWER
    CreateEmbeddingResponse.model_validate(response.json())  # the openai SDK's own model
    assert response.headers["x-tollway-deployment"] == "mock"
    ((topic, envelope),) = bus.published
    assert topic == topics.REQUESTS_INTERACTIVE.name
    assert envelope["endpoint"] == EMBEDDINGS_ENDPOINT
    assert (envelope["mode"], envelope["model"]) == ("sync", "text-embedding-3-small")
    assert envelope["request_id"] == response.headers[REQUEST_ID_HEADER]
    assert envelope["reply_partition"] == bus.reply_partition
    assert orjson.loads(envelope["body"]) == body  # the client's bytes travel on


async def test_invalid_input_is_a_400_and_nothing_is_published(app_client: Client) -> None:
    client, bus = app_client
    response = await client.post(
        "/v1/embeddings", json={"model": "text-embedding-3-small", "input": []}
    )
    assert response.status_code == 400
    error = ErrorBody.model_validate_json(response.content).error
    assert (error.type, error.param) == ("invalid_request_error", "input")
    assert "empty array" in error.message
    assert bus.published == []


async def test_more_than_2048_inputs_is_a_clear_400(app_client: Client) -> None:
    client, bus = app_client
    body = {"model": "text-embedding-3-small", "input": ["x"] * 2049, "dimensions": 4}
    response = await client.post("/v1/embeddings", json=body)
    assert response.status_code == 400
    assert "at most 2048" in response.json()["error"]["message"]
    assert bus.published == []


async def test_an_anthropic_only_model_is_a_400_naming_it(app_client: Client) -> None:
    client, bus = app_client
    response = await client.post("/v1/embeddings", json={"model": "claude", "input": "x"})
    assert response.status_code == 400
    error = ErrorBody.model_validate_json(response.content).error
    assert (error.type, error.param) == ("invalid_request_error", "model")
    assert "`claude`" in error.message
    assert bus.published == []


async def test_unknown_model_is_404(app_client: Client) -> None:
    client, _ = app_client
    response = await client.post("/v1/embeddings", json={"model": "nope", "input": "x"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


async def test_an_answer_that_cannot_fit_a_result_is_refused_up_front(app_client: Client) -> None:
    client, bus = app_client
    body = {"model": "text-embedding-3-large", "input": ["x"] * 500}
    response = await client.post("/v1/embeddings", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "response_too_large"
    assert bus.published == []


async def test_chat_bodies_are_not_embeddings(app_client: Client) -> None:
    client, _ = app_client
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    response = await client.post("/v1/embeddings", json=chat)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Field required: input"


async def test_models_lists_the_embedding_models(app_client: Client) -> None:
    client, _ = app_client
    names = {m["id"] for m in (await client.get("/v1/models")).json()["data"]}
    assert {"text-embedding-3-small", "text-embedding-3-large", "gpt-4o-mini"} <= names
