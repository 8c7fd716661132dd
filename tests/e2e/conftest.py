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
        extra_env={"TOLLWAY_ROUTER_SESSION_TIMEOUT_MS": "6000"},
    )
    running.start(kafka_bootstrap)
    yield running
    running.stop()
