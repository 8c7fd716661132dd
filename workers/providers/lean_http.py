"""A lean HTTP/1.1 client for provider calls: one `asyncio.Protocol` per pooled connection.

Why: the provider call is the router's hot path, and aiohttp's general-purpose
request machinery (request/response objects, tracing hooks, cookie and redirect
handling, payload writers) costs ~0.31-0.43 ms of CPU per call here; this
client writes one preformatted request and parses the answer with httptools
(the parser uvicorn uses) for ~0.06-0.1 ms. It implements `HttpClient.post`
(every non-streaming provider call); `stream_post` is delegated to aiohttp.
The default client (`transport.build_client`); TOLLWAY_PROVIDER_HTTP_CLIENT=aiohttp
goes back to aiohttp for every call (docs/decisions/0012).

Behaviour, as `AiohttpClient` (workers/providers/http.py):
- keep-alive connections pooled per origin (scheme, host, port), at most
  `max_connections` requests in flight per client; idle connections are not
  reused after `IDLE_REUSE_S` (servers close idle connections after 60 s or
  more) and a POST is never retried, so no provider call is sent twice;
- https through the default SSL context (certificates and host names verified;
  SSL_CERT_FILE / SSL_CERT_DIR apply, as for OpenSSL), or the context given; no
  proxies from the environment, no cookies, redirects never followed;
- no Accept-Encoding is sent, so answers should come uncompressed; one that comes
  with `Content-Encoding: gzip` or `deflate` anyway is decoded (as aiohttp does), any
  other coding is a failure ("other");
- failures raise only `TransportFailure`: "connect" (nothing was sent),
  "timeout" (connect or total `timeout_s` elapsed), "other" (closed or
  malformed answer).
Response headers are a case-insensitive `CIMultiDict`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import urlencode, urlsplit

import httptools
from multidict import CIMultiDict

from workers.providers.http import AiohttpClient, HttpResponse, HttpStream, TransportFailure

IDLE_REUSE_S: Final = 15.0
"""An idle pooled connection older than this is closed, not reused (aiohttp's default)."""
USER_AGENT: Final = "tollway"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL points: the pool key, the Host header and the request target."""

    scheme: str
    host: str
    port: int
    host_header: str
    path: str


def parse_target(url: str, params: Mapping[str, str] | None) -> Target:
    """Split an http(s) URL (plus query parameters) into what a request needs."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    default_port = 443 if parts.scheme == "https" else 80
    port = parts.port or default_port
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default_port else f"{shown}:{port}"
    path = parts.path or "/"
    query = "&".join(q for q in (parts.query, urlencode(params) if params else "") if q)
    return Target(parts.scheme, host, port, host_header, f"{path}?{query}" if query else path)


def request_head(target: Target, headers: Mapping[str, str], content_length: int) -> bytes:
    """The request line and headers of a POST with a body of `content_length` bytes."""
    lines = [
        f"POST {target.path} HTTP/1.1",
        f"Host: {target.host_header}",
        f"User-Agent: {USER_AGENT}",
        f"Content-Length: {content_length}",
    ]
    for name, value in headers.items():
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value or ":" in name:
            raise ValueError(f"header {name!r} would break the request framing")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.idle_since = time.monotonic()
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[HttpResponse] | None = None
        self._status = 0
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._body: list[bytes] = []
        self._headers_done = False
        self.reusable = False

    @property
    def usable(self) -> bool:
        return (
            self.transport is not None
            and not self.transport.is_closing()
            and time.monotonic() - self.idle_since < IDLE_REUSE_S
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast("asyncio.Transport", transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.reusable = False
        if self._waiter is None or self._waiter.done():
            return
        framed = "content-length" in self._headers or "transfer-encoding" in self._headers
        if self._headers_done and not framed:  # a body delimited by the end of the connection
            self._finish()
        else:
            self._fail(TransportFailure("other", "connection closed before the answer ended"))

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # nothing was asked: a server that talks out of turn is not reused
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(TransportFailure("other", f"malformed answer ({type(exc).__name__})"))
            self.close()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.reusable = self._parser.should_keep_alive()
        self._finish()

    def _finish(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            headers = self._headers
            self._waiter.set_result(HttpResponse(self._status, headers, b"".join(self._body)))

    def _fail(self, failure: TransportFailure) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(failure)

    def expire(self) -> None:
        """The total timeout elapsed: fail the exchange and drop the connection."""
        self._fail(TransportFailure("timeout", "no complete answer in time"))
        self.close()

    async def exchange(self, data: bytes) -> HttpResponse:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._parser = httptools.HttpResponseParser(self)
        self._status, self._headers, self._body = 0, CIMultiDict(), []
        self._headers_done = self.reusable = False
        self.transport.write(data)
        try:
            return await self._waiter
        finally:
            self.idle_since = time.monotonic()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


def decoded(response: HttpResponse) -> HttpResponse:
    """The response with its body decoded from `Content-Encoding` gzip or deflate (zlib
    or raw deflate, as servers send both); `identity` or none as it is.

    Raises TransportFailure("other") for any other coding: the request asked for none.
    """
    coding = response.headers.get("content-encoding", "identity").strip().lower()
    if coding in {"", "identity"}:
        return response
    try:
        if coding in {"gzip", "x-gzip"}:
            content = zlib.decompress(response.content, wbits=16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            try:
                content = zlib.decompress(response.content)
            except zlib.error:
                content = zlib.decompress(response.content, wbits=-zlib.MAX_WBITS)
        else:
            raise TransportFailure("other", f"unsupported Content-Encoding {coding!r}")
    except zlib.error as exc:
        raise TransportFailure("other", f"a {coding} body that does not decode") from exc
    return HttpResponse(response.status_code, response.headers, content)


class LeanHttpClient:
    """`HttpClient` with a lean non-streaming `post`; `stream_post` goes through aiohttp.

    `ssl_context`: for https targets; None = `ssl.create_default_context()` (made on the
    first https call)."""

    def __init__(
        self,
        *,
        max_connections: int,
        connect_timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[tuple[str, str, int], deque[_Connection]] = {}
        self._targets: dict[tuple[str, tuple[tuple[str, str], ...]], Target] = {}
        self._ssl: ssl.SSLContext | None = ssl_context
        self._streams = AiohttpClient(
            max_connections=max_connections, connect_timeout_s=connect_timeout_s
        )

    def _target(self, url: str, params: Mapping[str, str] | None) -> Target:
        key = (url, tuple(params.items()) if params else ())
        target = self._targets.get(key)
        if target is None:
            target = parse_target(url, params)
            if len(self._targets) < 1024:  # deployments are few; never unbounded
                self._targets[key] = target
        return target

    async def _connect(self, target: Target, timeout_s: float) -> _Connection:
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if target.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(min(self._connect_timeout_s, timeout_s)):
                _, connection = await loop.create_connection(
                    _Connection,
                    target.host,
                    target.port,
                    ssl=context,
                    server_hostname=target.host if context is not None else None,
                )
        except TimeoutError as exc:
            raise TransportFailure("connect", "connect timed out") from exc
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake
            raise TransportFailure("connect", type(exc).__name__) from exc
        return connection

    def _pooled(self, target: Target) -> _Connection | None:
        idle = self._idle.get((target.scheme, target.host, target.port))
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be stale
            if connection.usable:
                return connection
            connection.close()
        return None

    async def post(
        self,
        url: str,
        *,
        content: bytes,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None,
        timeout_s: float,
    ) -> HttpResponse:
        target = self._target(url, params)
        data = request_head(target, headers, len(content)) + content
        started = time.monotonic()
        async with self._slots:
            connection = self._pooled(target) or await self._connect(target, timeout_s)
            remaining_s = max(0.0, timeout_s - (time.monotonic() - started))
            timer = asyncio.get_running_loop().call_later(remaining_s, connection.expire)
            try:
                response = await connection.exchange(data)
            except BaseException:
                connection.close()
                raise
            finally:
                timer.cancel()
            if connection.reusable and connection.usable:
                key = (target.scheme, target.host, target.port)
                self._idle.setdefault(key, deque()).append(connection)
            else:
                connection.close()
            return decoded(response)

    @contextlib.asynccontextmanager
    async def stream_post(
        self,
        url: str,
        *,
        content: bytes,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None,
        timeout_s: float,
    ) -> AsyncIterator[HttpStream]:
        async with self._streams.stream_post(
            url, content=content, headers=headers, params=params, timeout_s=timeout_s
        ) as stream:
            yield stream

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        await self._streams.aclose()
