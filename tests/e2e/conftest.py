"""The whole stack as separate OS processes, started exactly as `tollway up` starts it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deploy.stack import STATE_DIR, Stack
from tests.integration.conftest import free_port

E2E_ADMIN_KEY = "e2e-stack-admin-key-0123456789abcdef"
"""The admin credential (`TOLLWAY_ADMIN_KEY`) of the shared e2e stack."""


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
        # The admin key opens /admin/v1/... and /v1/analytics (tests/e2e/test_dashboard.py).
        extra_env={
            "TOLLWAY_ROUTER_SESSION_TIMEOUT_MS": "6000",
            "TOLLWAY_AUTH": "open",
            "TOLLWAY_ADMIN_KEY": E2E_ADMIN_KEY,
            "TOLLWAY_KEY_PEPPER": "e2e-stack-key-pepper-0123456789abcdef",  # the admin API's
        },
    )
    running.start(kafka_bootstrap)
    yield running
    running.stop()
