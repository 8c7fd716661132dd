"""The HTTP edge every provider adapter shares: one pooled client, one error mapping.

Transport: `http.py` (aiohttp in production, httpx with a MockTransport in tests;
the measurements behind that choice are in its docstring).

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

DEFAULT_MAX_CONNECTIONS: Final = 1_000
CONNECT_TIMEOUT_S: Final = 10.0
DEFAULT_TOTAL_TIMEOUT_S: Final = 600.0
"""Each call passes its deployment's `timeout_s`; this only covers calls that do not."""

MAX_TOKEN_COUNT: Final = 2**63
"""Token counts travel as Avro `long`s: anything at or above this is a broken answer."""

_MISCONFIGURED_STATUSES: Final = frozenset({401, 402, 403, 404})


def build_client(
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    transport: httpx.AsyncBaseTransport | None = None,
) -> HttpClient:
    """One pooled client for a process: aiohttp, or httpx over `transport` in tests."""
    if transport is None:
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


def token_count(value: Any) -> int:
    """A token count; ValueError/TypeError unless it fits the Avro `long` records carry."""
    count = int(value or 0)
    if not 0 <= count < MAX_TOKEN_COUNT:
        raise ValueError(f"token count {count} out of range")
    return count


def api_key(deployment: Deployment, environ: Mapping[str, str]) -> str | None:
    """The deployment's API key from the environment, or None when unset or empty."""
    if not deployment.api_key_env:
        return None
    return environ.get(deployment.api_key_env) or None
