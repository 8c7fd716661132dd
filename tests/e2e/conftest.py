"""The whole stack as separate OS processes, started exactly as `tollway up` starts it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deploy.stack import STATE_DIR, Stack
from tests.integration.conftest import free_port


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str) -> Iterator[Stack]:
    running = Stack(
        ingress_port=free_port(),
        mock_port=free_port(),
        clickhouse_port=free_port(),
        clickhouse_data=STATE_DIR / "clickhouse-e2e",
        routers=2,
        mock_latency_ms=20,
        log_dir=STATE_DIR / "logs" / "e2e",
        # The SDK tests here authenticate with "any": open mode (tests/e2e/test_auth.py runs
        # a stack of its own with virtual keys).
        extra_env={"TOLLWAY_ROUTER_SESSION_TIMEOUT_MS": "6000", "TOLLWAY_AUTH": "open"},
    )
    running.start(kafka_bootstrap)
    yield running
    running.stop()
