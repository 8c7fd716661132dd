"""The HTTP client seam under every provider adapter: aiohttp in production, httpx in tests.

Measured on this 2-core machine (docs/decisions/0005): a provider call through
aiohttp directly costs ~0.3-0.37 ms of router CPU, through httpx over the
aiohttp transport ~0.7 ms, through httpx's default transport ~4.6 ms. The call
is the router's hot path, so production uses aiohttp; `HttpxClient` keeps
`httpx.MockTransport(handler)` as the test seam for adapters.

Both raise only `TransportFailure` (with a `kind`), never their library's own
exceptions; `transport.map_transport_errors` turns it into a `ProviderError`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import aiohttp
import httpx

FailureKind = Literal["connect", "timeout", "decode", "other"]

LARGE_BODY_BYTES: Final = 1024 * 1024
"""Bodies above this are streamed to the provider from a buffer (see `_post`)."""


class TransportFailure(Exception):
    """The HTTP exchange itself failed. `kind` says where (connect: nothing was sent)."""

    def __init__(self, kind: FailureKind, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind: FailureKind = kind


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status_code: int
    headers: Mapping[str, str]  # case-insensitive in both implementations
    content: bytes


class HttpStream(Protocol):
    status_code: int
    headers: Mapping[str, str]

    async def aread(self) -> bytes: ...

    def aiter_raw(self) -> AsyncIterator[bytes]: ...


class HttpClient(Protocol):
    async def post(
        self,
        url: str,
        *,
        content: bytes,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None,
        timeout_s: float,
    ) -> HttpResponse: ...

    def stream_post(
        self,
        url: str,
        *,
        content: bytes,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None,
        timeout_s: float,
    ) -> contextlib.AbstractAsyncContextManager[HttpStream]: ...

    async def aclose(self) -> None: ...


# --- aiohttp ---------------------------------------------------------------------------


@contextlib.contextmanager
def _aiohttp_failures() -> Iterator[None]:
    try:
        yield
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise TransportFailure("connect", type(exc).__name__) from exc
    except TimeoutError as exc:  # total / socket-read timeouts (asyncio.TimeoutError)
        raise TransportFailure("timeout", type(exc).__name__) from exc
    except aiohttp.ClientPayloadError as exc:
        raise TransportFailure("decode", type(exc).__name__) from exc
    except aiohttp.ClientError as exc:
        raise TransportFailure("other", type(exc).__name__) from exc


class _AiohttpStream:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status_code = response.status
        self.headers: Mapping[str, str] = response.headers

    async def aread(self) -> bytes:
        with _aiohttp_failures():
            return await self._response.read()

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        with _aiohttp_failures():
            async for chunk in self._response.content.iter_any():
                yield chunk


class AiohttpClient:
    """One pooled aiohttp session per process, created on first use (inside the loop)."""

    def __init__(self, *, max_connections: int, connect_timeout_s: float) -> None:
        self._max_connections = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None
        # one ClientTimeout per distinct total (deployments share a handful): not one per call
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=self._max_connections
            )
            # auto_decompress on; no cookie jar: providers are stateless APIs
            self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._session

    def _post(
        self,
        url: str,
        content: bytes,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None,
        timeout_s: float,
    ) -> aiohttp.client._RequestContextManager:  # aiohttp names no public type for it
        """The one request both `post` and `stream_post` make (redirects never followed)."""
        timeout = self._timeouts.get(timeout_s)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=timeout_s, connect=self._connect_timeout_s)
            self._timeouts[timeout_s] = timeout
        return self._get_session().post(
            url,
            # aiohttp writes a large bytes body in one go (and warns); a file-like body is
            # written in chunks, yielding to the loop. 1 MiB: aiohttp's own threshold.
            data=io.BytesIO(content) if len(content) > LARGE_BODY_BYTES else content,
            headers=headers,  # aiohttp copies them into its own multidict
            params=dict(params) if params else None,
            timeout=timeout,
            allow_redirects=False,
        )

    async def post(
        self,
        url: str,
        *,
        content: bytes,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None,
        timeout_s: float,
    ) -> HttpResponse:
        with _aiohttp_failures():
            async with self._post(url, content, headers, params, timeout_s) as response:
                body = await response.read()
                return HttpResponse(response.status, response.headers, body)

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
        with _aiohttp_failures():
            async with self._post(url, content, headers, params, timeout_s) as response:
                yield _AiohttpStream(response)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# --- httpx (tests: MockTransport) ---------------------------------------------------------


@contextlib.contextmanager
def _httpx_failures() -> Iterator[None]:
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise TransportFailure("connect", type(exc).__name__) from exc
    except httpx.TimeoutException as exc:
        raise TransportFailure("timeout", type(exc).__name__) from exc
    except httpx.DecodingError as exc:
        raise TransportFailure("decode", type(exc).__name__) from exc
    except httpx.TransportError as exc:
        raise TransportFailure("other", type(exc).__name__) from exc


class _HttpxStream:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status_code = response.status_code
        self.headers: Mapping[str, str] = response.headers

    async def aread(self) -> bytes:
        with _httpx_failures():
            return await self._response.aread()

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        with _httpx_failures():
            async for chunk in self._response.aiter_raw():
                yield chunk


class HttpxClient:
    """`HttpClient` over an httpx client (any transport, e.g. `httpx.MockTransport`)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def post(
        self,
        url: str,
        *,
        content: bytes,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None,
        timeout_s: float,
    ) -> HttpResponse:
        with _httpx_failures():
            response = await self._client.post(
                url, content=content, headers=headers, params=params, timeout=timeout_s
            )
        return HttpResponse(response.status_code, response.headers, response.content)

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
        with _httpx_failures():
            async with self._client.stream(
                "POST", url, content=content, headers=headers, params=params, timeout=timeout_s
            ) as response:
                yield _HttpxStream(response)

    async def aclose(self) -> None:
        await self._client.aclose()


__all__ = [
    "AiohttpClient",
    "HttpClient",
    "HttpResponse",
    "HttpStream",
    "HttpxClient",
    "TransportFailure",
]
