"""Tenancy's pure modules reach no I/O library (the rule of tests/unit/test_architecture.py).

Kept apart from that file's PURE list while tenancy settles; same walker, same verdicts.
"""

from __future__ import annotations

from typing import Final

import pytest

from tests.unit.test_architecture import ROOT, _closure
from tests.unit.test_architecture import (
    test_pure_modules_reach_no_io_library_even_indirectly as reaches_no_io_library,
)

TENANCY_PURE: Final = (
    "workers/tenancy/model.py",
    "workers/tenancy/names.py",
    "workers/tenancy/keys.py",
    "workers/tenancy/store.py",
    "workers/tenancy/audit.py",
    "workers/tenancy/wire.py",
    "workers/tenancy/specs.py",
    "workers/tenancy/errors.py",
    "workers/tenancy/bootstrap.py",
    "workers/tenancy/admin.py",
    "ingress/admin_objects.py",
)


@pytest.mark.parametrize("relative", TENANCY_PURE)
def test_tenancy_pure_modules_reach_no_io_library(relative: str) -> None:
    reaches_no_io_library(relative)


def test_the_kafka_adapters_do_reach_aiokafka() -> None:
    """Guards the guard: the walker sees the adapters' imports."""
    assert "aiokafka" in _closure(ROOT / "workers/tenancy/config_kafka.py")
    assert "aiokafka" in _closure(ROOT / "workers/topic_follower.py")
