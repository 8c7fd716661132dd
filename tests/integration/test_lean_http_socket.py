"""The lean provider HTTP client over loopback sockets, under the real adapters.

Against both mocks: the lean benchmark mock and the regular aiohttp mock (which also
serves Azure's URL with its `api-version` query parameter).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import ssl
import subprocess
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from schemas.errors import ProviderConnectionError, ProviderRateLimited, ProviderTimeout
from schemas.routes import Deployment
from workers.providers.http import TransportFailure
from workers.providers.lean_http import LeanHttpClient
from workers.providers.mock.behaviour import MockSettings
from workers.providers.mock.fast_server import serve
from workers.providers.mock.server import build_app
from workers.providers.registry import ProviderRegistry, build_registry
from workers.providers.transport import CLIENT_ENV, build_client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest_asyncio.fixture
async def fast_url() -> AsyncIterator[str]:
    port = _free_port()
    task = asyncio.create_task(serve("127.0.0.1", port, MockSettings(latency_ms=2)))
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    if response.status == 200:
                        break
            await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest_asyncio.fixture
async def aiohttp_mock_root() -> AsyncIterator[str]:
    runner = web.AppRunner(build_app(MockSettings(latency_ms=2)))
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest_asyncio.fixture
async def registry(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ProviderRegistry]:
    monkeypatch.setenv(CLIENT_ENV, "lean")
    providers = build_registry({})
    yield providers
    await providers.aclose()


def _request(model: str = "gpt-4o-mini") -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def test_the_environment_selects_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CLIENT_ENV, "lean")
    assert isinstance(build_client(), LeanHttpClient)
    monkeypatch.setenv(CLIENT_ENV, "curl")
    with pytest.raises(ValueError, match="lean or aiohttp"):
        build_client()


async def test_many_calls_share_few_connections(fast_url: str, registry: ProviderRegistry) -> None:
    client = registry._client
    assert isinstance(client, LeanHttpClient)
    connects = 0
    connect = client._connect

    async def counting(*args: Any) -> Any:
        nonlocal connects
        connects += 1
        return await connect(*args)

    client._connect = counting  # type: ignore[method-assign,assignment]  # counts connections
    deployment = Deployment(name="fast", base_url=fast_url, model="mock")
    for _ in range(3):
        replies = await asyncio.gather(*(registry.chat(deployment, _request()) for _ in range(40)))
        assert {r.usage["completion_tokens"] for r in replies} == {8}
    assert 1 <= connects <= 40  # 120 calls: the connections of the first round are reused
    assert sum(len(idle) for idle in client._idle.values()) == connects


async def test_the_regular_mock_and_azure_query_parameters(
    aiohttp_mock_root: str, registry: ProviderRegistry
) -> None:
    openai = Deployment(name="openai", base_url=f"{aiohttp_mock_root}/v1", model="mock")
    reply = await registry.chat(openai, _request())
    assert reply.served_model == "mock"
    azure = Deployment(
        name="azure",
        provider="azure",
        base_url=aiohttp_mock_root,
        model="mock",
        api_version="2024-10-21",
    )
    assert (await registry.chat(azure, _request())).usage["completion_tokens"] == 8


async def test_errors_map_like_aiohttps(fast_url: str, registry: ProviderRegistry) -> None:
    limited = Deployment(name="l", base_url=fast_url, model="mock-429-2")
    with pytest.raises(ProviderRateLimited) as info:
        await registry.chat(limited, _request())
    assert info.value.retry_after_s == 2.0
    slow = Deployment(name="s", base_url=fast_url, model="mock-slow-3000", timeout_s=0.2)
    with pytest.raises(ProviderTimeout):
        await registry.chat(slow, _request())
    down = Deployment(name="d", base_url=f"http://127.0.0.1:{_free_port()}/v1", timeout_s=2)
    with pytest.raises(ProviderConnectionError, match="could not connect"):
        await registry.chat(down, _request())
    # the client still works after failures
    ok = Deployment(name="ok", base_url=fast_url, model="mock")
    assert (await registry.chat(ok, _request())).usage["completion_tokens"] == 8


def test_the_lean_client_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CLIENT_ENV, raising=False)
    assert isinstance(build_client(), LeanHttpClient)
    monkeypatch.setenv(CLIENT_ENV, "aiohttp")
    assert not isinstance(build_client(), LeanHttpClient)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (openssl, 1 day)."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert),
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest_asyncio.fixture
async def tls_mock_root(tls_files: tuple[Path, Path]) -> AsyncIterator[str]:
    """The regular mock provider behind TLS on loopback."""
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner = web.AppRunner(build_app(MockSettings(latency_ms=2)))
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    yield f"https://127.0.0.1:{port}"
    await runner.cleanup()


async def test_https_verifies_the_server_and_reuses_the_connection(
    tls_mock_root: str, tls_files: tuple[Path, Path]
) -> None:
    body = json.dumps(_request()).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-test"}
    url = f"{tls_mock_root}/v1/chat/completions"
    trusting = LeanHttpClient(
        max_connections=4,
        connect_timeout_s=5,
        ssl_context=ssl.create_default_context(cafile=str(tls_files[0])),
    )
    try:
        for _ in range(3):
            response = await trusting.post(
                url, content=body, headers=headers, params=None, timeout_s=5
            )
            assert response.status_code == 200
            assert json.loads(response.content)["usage"]["completion_tokens"] == 8
        assert sum(len(idle) for idle in trusting._idle.values()) == 1  # one TLS connection
    finally:
        await trusting.aclose()
    default = LeanHttpClient(max_connections=4, connect_timeout_s=5)  # the system's CAs
    try:
        with pytest.raises(TransportFailure) as info:
            await default.post(url, content=body, headers=headers, params=None, timeout_s=5)
        assert info.value.kind == "connect"  # an untrusted certificate: nothing was sent
    finally:
        await default.aclose()


async def test_a_compressed_answer_is_decoded() -> None:
    """A server that compresses although no Accept-Encoding was sent."""
    payload = json.dumps({"ok": True}).encode()

    async def handler(request: web.Request) -> web.Response:
        coding = request.query["coding"]
        body = gzip.compress(payload) if coding == "gzip" else zlib.compress(payload)
        return web.Response(body=body, headers={"Content-Encoding": coding})

    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    client = LeanHttpClient(max_connections=2, connect_timeout_s=5)
    try:
        for coding in ("gzip", "deflate"):
            response = await client.post(
                f"http://127.0.0.1:{port}/", content=b"{}", headers={},
                params={"coding": coding}, timeout_s=5,
            )  # fmt: skip
            assert response.content == payload
    finally:
        await client.aclose()
        await runner.cleanup()
