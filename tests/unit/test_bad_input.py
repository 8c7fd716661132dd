"""Bad input on every surface of the ingress, in-process over the whole app (fakes behind):
each is a clear error in the API's error format, and nothing is published or created.

Already covered elsewhere (not repeated here): the chat parser's malformed JSON, wrong
types, ranges and unknown fields (test_admission.py); on /v1/chat/completions and
/v1/async/...: malformed JSON, not an object, an unknown field, an unknown model, a
string `stream`, bodies over the limit with and without Content-Length
(test_ingress_app.py); embeddings input shapes and unknown models
(test_ingress_embeddings.py); /v1/messages invalid bodies and unknown models
(test_anthropic_api.py); batch creation errors, upload limits, wrong purpose, path
traversal in file ids (test_batch_api.py); bad JSONL lines one by one (test_jsonl.py).

Added here: the same classes of input on the surfaces that lacked them (embeddings,
messages, batches), invalid UTF-8, deep nesting, NUL bytes (raw, escaped, in paths and
query strings), absurd numbers, huge bodies behind the Idempotency-Key middleware,
revoked and expired keys, and a batch file of mixed good and bad lines taken through
the Files and Batches APIs and the batch expander.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

import httpx
import orjson
import pytest

from ingress.analytics_runner import StaticRunner
from schemas.openai import ErrorBody
from schemas.records import RequestEnvelope
from tests.unit.ingress_stack import ADMIN_KEY, IngressStack, build_stack
from workers.batches import files
from workers.batches.assembler import Assembly
from workers.batches.expander import expand
from workers.batches.jsonl import LineParser

CHAT: Final = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
EMBED: Final = {"model": "text-embedding-3-small", "input": "hi"}
MESSAGE: Final = {**CHAT, "max_tokens": 16}
BODY_BY_PATH: Final[dict[str, dict[str, Any]]] = {
    "/v1/chat/completions": CHAT,
    "/v1/async/chat/completions": CHAT,
    "/v1/embeddings": EMBED,
    "/v1/messages": MESSAGE,
}
JSON_PATHS: Final = (*BODY_BY_PATH, "/v1/batches")
SMALL_LIMIT: Final = 4096


@pytest.fixture
async def stack() -> AsyncIterator[tuple[httpx.AsyncClient, IngressStack]]:
    built = build_stack(max_body_bytes=SMALL_LIMIT)
    transport = httpx.ASGITransport(app=built.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as client:
        yield client, built


def assert_refused(
    response: httpx.Response, stack: IngressStack, status: int, path: str
) -> dict[str, Any]:
    """`status`, the surface's error format, and nothing published or created."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    if path == "/v1/messages" and body.get("type") == "error":
        assert set(body["error"]) == {"type", "message"}
        assert body["error"]["message"]
    else:
        ErrorBody.model_validate(body)
        assert body["error"]["message"]
    assert stack.bus.published == []
    assert stack.view.states == {}
    return body


def _nested(depth: int) -> bytes:
    return b'{"model": "gpt-4o-mini", "messages": ' + b"[" * depth + b"]" * depth + b"}"


NOT_JSON: Final = {
    "invalid-utf8": b'{"model": "\xff\xfe", "messages": []}',
    "overlong-utf8": b'{"model": "\xc0\xaf"}',
    "lone-surrogate": b'{"model": "\\ud800"}',
    "raw-nul": b'{"model": "gpt-4o-mini\x00", "messages": []}',
    "nul-outside-strings": b'{"model": "gpt-4o-mini"}\x00',
    "nested-1500": _nested(1_500),  # orjson refuses past 1024 levels
    "truncated": orjson.dumps(CHAT)[:-3],
    "infinite-number": b'{"model": "gpt-4o-mini", "max_tokens": 1e400}',
    "two-documents": orjson.dumps(CHAT) + orjson.dumps(CHAT),
    "bom": b"\xef\xbb\xbf" + orjson.dumps(CHAT),
}


