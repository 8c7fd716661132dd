"""ingress/app.py driven in-process over ASGI with the in-memory bus: no Kafka, no sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import httpx
import orjson
import pytest
import pytest_asyncio

from ingress.app import REQUEST_ID_HEADER, build_app
from ingress.bus import MemoryBus
from ingress.ids import new_request_id
from ingress.settings import IngressSettings
from schemas import topics
from schemas.openai import ErrorBody
from schemas.records import RequestEnvelope, Result
from schemas.routes import default_routes

SECRET: Final = "unit-test-id-secret"
ROUTES: Final = default_routes({})
CHAT: Final = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
COMPLETION: Final = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
}

Responder = Callable[[RequestEnvelope], Awaitable[Result | None]]
ClientFactory = Callable[..., Awaitable[tuple[httpx.AsyncClient, MemoryBus]]]


def _result(envelope: RequestEnvelope, *, failed: bool = False) -> Result:
    body = (
        orjson.dumps(
            {"error": {"message": "no", "type": "upstream_error", "param": None, "code": "x"}}
        )
        if failed
        else orjson.dumps(COMPLETION)
    )
    return {
        "request_id": envelope["request_id"],
        "team_id": envelope["team_id"],
        "key_id": envelope["key_id"],
        "mode": envelope["mode"],
        "execution_id": "exec-1",
        "status": "failed" if failed else "succeeded",
        "http_status": 502 if failed else 200,
        "body": body,
        "error_type": "AllProvidersFailed" if failed else None,
        "requested_model": envelope["model"],
        "served_model": None if failed else "gpt-4o-mini-2024-07-18",
        "provider": "openai",
        "deployment": "mock",
        "attempts": 2,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "received_at_ms": envelope["received_at_ms"],
        "finished_at_ms": envelope["received_at_ms"] + 5,
        "metadata": envelope["metadata"],
    }


async def succeed(envelope: RequestEnvelope) -> Result:
    return _result(envelope)


async def fail(envelope: RequestEnvelope) -> Result:
    return _result(envelope, failed=True)


async def never(_: RequestEnvelope) -> None:
    return None


@pytest_asyncio.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    clients: list[httpx.AsyncClient] = []

    async def factory(
        responder: Responder = succeed, *, available: bool = True, **settings: Any
    ) -> tuple[httpx.AsyncClient, MemoryBus]:
        bus = MemoryBus(responder, available=available)
        app = build_app(
            IngressSettings(id_secret=SECRET, **settings), ROUTES, bus, ingress_id="ingress-test"
        )
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        clients.append(client)
        return client, bus

    yield factory
    for client in clients:
        await client.aclose()


def _assert_openai_error(response: httpx.Response, status: int, code: str | None) -> ErrorBody:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = ErrorBody.model_validate_json(response.content)
    assert body.error.code == code
    return body


async def test_sync_answers_with_the_result(make_client: ClientFactory) -> None:
    client, bus = await make_client()
    response = await client.post("/v1/chat/completions", json=CHAT)

    assert response.status_code == 200
    assert response.json() == COMPLETION
    request_id = response.headers[REQUEST_ID_HEADER]
    assert request_id.startswith("req_")
    assert response.headers["x-tollway-attempts"] == "2"
    assert response.headers["x-tollway-deployment"] == "mock"

    ((topic, envelope),) = bus.published
    assert topic == topics.REQUESTS_INTERACTIVE.name
    assert envelope["request_id"] == request_id
    assert (envelope["mode"], envelope["model"], envelope["team_id"]) == (
        "sync",
        "gpt-4o-mini",
        "default",
    )
    assert envelope["reply_partition"] == bus.reply_partition
    assert envelope["ingress_id"] == "ingress-test"
    assert orjson.loads(envelope["body"]) == CHAT
    assert envelope["deadline_ms"] - envelope["received_at_ms"] == 600_000


async def test_sync_failed_result_keeps_its_status_and_error_body(
    make_client: ClientFactory,
) -> None:
    client, _ = await make_client(fail)
    response = await client.post("/v1/chat/completions", json=CHAT)
    _assert_openai_error(response, 502, "x")
    assert response.headers[REQUEST_ID_HEADER].startswith("req_")


async def test_request_metadata_travels_in_the_envelope(make_client: ClientFactory) -> None:
    client, bus = await make_client()
    await client.post("/v1/chat/completions", json={**CHAT, "metadata": {"trace": "t-1"}})
    assert bus.published[0][1]["metadata"] == {"trace": "t-1"}


async def _wait_for_result(bus: MemoryBus, request_id: str) -> None:
    for _ in range(100):
        if await bus.lookup(request_id) is not None:
            return
        await asyncio.sleep(0)
    pytest.fail("the responder never answered")


async def test_async_202_then_poll(make_client: ClientFactory) -> None:
    client, bus = await make_client()
    response = await client.post("/v1/async/chat/completions", json=CHAT)

    assert response.status_code == 202
    body = response.json()
    request_id = body["id"]
    assert body == {"id": request_id, "object": "async.request", "status": "queued"}
    assert response.headers[REQUEST_ID_HEADER] == request_id
    assert response.headers["location"] == f"/v1/async/requests/{request_id}"
    ((_, envelope),) = bus.published
    assert (envelope["mode"], envelope["reply_partition"]) == ("async", None)

    await _wait_for_result(bus, request_id)
    polled = await client.get(f"/v1/async/requests/{request_id}")
    assert polled.status_code == 200
    assert polled.json() == {
        "id": request_id,
        "object": "async.request",
        "status": "succeeded",
        "http_status": 200,
        "deployment": "mock",
        "attempts": 2,
        "response": COMPLETION,
        "error": None,
    }


async def test_async_failed_result_is_polled_with_its_error(make_client: ClientFactory) -> None:
    client, bus = await make_client(fail)
    request_id = (await client.post("/v1/async/chat/completions", json=CHAT)).json()["id"]
    await _wait_for_result(bus, request_id)
    polled = (await client.get(f"/v1/async/requests/{request_id}")).json()
    assert (polled["status"], polled["http_status"], polled["response"]) == ("failed", 502, None)
    assert polled["error"]["code"] == "x"


async def test_poll_of_a_valid_id_without_result_is_queued(make_client: ClientFactory) -> None:
    client, _ = await make_client(never)
    request_id = new_request_id(SECRET.encode(), "default")
    response = await client.get(f"/v1/async/requests/{request_id}")
    assert response.status_code == 200
    assert response.json() == {"id": request_id, "object": "async.request", "status": "queued"}


@pytest.mark.parametrize(
    "request_id",
    [
        "req_" + "0" * 40,  # well-formed but not signed by this ingress
        new_request_id(b"another-ingress-secret", "default"),
        new_request_id(SECRET.encode(), "another-team"),
        "unknown",
        "req_'%20OR%201=1--",
    ],
)
async def test_poll_of_an_unknown_or_forged_id_is_404(
    make_client: ClientFactory, request_id: str
) -> None:
    client, _ = await make_client()
    response = await client.get(f"/v1/async/requests/{request_id}")
    body = _assert_openai_error(response, 404, "not_found")
    assert (body.error.type, body.error.param) == ("not_found_error", "request_id")


REJECTED: Final = {
    "malformed-json": (b"{not json", 400, "invalid_json", None),
    "not-an-object": (b"[]", 400, None, None),
    "unknown-field": (orjson.dumps({**CHAT, "temprature": 1}), 400, None, "temprature"),
    "unknown-model": (orjson.dumps({**CHAT, "model": "claude-3"}), 404, "model_not_found", "model"),
    "stream-string": (orjson.dumps({**CHAT, "stream": "yes"}), 400, None, "stream"),
}


@pytest.mark.parametrize(
    ("content", "status", "code", "param"), list(REJECTED.values()), ids=list(REJECTED)
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/async/chat/completions"])
async def test_rejected_requests_publish_nothing(
    make_client: ClientFactory,
    path: str,
    content: bytes,
    status: int,
    code: str | None,
    param: str | None,
) -> None:
    client, bus = await make_client()
    response = await client.post(path, content=content)
    body = _assert_openai_error(response, status, code)
    assert body.error.param == param
    assert bus.published == []


async def test_body_over_the_limit_is_413(make_client: ClientFactory) -> None:
    client, bus = await make_client(max_body_bytes=2048)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
    response = await client.post("/v1/chat/completions", json=big)
    _assert_openai_error(response, 413, "request_too_large")
    assert bus.published == []


async def test_streamed_body_over_the_limit_is_413(make_client: ClientFactory) -> None:
    """Without a Content-Length the limit is enforced while reading."""
    client, bus = await make_client(max_body_bytes=2048)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 512

    response = await client.post("/v1/chat/completions", content=chunks())
    _assert_openai_error(response, 413, "request_too_large")
    assert bus.published == []


async def test_body_at_the_limit_is_accepted(make_client: ClientFactory) -> None:
    client, _ = await make_client(max_body_bytes=2048)
    content = orjson.dumps(CHAT)
    content += b" " * (2048 - len(content))
    response = await client.post("/v1/chat/completions", content=content)
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/async/chat/completions"])
async def test_bus_unavailable_is_503_and_nothing_is_published(
    make_client: ClientFactory, path: str
) -> None:
    client, bus = await make_client(available=False)
    response = await client.post(path, json=CHAT)
    body = _assert_openai_error(response, 503, "service_unavailable")
    assert body.error.type == "service_unavailable"
    assert bus.published == []


async def test_sync_timeout_is_504_with_the_request_id(make_client: ClientFactory) -> None:
    client, bus = await make_client(never, sync_timeout_s=0.05)
    response = await client.post("/v1/chat/completions", json=CHAT)
    body = _assert_openai_error(response, 504, "deadline_exceeded")
    request_id = response.headers[REQUEST_ID_HEADER]
    assert request_id in body.error.message
    ((_, envelope),) = bus.published  # the request was accepted: its result can still be polled
    assert envelope["request_id"] == request_id
    assert envelope["deadline_ms"] - envelope["received_at_ms"] == 50


async def test_models_lists_public_names(make_client: ClientFactory) -> None:
    client, _ = await make_client()
    response = await client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ROUTES.public_names()
    assert all(m["object"] == "model" and m["owned_by"] == "tollway" for m in body["data"])


async def test_healthz(make_client: ClientFactory) -> None:
    client, _ = await make_client(available=False)  # alive even when Kafka is away
    response = await client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_readyz_ready(make_client: ClientFactory) -> None:
    client, _ = await make_client()
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "ingress_id": "ingress-test"}


async def test_readyz_not_ready(make_client: ClientFactory) -> None:
    client, _ = await make_client(available=False)
    _assert_openai_error(await client.get("/readyz"), 503, "service_unavailable")


@pytest.mark.parametrize(
    ("method", "path", "status", "error_type"),
    [
        ("GET", "/v1/nothing-here", 404, "not_found_error"),
        ("GET", "/", 404, "not_found_error"),
        ("POST", "/v1/completions", 404, "not_found_error"),
        ("GET", "/v1/chat/completions", 405, "invalid_request_error"),
        ("DELETE", "/v1/models", 405, "invalid_request_error"),
    ],
)
async def test_unknown_routes_answer_in_openai_format(
    make_client: ClientFactory, method: str, path: str, status: int, error_type: str
) -> None:
    client, _ = await make_client()
    response = await client.request(method, path)
    body = _assert_openai_error(response, status, None)
    assert body.error.type == error_type


class BrokenBus(MemoryBus):
    """A bus whose publish fails with an exception that is not a TollwayError."""

    async def publish(self, topic: str, envelope: RequestEnvelope) -> None:
        raise RuntimeError("password=hunter2 at kafka-internal:9092")


async def test_unexpected_errors_never_echo_internals() -> None:
    app = build_app(IngressSettings(id_secret=SECRET), ROUTES, BrokenBus(succeed))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    body = _assert_openai_error(response, 500, "RuntimeError")
    assert body.error.message == "Internal error."
    assert b"hunter2" not in response.content
    assert b"kafka-internal" not in response.content


async def test_async_callback_url_moves_into_reserved_metadata(make_client: ClientFactory) -> None:
    client, bus = await make_client(never)
    body = {**CHAT, "callback_url": "https://hooks.example.com/tollway"}
    response = await client.post("/v1/async/chat/completions", json=body)
    assert response.status_code == 202
    ((_, envelope),) = bus.published
    assert envelope["metadata"]["tollway.callback_url"] == "https://hooks.example.com/tollway"
    assert b"callback_url" not in envelope["body"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {**CHAT, "callback_url": "https://hooks.example.com/x"}),
        ("/v1/async/chat/completions", {**CHAT, "callback_url": "ftp://hooks.example.com/x"}),
        ("/v1/async/chat/completions", {**CHAT, "metadata": {"tollway.callback_url": "x"}}),
    ],
)
async def test_bad_or_misplaced_callbacks_are_refused(
    make_client: ClientFactory, path: str, body: dict[str, Any]
) -> None:
    client, bus = await make_client(never)
    response = await client.post(path, json=body)
    assert response.status_code == 400
    assert bus.published == []
