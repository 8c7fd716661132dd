"""workers/callbacks/retry.py: exponential backoff with jitter, giving up after ~3 days."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.callbacks.retry import RetryPolicy, delay_s, next_due_ms

POLICY = RetryPolicy()


@pytest.mark.parametrize(
    ("attempts", "expected_s"),
    [(1, 5), (2, 20), (3, 80), (4, 320), (5, 1280), (6, 5120), (7, 20480), (8, 21600), (50, 21600)],
)
def test_schedule_without_jitter(attempts: int, expected_s: float) -> None:
    assert delay_s(RetryPolicy(jitter=0), attempts, 0.5) == expected_s


@given(st.integers(min_value=1, max_value=10_000), st.floats(min_value=0, max_value=0.999))
def test_jitter_stays_within_its_band(attempts: int, draw: float) -> None:
    plain = delay_s(RetryPolicy(jitter=0), attempts, draw)
    jittered = delay_s(POLICY, attempts, draw)
    assert plain * 0.8 <= jittered <= plain * 1.2


def test_retries_span_about_three_days_then_give_up() -> None:
    first = 0
    now, attempts = first, 1
    while (due := next_due_ms(POLICY, attempts, first, now, 0.5)) is not None:
        now, attempts = due, attempts + 1
    assert 2.7 * 86_400_000 <= now <= 3 * 86_400_000
    assert 15 <= attempts <= 20


def test_the_policy_is_configurable_for_tests() -> None:
    fast = RetryPolicy(base_s=0.1, factor=2, max_delay_s=0.5, give_up_after_s=2, jitter=0)
    assert next_due_ms(fast, 1, 0, 0, 0.0) == 100
    assert next_due_ms(fast, 4, 0, 1_000, 0.0) == 1_500
    assert next_due_ms(fast, 9, 0, 1_900, 0.0) is None


@pytest.mark.parametrize(
    "kwargs", [{"base_s": 0}, {"factor": 0.5}, {"max_delay_s": 1, "base_s": 2}, {"jitter": 1}]
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"retry policy|jitter"):
        RetryPolicy(**kwargs)
