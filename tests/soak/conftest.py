"""The memory soak tier (test_soak.py): the whole stack under steady load for
`TOLLWAY_SOAK_MINUTES` (default 30), RSS of every process sampled.

It runs only when asked for by path (`pytest tests/soak`, which `make soak` does): a
bare `pytest` collects `tests/` and must not start a 30-minute run, and `make test`
names its tiers (unit, integration, e2e, chaos) without this one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: the whole stack under steady load, RSS sampled")
    # test_soak.py reuses the chaos run's helpers (tests/chaos/test_chaos.py), whose module
    # marks its test `chaos`; that conftest is not loaded when only this tier is collected.
    config.addinivalue_line(
        "markers", "chaos: the whole stack as processes, killed and restarted under load"
    )


def _asked_for(config: pytest.Config) -> bool:
    for arg in config.args:
        given = Path(arg.split("::")[0]).resolve()
        if given == HERE or HERE in given.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.name.startswith("test_") and not _asked_for(config):
        return True
    return None
