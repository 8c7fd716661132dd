"""workers/providers/lean_http.py without sockets: URL targets, request framing, and the
connection protocol fed by hand. Real sockets: tests/integration/test_lean_http_socket.py."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections import deque

import pytest
from multidict import CIMultiDict

from workers.providers.http import HttpResponse, TransportFailure
from workers.providers.lean_http import (
    IDLE_REUSE_S,
    LeanHttpClient,
    Target,
    _Connection,
    decoded,
    parse_target,
    request_head,
)


@pytest.mark.parametrize(
    ("url", "params", "expected"),
    [
        (
            "http://127.0.0.1:18080/v1/chat/completions",
            None,
            Target("http", "127.0.0.1", 18080, "127.0.0.1:18080", "/v1/chat/completions"),
        ),
        (
            "https://api.example.com/v1/chat/completions",
            None,
            Target("https", "api.example.com", 443, "api.example.com", "/v1/chat/completions"),
        ),
        (
            "https://x.example.com/openai/deployments/d/chat/completions?a=1",
            {"api-version": "2024-10-21"},
            Target(
                "https",
                "x.example.com",
                443,
                "x.example.com",
                "/openai/deployments/d/chat/completions?a=1&api-version=2024-10-21",
            ),
        ),
        ("http://[::1]:8080", None, Target("http", "::1", 8080, "[::1]:8080", "/")),
        ("http://h.example:80/p", None, Target("http", "h.example", 80, "h.example", "/p")),
    ],
)
def test_parse_target(url: str, params: dict[str, str] | None, expected: Target) -> None:
    assert parse_target(url, params) == expected


@pytest.mark.parametrize("url", ["ftp://h/x", "http:///nohost", "/relative"])
def test_parse_target_refuses_what_is_not_http(url: str) -> None:
    with pytest.raises(ValueError, match="not an http"):
        parse_target(url, None)


def test_request_head() -> None:
    target = parse_target("http://127.0.0.1:9/v1/x", None)
    head = request_head(target, {"content-type": "application/json", "x-api-key": "k"}, 12)
    assert head == (
        b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1:9\r\nUser-Agent: tollway\r\n"
        b"Content-Length: 12\r\ncontent-type: application/json\r\nx-api-key: k\r\n\r\n"
    )


@pytest.mark.parametrize(
    "headers", [{"x": "a\r\nInjected: 1"}, {"x\n": "a"}, {"a:b": "c"}, {"x": "line\nbreak"}]
)
def test_request_head_refuses_header_injection(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="framing"):
        request_head(parse_target("http://h/x", None), headers, 0)


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def _connected() -> tuple[_Connection, FakeTransport]:
    connection = _Connection()
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]  # a fake transport
    return connection, transport


async def test_a_content_length_answer_keeps_the_connection() -> None:
    connection, transport = _connected()
    exchange = asyncio.ensure_future(connection.exchange(b"REQUEST"))
    await asyncio.sleep(0)
    assert transport.written == b"REQUEST"
    connection.data_received(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\n")
    connection.data_received(b"Content-Length: 2\r\n\r\n{}")
    response = await exchange
    assert (response.status_code, response.content) == (429, b"{}")
    assert response.headers.get("retry-after") == "3"
    assert response.headers.get("RETRY-AFTER") == "3"
    assert connection.reusable
    assert connection.usable


async def test_a_chunked_answer_is_reassembled() -> None:
    connection, _ = _connected()
    exchange = asyncio.ensure_future(connection.exchange(b"R"))
    await asyncio.sleep(0)
    connection.data_received(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    assert (await exchange).content == b"abcde"


async def test_connection_close_is_not_reused_and_eof_ends_an_unframed_body() -> None:
    connection, _ = _connected()
    exchange = asyncio.ensure_future(connection.exchange(b"R"))
    await asyncio.sleep(0)
    connection.data_received(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial")
    connection.data_received(b" body")
    connection.connection_lost(None)
    response = await exchange
    assert response.content == b"partial body"
    assert not connection.reusable
    assert not connection.usable


async def test_a_connection_lost_mid_answer_is_a_transport_failure() -> None:
    connection, _ = _connected()
    exchange = asyncio.ensure_future(connection.exchange(b"R"))
    await asyncio.sleep(0)
    connection.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    connection.connection_lost(ConnectionResetError())
    with pytest.raises(TransportFailure) as info:
        await exchange
    assert info.value.kind == "other"


async def test_a_malformed_answer_is_a_transport_failure_and_closes() -> None:
    connection, transport = _connected()
    exchange = asyncio.ensure_future(connection.exchange(b"R"))
    await asyncio.sleep(0)
    connection.data_received(b"NOT HTTP AT ALL\r\n\r\n")
    with pytest.raises(TransportFailure) as info:
        await exchange
    assert info.value.kind == "other"
    assert transport.closed


async def test_expiry_is_a_timeout_and_closes() -> None:
    connection, transport = _connected()
    exchange = asyncio.ensure_future(connection.exchange(b"R"))
    await asyncio.sleep(0)
    connection.expire()
    with pytest.raises(TransportFailure) as info:
        await exchange
    assert info.value.kind == "timeout"
    assert transport.closed


async def test_unsolicited_bytes_close_an_idle_connection() -> None:
    connection, transport = _connected()
    connection.data_received(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    assert transport.closed


async def test_stale_idle_connections_are_not_reused() -> None:
    connection, _ = _connected()
    assert connection.usable
    connection.idle_since -= IDLE_REUSE_S + 1
    assert not connection.usable
    client = LeanHttpClient(max_connections=4, connect_timeout_s=1)
    target = parse_target("http://127.0.0.1:9/x", None)
    client._idle[("http", "127.0.0.1", 9)] = deque([connection])
    assert client._pooled(target) is None
    await client.aclose()


def _answer(content: bytes, coding: str | None) -> HttpResponse:
    headers: CIMultiDict[str] = CIMultiDict({"Content-Encoding": coding} if coding else {})
    return HttpResponse(200, headers, content)


def test_decoded_bodies() -> None:
    body = b'{"id": "chatcmpl-1"}' * 20
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw = raw_deflate.compress(body) + raw_deflate.flush()
    for content, coding in [
        (body, None),
        (body, "identity"),
        (gzip.compress(body), "gzip"),
        (gzip.compress(body), "X-Gzip"),
        (zlib.compress(body), "deflate"),
        (raw, "deflate"),
    ]:
        assert decoded(_answer(content, coding)).content == body


@pytest.mark.parametrize(
    ("content", "coding", "message"),
    [(b"\x1b\x00", "br", "unsupported Content-Encoding 'br'"),
     (b"not gzip", "gzip", "does not decode")],
)  # fmt: skip
def test_undecodable_bodies_are_transport_failures(
    content: bytes, coding: str, message: str
) -> None:
    with pytest.raises(TransportFailure, match=message) as info:
        decoded(_answer(content, coding))
    assert info.value.kind == "other"
