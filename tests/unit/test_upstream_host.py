"""No request field or header chooses the upstream host (ARCHITECTURE.md invariant 6).

Two layers, each shown on its own:
1. The ingress: body fields that other gateways honour (`base_url`, `api_base`, `api_key`,
   `extra_headers`, ...) are unknown fields, refused with a 400 before anything is
   published; Host / X-Forwarded-* / Forwarded headers leave no trace in the envelope.
2. The router, as if a hostile body had reached a topic anyway (a tampered record, a
   batch line): every provider call, of every wire format, chat, stream and embeddings,
   goes to the configured deployment's URL, with the configured key, whatever the body
   and the model name say. A recording `httpx.MockTransport` under the real provider
   registry sees every request; an upstream redirect is not followed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from ingress.admission import build_envelope
from schemas.openai import EMBEDDINGS_ENDPOINT, ErrorBody
from schemas.records import Mode, RequestEnvelope, StreamChunk
from schemas.routes import Deployment, ModelRoute, ProviderKind, RoutesConfig
from tests.unit.ingress_stack import build_stack
from workers.providers.registry import build_registry
from workers.router.execution import Executor
from workers.router.fallback import RetryPolicy

CHAT: Final = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
EVIL: Final = "http://169.254.169.254/latest/meta-data"
HOSTILE_FIELDS: Final[dict[str, Any]] = {
    "base_url": EVIL,
    "api_base": EVIL,
    "api_key": "sk-attacker",
    "extra_headers": {"Host": "evil.example", "X-Forwarded-Host": "evil.example"},
    "extra_query": {"url": EVIL},
    "extra_body": {"base_url": EVIL},
    "azure_endpoint": "https://evil.example",
    "api_version": "../../../evil",
    "deployment_id": "../../evil",
    "custom_llm_provider": "openai",
    "organization": "evil",
    "url": EVIL,
    "endpoint": EVIL,
    "host": "evil.example",
    "proxy": EVIL,
}
HOSTILE_HEADERS: Final = {
    "host": "evil.example",
    "x-forwarded-host": "evil.example",
    "x-forwarded-proto": "http",
    "x-forwarded-for": "169.254.169.254",
    "forwarded": "host=evil.example;proto=http",
    "x-original-url": EVIL,
    "x-rewrite-url": EVIL,
    "x-api-base": EVIL,
    "x-base-url": EVIL,
    "api-base": EVIL,
    "x-tollway-deployment": "evil",
    "x-tollway-upstream": EVIL,
}


# --- 1. the ingress ----------------------------------------------------------------------


@pytest.fixture
async def ingress() -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    stack = build_stack()
    transport = httpx.ASGITransport(app=stack.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as client:
        yield client, stack


@pytest.mark.parametrize("field", list(HOSTILE_FIELDS))
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/async/chat/completions"])
async def test_the_ingress_refuses_upstream_choosing_fields(
    ingress: tuple[httpx.AsyncClient, Any], path: str, field: str
) -> None:
    client, stack = ingress
    response = await client.post(path, json={**CHAT, field: HOSTILE_FIELDS[field]})
    assert response.status_code == 400
    error = ErrorBody.model_validate_json(response.content).error
    assert error.param == field
    assert "Unrecognized request argument" in error.message
    assert stack.bus.published == []


@pytest.mark.parametrize("field", ["base_url", "api_key", "extra_headers"])
async def test_the_other_surfaces_refuse_them_too(
    ingress: tuple[httpx.AsyncClient, Any], field: str
) -> None:
    client, stack = ingress
    value = HOSTILE_FIELDS[field]
    embeddings = await client.post(
        "/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x", field: value}
    )
    messages = await client.post("/v1/messages", json={**CHAT, "max_tokens": 5, field: value})
    assert (embeddings.status_code, messages.status_code) == (400, 400)
    assert stack.bus.published == []


async def test_host_and_forwarding_headers_leave_no_trace_in_the_envelope(
    ingress: tuple[httpx.AsyncClient, Any],
) -> None:
    client, stack = ingress
    plain = await client.post("/v1/async/chat/completions", json=CHAT)
    hostile = await client.post("/v1/async/chat/completions", json=CHAT, headers=HOSTILE_HEADERS)
    assert (plain.status_code, hostile.status_code) == (202, 202)
    (_, first), (_, second) = stack.bus.published
    varying = {"request_id", "received_at_ms", "deadline_ms"}
    assert {k: v for k, v in first.items() if k not in varying} == {
        k: v for k, v in second.items() if k not in varying
    }
    assert b"evil" not in second["body"]
    assert not any("evil" in value or "169.254" in value for value in second["metadata"].values())


# --- 2. the router and the providers ----------------------------------------------------


def _deployment(kind: ProviderKind) -> Deployment:
    return Deployment(
        name=f"d-{kind}",
        provider=kind,
        base_url=f"https://{kind}.deploy.test/base",
        api_key_env=f"KEY_{kind.upper()}",
        api_version="2024-10-21" if kind == "azure" else None,
    )


KINDS: Final[tuple[ProviderKind, ...]] = ("openai", "anthropic", "gemini", "azure")
DEPLOYMENTS: Final = {kind: _deployment(kind) for kind in KINDS}
# Prefix patterns: the upstream model is the requested name itself (the riskiest case,
# since gemini and azure put it in the URL path).
ROUTES: Final = RoutesConfig(
    models={f"{kind}-*": ModelRoute(deployments=(DEPLOYMENTS[kind],)) for kind in KINDS}
)
ENVIRON: Final = {f"KEY_{kind.upper()}": f"configured-key-{kind}" for kind in KINDS}
MODEL_TAILS: Final = [
    "plain",
    "x@evil.example",
    "x/../../../../evil",
    "x?host=evil.example&api-version=evil",
    "x#@evil.example",
    "https://evil.example/",
    "x%2F..%2F..%2Fevil",
    "x:8080",
    "x\r\nHost: evil.example",
    "x/..\\..\\evil",
    "x\x00evil",
    "//evil.example/x",
]
EXPECTED_PATHS: Final = {
    "openai": ("/base/chat/completions", "/base/embeddings"),
    "anthropic": ("/base/v1/messages",),
    "gemini": ("/base/v1beta/models/",),
    "azure": ("/base/openai/deployments/",),
}


class Recorder:
    """Every request the providers send, answered with `status` (and a redirect target)."""

    def __init__(self, status: int = 503) -> None:
        self.status = status
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        headers = {"location": EVIL} if 300 <= self.status < 400 else {}
        return httpx.Response(self.status, headers=headers, json={"error": {"message": "no"}})


def _envelope(model: str, body: dict[str, Any], *, endpoint: str, mode: Mode) -> RequestEnvelope:
    return build_envelope(
        request_id="req_" + "0" * 40,
        team_id="team-a",
        key_id=None,
        mode=mode,
        model=model,
        body=orjson.dumps(body),
        now_ms=1_700_000_000_000,
        deadline_ms=1_700_000_600_000,
        ingress_id="ingress-test",
        reply_partition=0 if mode == "sync" else None,
        metadata={"base_url": EVIL, "tollway.callback_url": "https://hooks.example.com/x"},
        endpoint=endpoint,
    )


def _assert_configured(request: httpx.Request, kind: ProviderKind) -> None:
    deployment = DEPLOYMENTS[kind]
    configured = urlsplit(deployment.base_url)
    url = request.url
    assert (url.scheme, url.host, url.port) == (configured.scheme, configured.hostname, None)
    assert request.headers["host"] == configured.hostname
    assert url.raw_path.decode().startswith(EXPECTED_PATHS[kind]), url
    assert url.path.startswith(EXPECTED_PATHS[kind]), url  # decoded: no way out of /base
    query = dict(url.params)
    if kind == "azure":
        assert query.pop("api-version") == deployment.api_version
    query.pop("alt", None)  # gemini streams with alt=sse
    assert query == {}, url
    sent = " ".join(request.headers.get(h, "") for h in ("authorization", "x-api-key", "api-key"))
    sent += request.headers.get("x-goog-api-key", "")
    assert ENVIRON[f"KEY_{kind.upper()}"] in sent
    assert "attacker" not in sent
    assert "evil" not in request.headers.get("host", "")


def _executor(recorder: Recorder) -> Executor:
    registry = build_registry(ENVIRON, transport=httpx.MockTransport(recorder))
    return Executor(
        routes=ROUTES,
        provider=registry,
        router_id="router-test",
        retry=RetryPolicy(retries_per_route=0),
        clock_ms=lambda: 1_700_000_000_001,
    )


@pytest.mark.parametrize("tail", MODEL_TAILS)
@pytest.mark.parametrize("kind", KINDS)
async def test_every_provider_call_goes_to_the_configured_deployment(
    kind: ProviderKind, tail: str
) -> None:
    recorder = Recorder()
    executor = _executor(recorder)
    model = f"{kind}-{tail}"
    hostile = {**CHAT, **HOSTILE_FIELDS, "model": model}
    hostile["messages"] = [{"role": "user", "content": "hi", "base_url": EVIL}]
    calls: list[tuple[str, RequestEnvelope, Any]] = [
        ("chat", _envelope(model, hostile, endpoint="/v1/chat/completions", mode="async"), None),
    ]
    chunks: list[StreamChunk] = []
    streamed = {**hostile, "stream": True}
    stream_envelope = _envelope(model, streamed, endpoint="/v1/chat/completions", mode="sync")
    calls.append(("stream", stream_envelope, chunks.append))
    if kind != "anthropic":  # no embeddings API there: planned over the others only
        embed = {"model": model, "input": "hi", **HOSTILE_FIELDS}
        calls.append(
            ("embed", _envelope(model, embed, endpoint=EMBEDDINGS_ENDPOINT, mode="async"), None)
        )
    try:
        for what, envelope, emit in calls:
            before = len(recorder.requests)
            execution = await executor.execute(envelope, emit)
            assert execution.result["status"] == "failed", what  # every upstream said 503
            assert len(recorder.requests) == before + 1, what  # one call, nowhere else
            assert execution.attempts[0]["deployment"] == DEPLOYMENTS[kind].name
    finally:
        await executor.provider.aclose()
    assert chunks == []
    for request in recorder.requests:
        _assert_configured(request, kind)


@pytest.mark.parametrize("kind", KINDS)
async def test_an_upstream_redirect_is_not_followed(kind: ProviderKind) -> None:
    recorder = Recorder(status=307)
    executor = _executor(recorder)
    envelope = _envelope(
        f"{kind}-x", {**CHAT, "model": f"{kind}-x"}, endpoint="/v1/chat/completions", mode="async"
    )
    try:
        execution = await executor.execute(envelope)
    finally:
        await executor.provider.aclose()
    assert execution.result["status"] == "failed"
    (request,) = recorder.requests  # the Location (a metadata address) was never requested
    _assert_configured(request, kind)
