"""The chaos tier: the whole stack as processes, under faults (see test_chaos.py).

`TOLLWAY_CHAOS_FORM=short|long` picks the form (short: inside `make test`; long:
`make chaos`), `TOLLWAY_CHAOS_SEED` repeats a run's fault schedule.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: the whole stack as processes, killed and restarted under load"
    )
