"""ingress/files_api.py and batches_api.py with in-memory fakes: shapes, limits, errors.

The official `openai` SDK is the client, over an in-process ASGI transport (no socket).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import httpx2  # the openai SDK's HTTP client
import openai
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from ingress.batches_api import batches_routes
from ingress.files_api import MultipartStream, Part, files_routes
from schemas.errors import TollwayError
from workers.batches.filestore import MemoryFileStore
from workers.batches.view import MemoryBatchView

LINE = (
    b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", '
    b'"body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}\n'
)


async def _error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, TollwayError)
    return Response(orjson.dumps(exc.to_body()), exc.http_status, media_type="application/json")


def app(store: MemoryFileStore, view: MemoryBatchView, max_file_bytes: int = 1 << 20) -> Starlette:
    return Starlette(
        routes=[
            *files_routes(store, max_file_bytes=max_file_bytes),
            *batches_routes(store, view),
        ],
        exception_handlers={TollwayError: _error},
    )


@pytest.fixture
def store() -> MemoryFileStore:
    return MemoryFileStore()


@pytest.fixture
def view() -> MemoryBatchView:
    return MemoryBatchView()


@pytest.fixture
async def client(
    store: MemoryFileStore, view: MemoryBatchView
) -> AsyncIterator[openai.AsyncOpenAI]:
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app(store, view)))
    async with openai.AsyncOpenAI(
        base_url="http://ingress/v1", api_key="any", http_client=http, max_retries=0
    ) as sdk:
        yield sdk


async def test_upload_create_retrieve_list_cancel_with_the_sdk(
    client: openai.AsyncOpenAI, store: MemoryFileStore, view: MemoryBatchView
) -> None:
    uploaded = await client.files.create(file=("in.jsonl", LINE * 3), purpose="batch")
    assert uploaded.object == "file"
    assert uploaded.bytes == len(LINE) * 3
    assert uploaded.filename == "in.jsonl"
    assert (await client.files.retrieve(uploaded.id)).id == uploaded.id
    assert (await client.files.content(uploaded.id)).content == LINE * 3

    created = await client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "t"},
    )
    assert created.status == "validating"
    assert created.input_file_id == uploaded.id
    assert (await client.batches.retrieve(created.id)).metadata == {"job": "t"}

    cancelled = await client.batches.cancel(created.id)
    assert cancelled.status == "cancelling"
    assert view.commands[0]["batch_id"] == created.id


async def test_batch_list_is_paginated_newest_first(client: openai.AsyncOpenAI) -> None:
    uploaded = await client.files.create(file=("in.jsonl", LINE), purpose="batch")
    ids = []
    for _ in range(5):
        created = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        ids.append(created.id)
    page = await client.batches.list(limit=2)
    assert len(page.data) == 2
    assert page.has_more
    seen = [b.id async for b in await client.batches.list(limit=2)]  # the SDK follows `after`
    assert sorted(seen) == sorted(ids)
    assert len(seen) == 5


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"endpoint": "/v1/embeddings"}, 400, "endpoint"),
        ({"completion_window": "1h"}, 400, "completion_window"),
        ({"input_file_id": "file-doesnotexist"}, 404, "input_file_id"),
        ({"metadata": {"k": 1}}, 400, "metadata"),
        ({"bogus": 1}, 400, "bogus"),
    ],
)
async def test_bad_batch_creation_is_an_openai_error(
    store: MemoryFileStore,
    view: MemoryBatchView,
    body: dict[str, object],
    status: int,
    param: str,
) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app(store, view)), base_url="http://i"
    ) as http:
        uploaded = await http.post(
            "/v1/files", files={"file": ("x.jsonl", LINE)}, data={"purpose": "batch"}
        )
        request = {
            "input_file_id": uploaded.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            **body,
        }
        response = await http.post("/v1/batches", json=request)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


async def test_upload_limits_and_form_errors(store: MemoryFileStore, view: MemoryBatchView) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app(store, view, max_file_bytes=1000)),
        base_url="http://i",
    ) as http:
        big = await http.post(
            "/v1/files", files={"file": ("x.jsonl", b"x" * 5000)}, data={"purpose": "batch"}
        )
        assert big.status_code == 413
        assert big.json()["error"]["code"] == "request_too_large"
        wrong = await http.post(
            "/v1/files", files={"file": ("x.jsonl", LINE)}, data={"purpose": "fine-tune"}
        )
        assert wrong.status_code == 400
        assert wrong.json()["error"]["param"] == "purpose"
        not_multipart = await http.post("/v1/files", content=LINE)
        assert not_multipart.status_code == 400
        missing = await http.get("/v1/files/file-0000000000")
        assert missing.status_code == 404
        traversal = await http.get("/v1/files/..%2F..%2Fetc/content")
        assert traversal.status_code == 404
        assert (await http.get("/v1/batches/batch_nope")).status_code == 404
        assert (await http.get("/v1/batches?limit=0")).status_code == 400
    assert store.objects == {}  # nothing half-written stays behind


async def test_cancel_of_a_finished_batch_is_a_conflict(
    client: openai.AsyncOpenAI, view: MemoryBatchView
) -> None:
    uploaded = await client.files.create(file=("in.jsonl", LINE), purpose="batch")
    created = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    view.states[created.id]["status"] = "completed"
    with pytest.raises(openai.ConflictError):
        await client.batches.cancel(created.id)


async def test_kafka_down_means_no_batch(client: openai.AsyncOpenAI, view: MemoryBatchView) -> None:
    uploaded = await client.files.create(file=("in.jsonl", LINE), purpose="batch")
    view.available = False
    with pytest.raises(openai.APIStatusError) as caught:
        await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert caught.value.status_code == 503
    assert view.states == {}


def _multipart(boundary: bytes, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b"preamble\r\n"
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += b"--" + boundary + b"\r\nContent-Disposition: " + disposition.encode()
        out += b"\r\nContent-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


@given(
    st.binary(max_size=300),
    st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=8),
)
def test_multipart_stream_is_chunking_independent(data: bytes, cuts: list[int]) -> None:
    boundary = b"----b0undary"
    body = _multipart(boundary, [("purpose", None, b"batch"), ("file", "f.jsonl", data)])
    parser = MultipartStream(boundary)
    events: list[Part | bytes | None] = []
    start = i = 0
    while start < len(body):
        events.extend(parser.feed(body[start : start + cuts[i % len(cuts)]]))
        start += cuts[i % len(cuts)]
        i += 1
    assert parser.done
    parts: dict[str, bytes] = {}
    current = ""
    for event in events:
        if isinstance(event, Part):
            current = event.name
            parts[current] = b""
        elif event is not None:
            parts[current] += event
    assert parts == {"purpose": b"batch", "file": data}
