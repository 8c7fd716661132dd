"""OpenAI Chat Completions adapter (also every OpenAI-compatible server by base URL).

Transport: httpx over aiohttp (`httpx-aiohttp`). ARCHITECTURE.md measured httpx's
default transport at 2.5-10 ms of CPU per request here against ~1 ms over
aiohttp, and the provider call is the router's hot path.

Error mapping (the edge where vendor errors become `ProviderError`s):
429 -> ProviderRateLimited (Retry-After honoured), 408/timeouts ->
ProviderTimeout, 5xx -> ProviderServerError, connection failures ->
ProviderConnectionError, 401/403/404 -> ProviderError (this deployment is
misconfigured: fail over without retry), other 4xx -> ProviderBadRequest (never
retried nor failed over); a 2xx
that is not a usable chat completion (undecodable, not JSON, malformed usage) ->
ProviderServerError.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from schemas.errors import (
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderError,
    ProviderRateLimited,
    ProviderServerError,
    ProviderTimeout,
)
from schemas.records import ZERO_USAGE, Usage
from schemas.routes import Deployment
from workers.providers.base import ProviderReply


@contextlib.contextmanager
def map_transport_errors(deployment: Deployment) -> Iterator[None]:
    """Translate httpx transport exceptions into the provider error tree.

    A failure while connecting (refused, unreachable, connect timeout) is a
    `ProviderConnectionError`: nothing was sent, so nothing was spent. The aiohttp
    transport reports a refused connection as `ConnectTimeout`, hence the order.
    """
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise ProviderConnectionError(
            f"{deployment.name}: could not connect ({type(exc).__name__})"
        ) from exc
    except httpx.TimeoutException as exc:
        raise ProviderTimeout(f"{deployment.name}: timed out") from exc
    except httpx.DecodingError as exc:  # a RequestError but not a TransportError
        raise ProviderServerError(f"{deployment.name}: undecodable answer") from exc
    except httpx.TransportError as exc:
        raise ProviderConnectionError(
            f"{deployment.name}: connection failed ({type(exc).__name__})"
        ) from exc


def error_from_response(
    deployment: Deployment, status: int, headers: Mapping[str, str], content: bytes
) -> ProviderError:
    """The `ProviderError` for a non-2xx answer. The upstream message is not echoed
    to clients verbatim beyond its `code`, so provider internals stay internal."""
    code: str | None = None
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
        err = orjson.loads(content).get("error") or {}
        raw_code = err.get("code") if isinstance(err, dict) else None
        code = str(raw_code) if raw_code is not None else None
    msg = f"{deployment.name}: upstream answered {status}"
    if status == 429:
        return ProviderRateLimited(
            msg, retry_after_s=_retry_after_s(headers.get("retry-after")), upstream_code=code
        )
    if status == 408:
        return ProviderTimeout(msg, upstream_status=status, upstream_code=code)
    if status >= 500:
        return ProviderServerError(msg, upstream_status=status, upstream_code=code)
    if status in (401, 403, 404):
        # This deployment's credentials, URL or model are wrong: another may still serve.
        return ProviderError(msg, upstream_status=status, upstream_code=code)
    return ProviderBadRequest(msg, upstream_status=status, upstream_code=code)


def _retry_after_s(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # HTTP-date form: fall back to the executor's own backoff


def usage_from_openai(usage: Any) -> Usage:
    """Usage from an OpenAI `usage` object; missing parts count as zero."""
    if not isinstance(usage, dict):
        return ZERO_USAGE.copy()
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return {
        "prompt_tokens": _tokens(usage.get("prompt_tokens")),
        "completion_tokens": _tokens(usage.get("completion_tokens")),
        "cached_tokens": _tokens(prompt_details.get("cached_tokens")),
        "reasoning_tokens": _tokens(completion_details.get("reasoning_tokens")),
        "cache_write_tokens": 0,  # OpenAI caches implicitly and bills no cache writes
    }


def _tokens(value: Any) -> int:
    """A token count; ValueError unless it fits the Avro `long` the records carry."""
    count = int(value or 0)
    if not 0 <= count < 2**63:
        raise ValueError(f"token count {count} out of range")
    return count


class OpenAIProvider:
    """`ChatProvider` for the OpenAI wire format. One pooled client per process."""

    def __init__(
        self,
        *,
        environ: Mapping[str, str] = os.environ,
        max_connections: int = 1_000,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._client = httpx.AsyncClient(
            transport=transport or AiohttpTransport(limits=limits),
            limits=limits,
            timeout=httpx.Timeout(600.0, connect=10.0),
        )
        self._environ = environ

    async def chat(self, deployment: Deployment, request: dict[str, Any]) -> ProviderReply:
        upstream_model = deployment.model or request["model"]
        payload = dict(request, model=upstream_model)
        headers = {"content-type": "application/json"}
        if deployment.api_key_env:
            key = self._environ.get(deployment.api_key_env)
            if key:
                headers["authorization"] = f"Bearer {key}"
        with map_transport_errors(deployment):
            response = await self._client.post(
                deployment.base_url.rstrip("/") + "/chat/completions",
                content=orjson.dumps(payload),
                headers=headers,
                timeout=deployment.timeout_s,
            )
        if response.status_code >= 300:
            raise error_from_response(
                deployment, response.status_code, response.headers, response.content
            )
        try:
            parsed = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise ProviderServerError(f"{deployment.name}: answer is not JSON") from exc
        if not isinstance(parsed, dict) or "choices" not in parsed:
            raise ProviderServerError(f"{deployment.name}: answer is not a chat completion")
        try:
            usage = usage_from_openai(parsed.get("usage"))
        except (TypeError, ValueError, AttributeError) as exc:
            raise ProviderServerError(f"{deployment.name}: answer has malformed usage") from exc
        return ProviderReply(
            body=response.content,
            usage=usage,
            served_model=str(parsed.get("model") or upstream_model),
        )

    async def aclose(self) -> None:
        await self._client.aclose()
