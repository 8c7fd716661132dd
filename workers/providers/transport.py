"""The HTTP edge every provider adapter shares: one pooled client, one error mapping.

Transport: `lean_http.py` for non-streaming calls (the default) and `http.py`'s aiohttp
for streams, or aiohttp for everything with TOLLWAY_PROVIDER_HTTP_CLIENT=aiohttp
(docs/decisions/0012); httpx with a MockTransport in tests.

Where vendor failures become `ProviderError`s (each adapter only extracts its
vendor's error code, then calls `error_for_status`):

    transport failure while connecting   -> ProviderConnectionError  (nothing was sent)
    timeout after sending                -> ProviderTimeout
    other transport failure              -> ProviderConnectionError
    undecodable body                     -> ProviderServerError
    429                                  -> ProviderRateLimited (Retry-After honoured)
    408                                  -> ProviderTimeout
    5xx (Anthropic's 529 included)       -> ProviderServerError
    401/402/403/404                      -> ProviderError: this deployment's key, billing,
                                            URL or model is wrong; fail over, do not retry
    other 4xx                            -> ProviderBadRequest (never retried nor failed over)
    2xx that is not a usable answer      -> ProviderServerError
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any, Final

import httpx
import orjson

from schemas.errors import (
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderError,
    ProviderRateLimited,
    ProviderServerError,
    ProviderTimeout,
)
from schemas.routes import Deployment
from workers.providers.http import (
    AiohttpClient,
    HttpClient,
    HttpResponse,
    HttpxClient,
    TransportFailure,
)
from workers.providers.lean_http import LeanHttpClient
from workers.providers.tokens import token_count as _token_count

DEFAULT_MAX_CONNECTIONS: Final = 1_000
CONNECT_TIMEOUT_S: Final = 10.0
DEFAULT_TOTAL_TIMEOUT_S: Final = 600.0
"""Each call passes its deployment's `timeout_s`; this only covers calls that do not."""

_MISCONFIGURED_STATUSES: Final = frozenset({401, 402, 403, 404})

token_count = _token_count
"""Kept importable from here; the rule lives in the pure `tokens.py` (streams use it too)."""


CLIENT_ENV: Final = "TOLLWAY_PROVIDER_HTTP_CLIENT"
"""`lean` (default: workers/providers/lean_http.py, ~0.25 ms less router CPU per
non-streaming provider call than aiohttp; streams go through aiohttp either way) or
`aiohttp` for every call (docs/decisions/0012)."""


def build_client(
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    transport: httpx.AsyncBaseTransport | None = None,
    kind: str | None = None,
) -> HttpClient:
    """One pooled client for a process: the lean client or aiohttp (`kind`, else the
    environment's TOLLWAY_PROVIDER_HTTP_CLIENT, default lean), or httpx over `transport`
    in tests."""
    if transport is None:
        kind = kind or os.environ.get(CLIENT_ENV, "lean")
        if kind == "lean":
            return LeanHttpClient(
                max_connections=max_connections, connect_timeout_s=CONNECT_TIMEOUT_S
            )
        if kind != "aiohttp":
            raise ValueError(f"{CLIENT_ENV} must be lean or aiohttp, not {kind!r}")
        return AiohttpClient(max_connections=max_connections, connect_timeout_s=CONNECT_TIMEOUT_S)
    return HttpxClient(
        httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(DEFAULT_TOTAL_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        )
    )


@contextlib.contextmanager
def map_transport_errors(deployment: Deployment) -> Iterator[None]:
    """Translate a `TransportFailure` into the provider error tree.

    A failure while connecting (refused, unreachable, connect timeout) is a
    `ProviderConnectionError`: nothing was sent, so nothing was spent.
    """
    try:
        yield
    except TransportFailure as exc:
        if exc.kind == "connect":
            raise ProviderConnectionError(f"{deployment.name}: could not connect ({exc})") from exc
        if exc.kind == "timeout":
            raise ProviderTimeout(f"{deployment.name}: timed out") from exc
        if exc.kind == "decode":
            raise ProviderServerError(f"{deployment.name}: undecodable answer") from exc
        raise ProviderConnectionError(f"{deployment.name}: connection failed ({exc})") from exc


async def post_json(
    client: HttpClient,
    deployment: Deployment,
    url: str,
    *,
    headers: Mapping[str, str],
    payload: object,
    params: Mapping[str, str] | None = None,
) -> HttpResponse:
    """POST `payload` as JSON within the deployment's timeout; transport errors mapped."""
    with map_transport_errors(deployment):
        return await client.post(
            url,
            content=orjson.dumps(payload),
            headers={"content-type": "application/json", **headers},
            params=params,
            timeout_s=deployment.timeout_s,
        )


def error_for_status(
    deployment: Deployment,
    status: int,
    headers: Mapping[str, str],
    upstream_code: str | None,
    *,
    retry_after_s: float | None = None,
) -> ProviderError:
    """The `ProviderError` for a non-2xx answer, given the vendor's error code.

    The upstream message is not echoed to clients beyond its code, so provider
    internals stay internal. `retry_after_s` is a vendor's own hint (Gemini's
    RetryInfo) used when the answer carries no Retry-After header.
    """
    msg = f"{deployment.name}: upstream answered {status}"
    if status == 429:
        from_header = parse_retry_after_s(headers)
        return ProviderRateLimited(
            msg,
            retry_after_s=from_header if from_header is not None else retry_after_s,
            upstream_code=upstream_code,
        )
    if status == 408:
        return ProviderTimeout(msg, upstream_status=status, upstream_code=upstream_code)
    if status >= 500:
        return ProviderServerError(msg, upstream_status=status, upstream_code=upstream_code)
    if status in _MISCONFIGURED_STATUSES:
        # This deployment's credentials, billing, URL or model are wrong: another may serve.
        return ProviderError(msg, upstream_status=status, upstream_code=upstream_code)
    return ProviderBadRequest(msg, upstream_status=status, upstream_code=upstream_code)


def parse_retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms` (OpenAI, Azure) or `retry-after`.

    The HTTP-date form of Retry-After gives None: the executor's own backoff applies.
    """
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / scale)
        except ValueError:
            continue
    return None


def json_object(deployment: Deployment, content: bytes) -> dict[str, Any]:
    """A 2xx body as a JSON object; anything else is a `ProviderServerError`."""
    try:
        parsed = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise ProviderServerError(f"{deployment.name}: answer is not JSON") from exc
    if not isinstance(parsed, dict):
        raise ProviderServerError(f"{deployment.name}: answer is not a JSON object")
    return parsed


def error_object(content: bytes) -> dict[str, Any]:
    """The `error` object of an error body, or {} when there is none (HTML, junk)."""
    with contextlib.suppress(orjson.JSONDecodeError):
        parsed = orjson.loads(content)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            error: dict[str, Any] = parsed["error"]
            return error
    return {}


def api_key(deployment: Deployment, environ: Mapping[str, str]) -> str | None:
    """The deployment's API key from the environment, or None when unset or empty."""
    if not deployment.api_key_env:
        return None
    return environ.get(deployment.api_key_env) or None