@pytest.mark.parametrize("content", list(NOT_JSON.values()), ids=list(NOT_JSON))
@pytest.mark.parametrize("path", JSON_PATHS)
async def test_bytes_that_are_not_json_are_a_400(
    stack: tuple[httpx.AsyncClient, IngressStack], path: str, content: bytes
) -> None:
    client, built = stack
    response = await client.post(path, content=content)
    body = assert_refused(response, built, 400, path)
    if "error" in body and "code" in body["error"]:
        assert body["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("content", [b"[]", b"null", b'"hi"', b"42"])
@pytest.mark.parametrize("path", JSON_PATHS)
async def test_json_that_is_not_an_object_is_a_400(
    stack: tuple[httpx.AsyncClient, IngressStack], path: str, content: bytes
) -> None:
    client, built = stack
    assert_refused(await client.post(path, content=content), built, 400, path)


# path -> (changes to the valid body, the param the error names)
WRONG: Final = [
    ("/v1/chat/completions", {"messages": "hi"}, "messages"),
    ("/v1/chat/completions", {"max_tokens": "5"}, "max_tokens"),
    ("/v1/chat/completions", {"max_tokens": True}, "max_tokens"),
    ("/v1/chat/completions", {"max_tokens": 1.5}, "max_tokens"),
    ("/v1/chat/completions", {"temperature": "0.5"}, "temperature"),
    ("/v1/chat/completions", {"n": 2.0}, "n"),
    ("/v1/chat/completions", {"metadata": {"k": 1}}, "metadata.k"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, None),
    ("/v1/async/chat/completions", {"seed": "1"}, "seed"),
    ("/v1/embeddings", {"input": 5}, "input"),
    ("/v1/embeddings", {"input": [1, "a"]}, "input"),
    ("/v1/embeddings", {"dimensions": "3"}, "dimensions"),
    ("/v1/embeddings", {"encoding_format": "hex"}, "encoding_format"),
    ("/v1/embeddings", {"bogus": 1}, "bogus"),
    ("/v1/messages", {"max_tokens": "5"}, "max_tokens"),
    ("/v1/messages", {"bogus": 1}, "bogus"),
    ("/v1/messages", {"messages": [{"role": "user", "content": [{"type": "text"}]}]}, None),
    ("/v1/messages", {"system": [{"type": "text", "text": "x", "extra": 1}]}, None),
]


@pytest.mark.parametrize(("path", "changes", "param"), WRONG)
async def test_wrong_types_and_unknown_fields_name_the_field(
    stack: tuple[httpx.AsyncClient, IngressStack],
    path: str,
    changes: dict[str, Any],
    param: str | None,
) -> None:
    client, built = stack
    response = await client.post(path, json={**BODY_BY_PATH[path], **changes})
    body = assert_refused(response, built, 400, path)
    message = body["error"]["message"]
    if param is not None:
        assert param.split(".")[0] in message
        if path != "/v1/messages":
            assert body["error"]["param"] == param


BATCH_WRONG: Final = [
    ({"completion_window": 24}, "completion_window"),
    ({"endpoint": ["/v1/chat/completions"]}, "endpoint"),  # was a 500 (unhashable)
    ({"completion_window": {"24h": 1}}, "completion_window"),
    ({"metadata": []}, "metadata"),
    ({"metadata": {"tollway.x": "y"}}, "metadata"),
    ({"input_file_id": 5}, "input_file_id"),
    ({"input_file_id": "file-\x00\x00\x00\x00\x00\x00\x00\x00"}, "input_file_id"),
    ({"input_file_id": "../../../etc/passwd"}, "input_file_id"),
]


@pytest.mark.parametrize(("changes", "param"), BATCH_WRONG)
async def test_bad_batch_bodies_create_nothing(
    stack: tuple[httpx.AsyncClient, IngressStack], changes: dict[str, Any], param: str
) -> None:
    client, built = stack
    good = {
        "input_file_id": "file-000000000000",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    response = await client.post("/v1/batches", json={**good, **changes})
    file_id = changes.get("input_file_id")
    status = 404 if isinstance(file_id, str) else 400  # no such file / not a file id
    body = assert_refused(response, built, status, "")
    assert body["error"]["param"] == param


ABSURD: Final = [
    ("/v1/chat/completions", {"max_tokens": -1}, "max_tokens"),
    ("/v1/chat/completions", {"max_tokens": 0}, "max_tokens"),
    ("/v1/chat/completions", {"max_tokens": 10**12}, "max_tokens"),
    ("/v1/chat/completions", {"max_tokens": 2**64}, "max_tokens"),  # a float once parsed
    ("/v1/chat/completions", {"max_completion_tokens": -5}, "max_completion_tokens"),
    ("/v1/chat/completions", {"n": 10_000}, "n"),
    ("/v1/chat/completions", {"top_logprobs": -1}, "top_logprobs"),
    ("/v1/async/chat/completions", {"max_tokens": 2**63}, "max_tokens"),
    ("/v1/embeddings", {"dimensions": 0}, "dimensions"),
    ("/v1/embeddings", {"dimensions": 10**9}, "dimensions"),
    ("/v1/embeddings", {"input": [-1]}, "input"),
    ("/v1/embeddings", {"input": [2**40]}, "input"),
    ("/v1/messages", {"max_tokens": 0}, "max_tokens"),
    ("/v1/messages", {"max_tokens": 10**9}, "max_tokens"),
    ("/v1/messages", {"temperature": 1.5}, "temperature"),
]


@pytest.mark.parametrize(("path", "changes", "param"), ABSURD)
async def test_negative_and_absurd_numbers_are_a_400(
    stack: tuple[httpx.AsyncClient, IngressStack],
    path: str,
    changes: dict[str, Any],
    param: str,
) -> None:
    client, built = stack
    response = await client.post(path, json={**BODY_BY_PATH[path], **changes})
    body = assert_refused(response, built, 400, path)
    assert param in body["error"]["message"]


MODELS: Final = ["gpt-4o-mini\x00", " gpt-4o-mini", "GPT-4O-MINI", "mock", "../gpt-4o-mini"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("path", list(BODY_BY_PATH))
async def test_unknown_models_are_a_404_on_every_surface(
    stack: tuple[httpx.AsyncClient, IngressStack], path: str, model: str
) -> None:
    client, built = stack
    response = await client.post(path, json={**BODY_BY_PATH[path], "model": model})
    assert_refused(response, built, 404, path)


@pytest.mark.parametrize("path", list(BODY_BY_PATH))
async def test_a_model_name_past_256_characters_is_a_400(
    stack: tuple[httpx.AsyncClient, IngressStack], path: str
) -> None:
    client, built = stack
    response = await client.post(path, json={**BODY_BY_PATH[path], "model": "m" * 257})
    assert_refused(response, built, 400, path)


def _big(path: str, size: int) -> dict[str, Any]:
    if path == "/v1/embeddings":
        return {**EMBED, "input": "x" * size}
    return {**BODY_BY_PATH[path], "messages": [{"role": "user", "content": "x" * size}]}


@pytest.mark.parametrize("idempotency_key", [None, "retry-1"])
@pytest.mark.parametrize("path", list(BODY_BY_PATH))
async def test_bodies_over_the_limit_are_a_413(
    stack: tuple[httpx.AsyncClient, IngressStack], path: str, idempotency_key: str | None
) -> None:
    """Behind the Idempotency-Key middleware too (it reads the body first)."""
    client, built = stack
    headers = {"idempotency-key": idempotency_key} if idempotency_key else {}
    response = await client.post(path, json=_big(path, 2 * SMALL_LIMIT), headers=headers)
    assert_refused(response, built, 413, path)


@pytest.mark.parametrize("path", ["/v1/embeddings", "/v1/messages", "/v1/batches"])
async def test_streamed_bodies_over_the_limit_are_a_413(
    stack: tuple[httpx.AsyncClient, IngressStack], path: str
) -> None:
    """No Content-Length: the limit is enforced while reading (batches: 64 KiB)."""
    client, built = stack

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(80):
            yield b" " * 1024

    assert_refused(await client.post(path, content=chunks()), built, 413, path)


async def test_escaped_nul_inside_a_message_is_text_and_travels_unchanged(
    stack: tuple[httpx.AsyncClient, IngressStack],
) -> None:
    """Valid JSON: `\\u0000` is a character like any other; the bytes are forwarded as sent."""
    client, built = stack
    content = orjson.dumps({**CHAT, "messages": [{"role": "user", "content": "a\x00b"}]})
    assert b"\\u0000" in content
    response = await client.post("/v1/chat/completions", content=content)
    assert response.status_code == 200
    ((_, envelope),) = built.bus.published
    assert envelope["body"] == content


NUL_REQUESTS: Final = [
    ("GET", "/v1/async/requests/req_%00"),
    ("GET", "/v1/files/file-%00%00%00%00%00%00%00%00"),
    ("GET", "/v1/files/file-%00%00%00%00%00%00%00%00/content"),
    ("GET", "/v1/batches/batch_%00"),
    ("POST", "/v1/batches/batch_%00/cancel"),
    ("GET", "/v1/batches?after=%00&limit=5"),
]


@pytest.mark.parametrize(("method", "url"), NUL_REQUESTS)
async def test_nul_bytes_in_ids_find_nothing(
    stack: tuple[httpx.AsyncClient, IngressStack], method: str, url: str
) -> None:
    client, built = stack
    response = await client.request(method, url)
    if "after=" in url:  # a cursor that matches no batch: an empty page
        assert response.status_code == 200
        assert response.json()["data"] == []
    else:
        assert_refused(response, built, 404, url)


@pytest.mark.parametrize(
    "query", ["team=%00", "team=a%00b", "scope_id=%00", "since=%00", "limit=1%00", "format=csv%00"]
)
async def test_nul_bytes_in_analytics_parameters_are_a_400(
    stack: tuple[httpx.AsyncClient, IngressStack], query: str
) -> None:
    client, built = stack
    name = "budget_events" if query.startswith("scope_id") else "spend_by_team"
    response = await client.get(
        f"/v1/analytics/{name}?{query}", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert_refused(response, built, 400, "")
    assert isinstance(built.runner, StaticRunner)
    assert built.runner.calls == []


@pytest.mark.parametrize(
    "key", ["", " ", "x" * 256, "caf\xe9", "a\tb"], ids=["empty", "space", "long", "latin1", "tab"]
)
async def test_bad_idempotency_keys_are_a_400(
    stack: tuple[httpx.AsyncClient, IngressStack], key: str
) -> None:
    client, built = stack
    headers = [(b"idempotency-key", key.encode("latin-1"))]
    request = client.build_request("POST", "/v1/chat/completions", json=CHAT)
    request.headers = httpx.Headers([*request.headers.raw, *headers])
    response = await client.send(request)
    if key == " ":  # one printable ASCII character (space included) is a valid key
        assert response.status_code == 200
        return
    body = assert_refused(response, built, 400, "")
    assert body["error"]["param"] == "idempotency-key"


# --- keys mode ---------------------------------------------------------------------------


@pytest.fixture
async def keyed() -> AsyncIterator[tuple[httpx.AsyncClient, IngressStack]]:
    built = build_stack(auth="keys")
    transport = httpx.ASGITransport(app=built.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as client:
        yield client, built


@pytest.mark.parametrize("which", ["revoked", "expired", "admin", "none", "injection"])
@pytest.mark.parametrize("path", list(BODY_BY_PATH))
async def test_revoked_expired_or_foreign_keys_are_a_401_and_publish_nothing(
    keyed: tuple[httpx.AsyncClient, IngressStack], path: str, which: str
) -> None:
    client, built = keyed
    token = {
        "revoked": built.revoked_key,
        "expired": built.expired_key,
        "admin": ADMIN_KEY,
        "none": None,
        "injection": "tw-' OR '1'='1",
    }[which]
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    response = await client.post(path, json=BODY_BY_PATH[path], headers=headers)
    assert_refused(response, built, 401, path)
    good = await client.post(
        path, json=BODY_BY_PATH[path], headers={"authorization": f"Bearer {built.virtual_key}"}
    )
    assert good.status_code < 300
    assert len(built.bus.published) == 1
    assert built.bus.published[0][1]["team_id"] == "team-a"


# --- a batch file of mixed good and bad lines -------------------------------------------


def _line(custom_id: str, **body: Any) -> bytes:
    return orjson.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {**CHAT, **body},
        }
    )


MIXED: Final = [
    (_line("good-1"), None),
    (b"{not json", "invalid_json"),
    (_line("bad-utf8")[:-3] + b'"\xff"}}', "invalid_json"),
    (_line("raw-nul")[:20] + b"\x00" + _line("raw-nul")[20:], "invalid_json"),
    (b'{"custom_id": "deep", "body": ' + b"[" * 3000 + b"]" * 3000 + b"}", "invalid_json"),
    (_line("absurd", max_tokens=10**12), "invalid_request"),
    (_line("negative", max_tokens=-1), "invalid_request"),
    (_line("unknown-model", model="no-such-model"), "model_not_found"),
    (_line("wrong-type", temperature="hot"), "invalid_request"),
    (_line("unknown-field", temprature=1), "invalid_request"),
    (_line("good-1"), "duplicate_custom_id"),
    (_line("escaped-nul", messages=[{"role": "user", "content": "a\x00b"}]), None),
    (b"[1, 2]", "invalid_request"),
    (_line("good-2"), None),
]


def _chunks(data: bytes, size: int = 1000) -> Iterator[bytes]:
    return iter([data[i : i + size] for i in range(0, len(data), size)])


async def test_a_batch_file_of_mixed_lines_runs_its_good_lines_and_reports_each_bad_one(
    stack: tuple[httpx.AsyncClient, IngressStack],
) -> None:
    client, built = stack
    data = b"\n".join(raw for raw, _ in MIXED) + b"\n"
    uploaded = await client.post(
        "/v1/files", files={"file": ("mixed.jsonl", data)}, data={"purpose": "batch"}
    )
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["id"]
    created = await client.post(
        "/v1/batches",
        json={
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
    )
    assert created.status_code == 200, created.text  # lines are checked by the worker
    assert built.bus.published == []  # the ingress publishes no batch request itself
    state = built.view.states[created.json()["id"]]
    state["status"] = "in_progress"

    published: list[RequestEnvelope] = []

    async def publish(envelopes: list[RequestEnvelope]) -> None:
        published.extend(envelopes)

    async def checkpoint(_: object) -> None:
        return None

    assembly = Assembly(state)
    await expand(
        state,
        _chunks(built.store.get(files.content_key(file_id)) or b""),
        parser=LineParser("/v1/chat/completions", lambda m: m == "gpt-4o-mini"),
        assembly=assembly,
        publish=publish,
        checkpoint=checkpoint,
        cancelled=lambda: False,
        now_ms=lambda: state["created_at_ms"] + 1,
        checkpoint_lines=5,
    )
    good = [i + 1 for i, (_, code) in enumerate(MIXED) if code is None]
    assert [int(e["metadata"]["tollway.batch_line"]) for e in published] == good
    flush, _ = assembly.take()
    bad = [code for _, code in MIXED if code is not None]
    assert (flush.failed, flush.invalid) == (len(bad), len(bad))
    assert orjson.loads(published[-2]["body"])["messages"][0]["content"] == "a\x00b"
