"""The lean benchmark mock (workers/providers/mock/fast_server.py) without sockets.

Its answers must equal the regular mock's (same `decide`, same `wire` renderers); its
connection protocol is driven here with a fake transport. The socket round trip with
the real OpenAI adapter is in tests/integration/test_mock_fast_server_http.py.
"""

from __future__ import annotations

import asyncio

import httptools
import orjson
import pytest

from workers.providers.mock.behaviour import Answer, MockSettings, decide
from workers.providers.mock.fast_server import FastMock, Prepared, _Connection, http_response
from workers.providers.mock.wire import completion_body

SETTINGS = MockSettings(latency_ms=0, completion_tokens=16, seed=7)
CHAT = b"/v1/chat/completions"


def _body(model: str = "mock", **fields: object) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **fields})


def test_a_completion_is_the_regular_mocks_body() -> None:
    mock = FastMock(SETTINGS, id_prefix="chatcmpl-x")
    prepared = mock.handle(b"POST", CHAT, _body(max_tokens=4), created_s=1_700_000_000)
    outcome = decide(orjson.loads(_body(max_tokens=4)), "mock", SETTINGS, 0)
    assert isinstance(outcome, Answer)
    assert prepared.status == 200
    assert orjson.loads(prepared.body) == completion_body(
        outcome.reply, "mock", "chatcmpl-x0", 1_700_000_000
    )
    second = mock.handle(b"POST", CHAT, _body(), created_s=1)
    assert orjson.loads(second.body)["id"] == "chatcmpl-x1"


def test_latency_comes_from_the_settings_and_the_model_name() -> None:
    mock = FastMock(MockSettings(latency_ms=50))
    assert mock.handle(b"POST", CHAT, _body(), 0).latency_ms == 50
    assert mock.handle(b"POST", CHAT, _body("mock-slow-7"), 0).latency_ms == 7


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("mock-error-503", 503, None),
        ("mock-context-window", 400, "context_length_exceeded"),
        ("mock-429-3", 429, "rate_limit_exceeded"),
        ("mock-slow-x", 400, "invalid_mock_model"),
    ],
)
def test_failures_by_model_name(model: str, status: int, code: str | None) -> None:
    prepared = FastMock(SETTINGS).handle(b"POST", CHAT, _body(model), 0)
    assert prepared.status == status
    assert orjson.loads(prepared.body)["error"]["code"] == code
    if status == 429:
        assert ("Retry-After", "3") in prepared.headers


def test_flaky_models_count_calls_per_model() -> None:
    mock = FastMock(SETTINGS)
    statuses = [mock.handle(b"POST", CHAT, _body("mock-flaky-50"), 0).status for _ in range(40)]
    assert set(statuses) == {200, 500}


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        (b"POST", CHAT, b"{not json", 400),
        (b"POST", CHAT, b"[1]", 400),
        (b"POST", CHAT, b'{"messages": []}', 400),
        (b"POST", CHAT, _body(stream=True), 400),
        (b"POST", b"/v1/messages", _body(), 404),
        (b"GET", CHAT, b"", 404),
        (b"GET", b"/healthz", b"", 200),
        (b"GET", b"/healthz?probe=1", b"", 200),
    ],
)
def test_what_it_does_not_serve(method: bytes, path: bytes, body: bytes, status: int) -> None:
    assert FastMock(SETTINGS).handle(method, path, body, 0).status == status


def test_http_response_framing() -> None:
    raw = http_response(429, b'{"a":1}', (("Retry-After", "2"),), keep_alive=False)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 429 Too Many Requests",
        b"Content-Type: application/json",
        b"Content-Length: 7",
        b"Retry-After: 2",
        b"Connection: close",
    ]
    assert body == b'{"a":1}'
    assert http_response(599, b"", (), keep_alive=True).startswith(b"HTTP/1.1 599 Unknown\r\n")


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


def _request(body: bytes, model_header: str = "", close: bool = False) -> bytes:
    extra = "Connection: close\r\n" if close else ""
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{model_header}{extra}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _responses(raw: bytes) -> list[tuple[int, dict[str, object]]]:
    out: list[tuple[int, dict[str, object]]] = []

    class Sink:
        def __init__(self) -> None:
            self.body = b""

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            out.append((parser.get_status_code(), orjson.loads(self.body)))
            self.body = b""

    parser = httptools.HttpResponseParser(Sink())
    parser.feed_data(raw)
    return out


async def test_pipelined_requests_are_answered_in_order_whatever_their_latency() -> None:
    connection = _Connection(FastMock(SETTINGS))
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]  # a fake transport
    slow, fast = _request(_body("mock-slow-40")), _request(_body("mock"))
    both = slow + fast
    connection.data_received(both[:30])  # a request split across reads
    connection.data_received(both[30:])
    assert transport.written == b""  # the fast answer (ready now) waits behind the slow one
    for _ in range(200):
        await asyncio.sleep(0.01)
        if transport.written.count(b"HTTP/1.1") == 2:
            break
    answers = _responses(transport.written)
    assert [status for status, _ in answers] == [200, 200]
    assert [body["model"] for _, body in answers] == ["mock-slow-40", "mock"]
    assert not transport.closed


async def test_connection_close_is_honoured_and_bad_http_is_refused() -> None:
    connection = _Connection(FastMock(SETTINGS))
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]  # a fake transport
    connection.data_received(_request(_body(), close=True))
    assert transport.closed
    assert b"Connection: close" in transport.written

    garbled = _Connection(FastMock(SETTINGS))
    other = FakeTransport()
    garbled.connection_made(other)  # type: ignore[arg-type]  # a fake transport
    garbled.data_received(b"\x00\x01 not http\r\n\r\n")
    assert other.written.startswith(b"HTTP/1.1 400 ")
    assert other.closed


async def test_a_closed_connection_drops_its_pending_answers() -> None:
    connection = _Connection(FastMock(SETTINGS))
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]  # a fake transport
    connection.data_received(_request(_body("mock-slow-20")))
    connection.connection_lost(None)
    await asyncio.sleep(0.04)
    assert transport.written == b""


def test_prepared_defaults() -> None:
    assert Prepared(200, 0, b"{}").headers == ()
