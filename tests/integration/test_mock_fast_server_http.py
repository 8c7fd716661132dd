"""The lean benchmark mock on a loopback socket, called by the real OpenAI adapter (aiohttp).

The benchmark compares the gateway with this mock called directly, so the router's
production client must read its answers exactly as it reads the regular mock's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from schemas.errors import ProviderRateLimited, ProviderServerError
from schemas.routes import Deployment
from workers.providers.mock.behaviour import MockSettings
from workers.providers.mock.fast_server import serve
from workers.providers.registry import ProviderRegistry, build_registry


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest_asyncio.fixture
async def base_url() -> AsyncIterator[str]:
    port = _free_port()
    task = asyncio.create_task(serve("127.0.0.1", port, MockSettings(latency_ms=5)))
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        break
            await asyncio.sleep(0.05)
    yield f"{url}/v1"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest_asyncio.fixture
async def registry() -> AsyncIterator[ProviderRegistry]:
    providers = build_registry({})
    yield providers
    await providers.aclose()


def _request(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


async def test_the_openai_adapter_reads_its_completions(
    base_url: str, registry: ProviderRegistry
) -> None:
    deployment = Deployment(name="fast", base_url=base_url, model="mock")
    replies = await asyncio.gather(
        *(registry.chat(deployment, _request("gpt-4o-mini")) for _ in range(50))
    )
    for reply in replies:
        assert reply.served_model == "mock"
        assert reply.usage["completion_tokens"] == 8
        assert reply.usage["prompt_tokens"] > 0


async def test_errors_map_as_with_the_regular_mock(
    base_url: str, registry: ProviderRegistry
) -> None:
    limited = Deployment(name="fast-429", base_url=base_url, model="mock-429-2")
    with pytest.raises(ProviderRateLimited) as info:
        await registry.chat(limited, _request("x"))
    assert info.value.retry_after_s == 2.0
    broken = Deployment(name="fast-500", base_url=base_url, model="mock-error-500")
    with pytest.raises(ProviderServerError):
        await registry.chat(broken, _request("x"))
