"""A router that was away longer than its session timeout puts its fetched batch back."""

from __future__ import annotations

import pytest

from workers.router.membership import fetched_after_absence


@pytest.mark.parametrize(
    ("gap_s", "session_timeout_ms", "away"),
    [
        (0.1, 10_000, False),  # an ordinary poll
        (9.99, 10_000, False),  # slow, but still a member
        (10.0, 10_000, False),  # exactly the timeout: the broker waits the full timeout
        (10.01, 10_000, True),
        (12.0, 10_000, True),  # the chaos suite's SIGSTOP of 12 s
        (4.0, 3_000, True),
    ],
)
def test_fetched_after_absence(gap_s: float, session_timeout_ms: int, away: bool) -> None:
    assert fetched_after_absence(gap_s, session_timeout_ms) is away
