"""Idempotency-Key: the pure rules and the ASGI middleware over the in-memory store and bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from ingress.app import REQUEST_ID_HEADER, build_app
from ingress.batches_api import batches_routes
from ingress.bus import MemoryBus
from ingress.files_api import files_routes
from ingress.idempotency import (
    Entry,
    IdempotencyKeyReused,
    IdempotentResponseUnavailable,
    InvalidIdempotencyKey,
    MemoryIdempotencyStore,
    asks_for_stream,
    kept_headers,
    request_hash,
    request_seed,
    resolve,
    storable,
    validate_key,
)
from ingress.idempotency_kafka import _Indexed, keeps
from ingress.idempotency_middleware import IdempotencyMiddleware
from ingress.settings import IngressSettings
from schemas.errors import TollwayError
from schemas.records import RequestEnvelope, Result
from schemas.routes import default_routes
from workers.batches.filestore import MemoryFileStore
from workers.batches.view import MemoryBatchView

SECRET: Final = "unit-test-id-secret"
CHAT: Final = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
OTHER_CHAT: Final = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "bye"}]}
LINE: Final = (
    b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", '
    b'"body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}\n'
)


# --- pure rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "valid"),
    [
        ("k", True),
        ("order-123 retry", True),
        ("~" * 255, True),
        ("x" * 256, False),
        ("", False),
        ("caf\u00e9", False),
        ("tab\there", False),
        ("new\nline", False),
    ],
)
def test_keys_are_1_to_255_printable_ascii(raw: str, valid: bool) -> None:
    if valid:
        assert validate_key(raw) == raw
    else:
        with pytest.raises(InvalidIdempotencyKey) as caught:
            validate_key(raw)
        assert (caught.value.http_status, caught.value.code) == (400, "invalid_idempotency_key")


def test_the_request_hash_covers_method_path_and_body() -> None:
    base = request_hash("POST", "/v1/batches", b"{}")
    assert base == request_hash("post", "/v1/batches", b"{}")
    assert len({
        base,
        request_hash("PUT", "/v1/batches", b"{}"),
        request_hash("POST", "/v1/files", b"{}"),
        request_hash("POST", "/v1/batches", b"{ }"),
        request_hash("POST", "/v1/batches{}", b""),  # no ambiguity between path and body
    }) == 5  # fmt: skip


@pytest.mark.parametrize(
    ("status", "kept"),
    [(200, True), (202, True), (400, True), (404, True), (413, True), (422, True),
     (401, False), (403, False), (408, False), (409, False), (429, False),
     (500, False), (502, False), (503, False), (504, False), (101, False)],
)  # fmt: skip
def test_which_answers_are_kept(status: int, kept: bool) -> None:
    assert storable(status) is kept


def test_replayed_headers_leave_out_what_the_server_owns() -> None:
    headers = [("Content-Type", "application/json"), ("content-length", "9"), ("Date", "x"),
               ("x-tollway-request-id", "req_1"), ("location", "/v1/x")]  # fmt: skip
    assert kept_headers(headers) == (
        ("content-type", "application/json"),
        ("x-tollway-request-id", "req_1"),
        ("location", "/v1/x"),
    )


@pytest.mark.parametrize(
    ("body", "stream"),
    [(b'{"stream": true}', True), (b'{"stream": false}', False), (b'{"x": "\\"stream\\""}', False),
     (b'{"stream": true', False), (b"[]", False), (b'{"a": {"stream": true}}', False)],
)  # fmt: skip
def test_streaming_requests_are_recognised(body: bytes, stream: bool) -> None:
    assert asks_for_stream(body) is stream


def _entry(body: bytes | None = b"{}", digest: bytes = b"h" * 32, now_ms: int = 0) -> Entry:
    return Entry("default", "k", digest, 200, (), body, 2, now_ms, now_ms + 1_000)


def test_resolve_replays_refuses_another_request_and_a_marker() -> None:
    assert resolve(_entry(), b"h" * 32).body == b"{}"
    with pytest.raises(IdempotencyKeyReused) as reused:
        resolve(_entry(), b"x" * 32)
    assert (reused.value.http_status, reused.value.code) == (422, "idempotency_key_reused")
    with pytest.raises(IdempotentResponseUnavailable) as marker:
        resolve(_entry(body=None), b"h" * 32)
    assert marker.value.http_status == 409


def test_the_seed_depends_on_team_key_and_request() -> None:
    seed = request_seed("default", "k", b"1" * 32)
    assert seed == request_seed("default", "k", b"1" * 32)
    assert seed not in {
        request_seed("other", "k", b"1" * 32),
        request_seed("default", "k2", b"1" * 32),
        request_seed("default", "k", b"2" * 32),
    }


async def test_the_memory_store_keeps_the_first_entry_until_it_expires() -> None:
    store = MemoryIdempotencyStore()
    assert await store.save(_entry(b"first"))
    assert not await store.save(_entry(b"second", now_ms=10))
    found = await store.lookup("default", "k", 999)
    assert found is not None
    assert found.body == b"first"
    assert await store.lookup("default", "k", 1_000) is None  # expired
    assert await store.save(_entry(b"third", now_ms=1_000))


@pytest.mark.parametrize(
    ("current", "candidate", "replaces"),
    [
        (None, (0, 100, 5), True),
        ((0, 100, 5), (0, 100, 5), False),  # the same record read again
        ((0, 100, 5), (10, 110, 7), False),  # a racing second writer: the first stays
        ((10, 110, 7), (0, 100, 5), True),  # our own save applied before an earlier record
        ((0, 100, 5), (100, 200, 9), True),  # a new life of the key after expiry
    ],
)
def test_the_kafka_index_keeps_the_first_unexpired_record(
    current: tuple[int, int, int] | None, candidate: tuple[int, int, int], replaces: bool
) -> None:
    def indexed(t: tuple[int, int, int]) -> _Indexed:
        return _Indexed(b"h", t[0], t[1], t[2])

    assert keeps(None if current is None else indexed(current), indexed(candidate)) is replaces


# --- the middleware on the real ingress app -------------------------------------------------------


def _result(envelope: RequestEnvelope, body: bytes = b'{"ok": true}') -> Result:
    return {
        "request_id": envelope["request_id"], "team_id": envelope["team_id"], "key_id": None,
        "mode": envelope["mode"], "execution_id": "exec-1", "status": "succeeded",
        "http_status": 200, "body": body, "error_type": None,
        "requested_model": envelope["model"], "served_model": envelope["model"],
        "provider": "openai", "deployment": "mock", "attempts": 1, "prompt_tokens": 0,
        "completion_tokens": 0, "cached_tokens": 0, "reasoning_tokens": 0,
        "cache_write_tokens": 0, "received_at_ms": envelope["received_at_ms"],
        "finished_at_ms": envelope["received_at_ms"] + 5, "metadata": envelope["metadata"],
    }  # fmt: skip


async def _answer(envelope: RequestEnvelope) -> Result:
    return _result(envelope)


class Replica:
    """One ingress app behind the middleware, with its bus and the store it shares."""

    def __init__(
        self,
        store: MemoryIdempotencyStore,
        responder: Callable[[RequestEnvelope], Any] = _answer,
        **options: Any,
    ) -> None:
        self.bus = MemoryBus(responder)
        app = build_app(IngressSettings(id_secret=SECRET), default_routes({}), self.bus)
        self.middleware = IdempotencyMiddleware(
            app, store, max_body_bytes=1 << 20, max_upload_bytes=1 << 20, **options
        )
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.middleware), base_url="http://test"
        )

    async def post(self, path: str, body: Any, key: str | None = "key-1") -> httpx.Response:
        headers = {} if key is None else {"Idempotency-Key": key}
        return await self.client.post(path, json=body, headers=headers)


@pytest.fixture
async def replicas() -> AsyncIterator[Callable[..., Replica]]:
    made: list[Replica] = []

    def make(store: MemoryIdempotencyStore | None = None, **options: Any) -> Replica:
        replica = Replica(store or MemoryIdempotencyStore(), **options)
        made.append(replica)
        return replica

    yield make
    for replica in made:
        await replica.client.aclose()


def _error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


async def test_the_same_key_and_body_replays_the_first_answer(
    replicas: Callable[..., Replica],
) -> None:
    ingress = replicas()
    first = await ingress.post("/v1/async/chat/completions", CHAT)
    again = await ingress.post("/v1/async/chat/completions", CHAT)

    assert first.status_code == again.status_code == 202
    assert again.content == first.content
    assert again.headers[REQUEST_ID_HEADER] == first.headers[REQUEST_ID_HEADER]
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert len(ingress.bus.published) == 1


async def test_another_body_under_the_key_is_422(replicas: Callable[..., Replica]) -> None:
    ingress = replicas()
    await ingress.post("/v1/async/chat/completions", CHAT)
    other = await ingress.post("/v1/async/chat/completions", OTHER_CHAT)
    other_path = await ingress.post("/v1/chat/completions", CHAT)

    assert (other.status_code, _error_code(other)) == (422, "idempotency_key_reused")
    assert (other_path.status_code, _error_code(other_path)) == (422, "idempotency_key_reused")
    assert len(ingress.bus.published) == 1


async def test_keys_are_independent_and_requests_without_a_key_always_run(
    replicas: Callable[..., Replica],
) -> None:
    ingress = replicas()
    for key in ("a", "b", None, None):
        assert (await ingress.post("/v1/async/chat/completions", CHAT, key)).status_code == 202
    assert len(ingress.bus.published) == 4


async def test_a_concurrent_duplicate_is_409_then_the_answer_is_replayed(
    replicas: Callable[..., Replica],
) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(envelope: RequestEnvelope) -> Result:
        started.set()
        await release.wait()
        return _result(envelope)

    ingress = replicas(responder=slow)
    first = asyncio.create_task(ingress.post("/v1/chat/completions", CHAT))
    await started.wait()
    duplicate = await ingress.post("/v1/chat/completions", CHAT)
    assert (duplicate.status_code, _error_code(duplicate)) == (409, "idempotency_key_in_progress")
    assert duplicate.headers["retry-after"] == "1"

    release.set()
    assert (await first).status_code == 200
    replay = await ingress.post("/v1/chat/completions", CHAT)
    assert (replay.status_code, replay.headers["idempotent-replayed"]) == (200, "true")
    assert replay.content == (await first).content
    assert len(ingress.bus.published) == 1
    assert ingress.middleware.in_flight == set()


async def test_a_streaming_request_with_a_key_is_refused(replicas: Callable[..., Replica]) -> None:
    ingress = replicas()
    response = await ingress.post("/v1/chat/completions", {**CHAT, "stream": True})
    assert (response.status_code, _error_code(response)) == (400, "idempotency_stream_unsupported")
    assert response.json()["error"]["param"] == "stream"
    assert ingress.bus.published == []


async def test_an_invalid_key_is_400(replicas: Callable[..., Replica]) -> None:
    ingress = replicas()
    response = await ingress.post("/v1/async/chat/completions", CHAT, "x" * 256)
    assert (response.status_code, _error_code(response)) == (400, "invalid_idempotency_key")
    assert ingress.bus.published == []


async def test_errors_of_the_moment_are_not_kept(replicas: Callable[..., Replica]) -> None:
    ingress = replicas()
    ingress.bus.available = False
    refused = await ingress.post("/v1/async/chat/completions", CHAT)
    assert refused.status_code == 503
    ingress.bus.available = True
    accepted = await ingress.post("/v1/async/chat/completions", CHAT)
    assert accepted.status_code == 202
    assert "idempotent-replayed" not in accepted.headers


async def test_a_deterministic_answer_like_400_is_kept(replicas: Callable[..., Replica]) -> None:
    ingress = replicas()
    bad = {"model": "gpt-4o-mini", "messages": []}
    first = await ingress.post("/v1/async/chat/completions", bad)
    again = await ingress.post("/v1/async/chat/completions", bad)
    assert first.status_code == again.status_code == 400
    assert again.headers["idempotent-replayed"] == "true"


async def test_replicas_sharing_the_store_answer_the_same(
    replicas: Callable[..., Replica],
) -> None:
    store = MemoryIdempotencyStore()
    one, two = replicas(store), replicas(store)
    first = await one.post("/v1/async/chat/completions", CHAT)
    second = await two.post("/v1/async/chat/completions", CHAT)
    assert second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"
    assert len(one.bus.published) + len(two.bus.published) == 1


async def test_racing_replicas_publish_one_request_id(replicas: Callable[..., Replica]) -> None:
    """Claims are per replica: two replicas that both run a new key publish the same id."""
    one, two = replicas(), replicas()  # separate stores: neither sees the other's entry
    first = await one.post("/v1/async/chat/completions", CHAT)
    second = await two.post("/v1/async/chat/completions", CHAT)
    assert first.json()["id"] == second.json()["id"]
    assert one.bus.published[0][1]["request_id"] == two.bus.published[0][1]["request_id"]
    other = await two.post("/v1/async/chat/completions", CHAT, key="key-2")
    assert other.json()["id"] != first.json()["id"]


async def test_a_response_too_large_to_keep_is_never_run_twice(
    replicas: Callable[..., Replica],
) -> None:
    big = b'{"data": "' + b"x" * 5_000 + b'"}'

    async def large(envelope: RequestEnvelope) -> Result:
        return _result(envelope, big)

    ingress = replicas(responder=large, max_response_bytes=1_000)
    first = await ingress.post("/v1/chat/completions", CHAT)
    assert (first.status_code, first.content) == (200, big)
    again = await ingress.post("/v1/chat/completions", CHAT)
    assert (again.status_code, _error_code(again)) == (409, "idempotency_response_unavailable")
    other = await ingress.post("/v1/chat/completions", OTHER_CHAT)
    assert other.status_code == 422
    assert len(ingress.bus.published) == 1


async def test_other_paths_and_methods_pass_through(replicas: Callable[..., Replica]) -> None:
    ingress = replicas()
    headers = {"Idempotency-Key": "x" * 300}  # invalid, but nobody looks at it here
    assert (await ingress.client.get("/v1/models", headers=headers)).status_code == 200
    assert (await ingress.client.get("/healthz", headers=headers)).status_code == 200


# --- files (hashed while streamed) and batches --------------------------------------------------


async def _error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, TollwayError)
    return Response(orjson.dumps(exc.to_body()), exc.http_status, media_type="application/json")


@pytest.fixture
async def files_client() -> AsyncIterator[tuple[httpx.AsyncClient, MemoryBatchView]]:
    store, view = MemoryFileStore(), MemoryBatchView()
    app = Starlette(
        routes=[*files_routes(store), *batches_routes(store, view)],
        exception_handlers={TollwayError: _error},
    )
    wrapped = IdempotencyMiddleware(
        app, MemoryIdempotencyStore(), max_body_bytes=1 << 16, max_upload_bytes=1 << 20
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=wrapped), base_url="http://test"
    ) as client:
        yield client, view


async def _upload(client: httpx.AsyncClient, content: bytes, key: str) -> httpx.Response:
    return await client.post(
        "/v1/files",
        files={"file": ("in.jsonl", content)},
        data={"purpose": "batch"},
        headers={"Idempotency-Key": key},
    )


async def test_an_upload_is_replayed_and_another_file_under_the_key_is_422(
    files_client: tuple[httpx.AsyncClient, MemoryBatchView],
) -> None:
    client, _ = files_client
    first = await _upload(client, LINE, "upload-1")
    again = await _upload(client, LINE, "upload-1")
    assert first.status_code == again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = await _upload(client, LINE + LINE, "upload-1")
    assert (other.status_code, _error_code(other)) == (422, "idempotency_key_reused")


async def test_batch_create_and_cancel_are_idempotent(
    files_client: tuple[httpx.AsyncClient, MemoryBatchView],
) -> None:
    client, view = files_client
    file_id = (await _upload(client, LINE, "upload-2")).json()["id"]
    create = {"input_file_id": file_id, "endpoint": "/v1/chat/completions",
              "completion_window": "24h"}  # fmt: skip
    first = await client.post("/v1/batches", json=create, headers={"Idempotency-Key": "b"})
    again = await client.post("/v1/batches", json=create, headers={"Idempotency-Key": "b"})
    assert first.status_code == again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert len(view.states) == 1

    cancel = f"/v1/batches/{first.json()['id']}/cancel"
    for _ in range(2):
        assert (await client.post(cancel, headers={"Idempotency-Key": "c"})).status_code == 200
    assert len(view.commands) == 1
