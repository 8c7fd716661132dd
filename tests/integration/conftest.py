"""Integration fixtures: the real broker plus in-process components on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from schemas.routes import Deployment, ModelRoute, RoutesConfig
from schemas.settings import KafkaSettings
from workers.providers.mock.behaviour import MockSettings
from workers.providers.mock.server import build_app
from workers.providers.openai import OpenAIProvider
from workers.router.consumer import Router
from workers.router.execution import Executor
from workers.router.settings import RouterSettings

pytestmark = pytest.mark.kafka


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def mock_url() -> AsyncIterator[str]:
    """The mock provider in this process on a free loopback port, 5 ms latency."""
    runner = web.AppRunner(build_app(MockSettings(latency_ms=5)))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


def routes_for(mock_url: str) -> RoutesConfig:
    mock = Deployment(name="mock", base_url=mock_url)
    down = Deployment(name="down", base_url="http://127.0.0.1:9/v1", timeout_s=2)
    return RoutesConfig(
        models={
            "mock-*": ModelRoute(deployments=(mock,)),
            "gpt-4o-mini": ModelRoute(deployments=(mock,)),
            "fallback-model": ModelRoute(deployments=(down, mock)),
        }
    )


RouterFactory = Callable[..., Any]


@pytest.fixture
async def run_router(
    kafka_bootstrap: str, mock_url: str
) -> AsyncIterator[Callable[[str], asyncio.Task[None]]]:
    """Start routers (as tasks in this loop) in a consumer group of the caller's choosing."""
    routers: list[tuple[Router, asyncio.Task[None]]] = []

    def start(group_id: str) -> asyncio.Task[None]:
        executor = Executor(
            routes=routes_for(mock_url), provider=OpenAIProvider(), router_id=f"test-{group_id}"
        )
        router = Router(
            KafkaSettings(bootstrap=kafka_bootstrap),
            RouterSettings(group_id=group_id, commit_interval_ms=50),
            executor,
        )
        task = asyncio.create_task(router.run())
        routers.append((router, task))
        return task

    yield start
    for router, _ in routers:
        router.stop()
    await asyncio.gather(*(task for _, task in routers), return_exceptions=True)
