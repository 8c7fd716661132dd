"""Shared fixtures. Kafka is the real broker, started by `deploy/kafka/kafka.sh`.

A test that needs Kafka fails (never skips) when the broker cannot start: a
green run must mean the broker-backed tiers really ran.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# A test phase 60 s short of its timeout gets its asyncio tasks' stacks on stderr
# (tests/hang_report.py).
pytest_plugins = ["tests.hang_report"]

# The machines are shared and noisy: property tests judge results, never speed.
settings.register_profile("tollway", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tollway")

# Tests use their own broker (ports and data dir) so a developer's `tollway up` is untouched;
# the Makefile sets the same values.
_REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("TOLLWAY_KAFKA_PORT", "29092")
os.environ.setdefault("TOLLWAY_KAFKA_CONTROLLER_PORT", "29093")
os.environ.setdefault("TOLLWAY_KAFKA_DIR", str(_REPO / ".tollway" / "kafka-test"))
os.environ.setdefault("TOLLWAY_KAFKA_BOOTSTRAP", "127.0.0.1:29092")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    from deploy.stack import StackError, start_kafka

    try:
        return start_kafka()
    except StackError as exc:
        pytest.fail(f"Kafka could not start, so the broker-backed tests cannot run: {exc}")


def pytest_collection_finish(session: pytest.Session) -> None:
    """An empty tier is a broken tier: fail instead of letting pytest exit 5."""
    if not session.items and not session.config.option.collectonly:
        raise pytest.UsageError("no tests were collected: a tier must never be empty")
