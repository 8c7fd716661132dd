"""Circuit breaker and latency average (workers/router/health.py)."""

from __future__ import annotations

import pytest

from workers.router.health import HealthBoard


def test_unknown_deployments_are_available() -> None:
    assert HealthBoard().available("a", 0)


def test_threshold_failures_open_the_breaker_until_the_cooldown() -> None:
    board = HealthBoard(failure_threshold=3, cooldown_ms=1_000)
    for t in (0, 10, 20):
        board.on_failure("a", t)
    assert board.is_open("a")
    assert not board.available("a", 500)
    assert board.available("a", 1_020)  # cooldown over: half-open


def test_fewer_failures_than_the_threshold_keep_it_closed_and_success_resets() -> None:
    board = HealthBoard(failure_threshold=3)
    board.on_failure("a", 0)
    board.on_failure("a", 1)
    board.on_success("a", 10.0)
    board.on_failure("a", 2)
    board.on_failure("a", 3)
    assert board.available("a", 4)


def test_half_open_lets_one_probe_through() -> None:
    board = HealthBoard(failure_threshold=1, cooldown_ms=100)
    board.on_failure("a", 0)
    assert board.available("a", 100)
    board.on_call("a", 100)
    assert not board.available("a", 101)  # the probe is in flight


@pytest.mark.parametrize(("probe_ok", "open_after"), [(True, False), (False, True)])
def test_the_probe_decides(probe_ok: bool, open_after: bool) -> None:
    board = HealthBoard(failure_threshold=1, cooldown_ms=100)
    board.on_failure("a", 0)
    board.on_call("a", 150)
    if probe_ok:
        board.on_success("a", 5.0)
    else:
        board.on_failure("a", 160)
    assert board.is_open("a") is open_after
    assert board.available("a", 170) is not open_after


def test_latency_is_an_ewma_of_successes() -> None:
    board = HealthBoard(ewma_alpha=0.5)
    assert board.latency_ms("a") is None
    board.on_success("a", 100.0)
    board.on_success("a", 50.0)
    assert board.latency_ms("a") == pytest.approx(75.0)


@pytest.mark.parametrize(
    "kwargs", [{"failure_threshold": 0}, {"cooldown_ms": -1}, {"ewma_alpha": 0.0}]
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        HealthBoard(**kwargs)  # type: ignore[arg-type]  # the table mixes int and float values
