"""Integration fixtures: the real broker plus in-process components on loopback."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from schemas.routes import Deployment, ModelRoute, RoutesConfig
from schemas.settings import KafkaSettings
from workers.providers.mock.behaviour import MockSettings
from workers.providers.mock.server import build_app
from workers.providers.registry import build_registry
from workers.router.consumer import Router
from workers.router.execution import Executor
from workers.router.settings import RouterSettings


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """Collect garbage once a test's event loop is closed: a connection the test left open
    then warns (an error here) at the very next test's setup, not in whichever later test
    the collector happens to run in (a CI run blamed tests/integration/test_idempotency.py
    for a socket the callbacks dispatcher's read-back had leaked files earlier)."""
    result = yield
    gc.collect()
    return result


pytestmark = pytest.mark.kafka

# In-process ingress apps and the processes these tests start run in open mode (every
# caller is team `default`, ingress/auth.py) unless a test asks for keys explicitly.
os.environ.setdefault("TOLLWAY_AUTH", "open")


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
            routes=routes_for(mock_url), provider=build_registry({}), router_id=f"test-{group_id}"
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


from collections.abc import Iterator  # noqa: E402  # appended together with the fixture below


@pytest.fixture(scope="session")
def clickhouse_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The embedded ClickHouse (`analytics serve`) as its own process: chdb allows one engine
    per process, so it must not live in the test process. Tests isolate by database name."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    port = free_port()
    data = tmp_path_factory.mktemp("clickhouse")
    log = (data / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "analytics.cli", "analytics", "serve", "--port", str(port),
         "--data-path", str(data / "store")],
        cwd=Path(__file__).resolve().parents[2], stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"the embedded ClickHouse did not start; see {data / 'server.log'}")
        time.sleep(0.1)
    yield url
    server.terminate()
    try:
        server.wait(15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    log.close()
