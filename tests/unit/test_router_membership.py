"""A router that was away longer than its session timeout puts back what it fetched until it
has rejoined the group; a rebalance never drops a member that is still draining."""

from __future__ import annotations

import pytest

from workers.router.membership import (
    REBALANCE_MARGIN_MS,
    AbsenceGuard,
    Poll,
    fetched_after_absence,
    rebalance_timeout_ms,
)


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


def test_the_rebalance_timeout_outlasts_the_revocation_drain() -> None:
    # The chaos stack: session 6 s, max poll 10 s, drain 10 s; aiokafka's default (the
    # session timeout, 6 s) dropped a member still draining.
    assert rebalance_timeout_ms(10_000, 6_000, 10.0) == 10_000 + REBALANCE_MARGIN_MS
    assert rebalance_timeout_ms(300_000, 10_000, 10.0) == 300_000  # the Java client's choice
    assert rebalance_timeout_ms(10_000, 30_000, 0.0) == 30_000


def test_records_are_run_while_polls_keep_coming() -> None:
    guard = AbsenceGuard(6_000, now_s=0.0)
    for now in (0.1, 0.2, 5.9, 11.8):
        assert guard.polled(now)[0] is Poll.RUN


def test_every_poll_after_an_absence_is_put_back_until_the_group_is_rejoined() -> None:
    guard = AbsenceGuard(6_000, now_s=0.0)
    verdict, gap_s = guard.polled(15.0)  # frozen 15 s: the first poll after the wake-up
    assert (verdict, gap_s) == (Poll.ABSENT, 15.0)
    # What the fetcher had buffered comes next, for partitions another router owns now.
    assert guard.polled(15.1)[0] is Poll.UNCONFIRMED
    assert guard.polled(17.0)[0] is Poll.UNCONFIRMED
    assert guard.revoking(17.1) is False  # the rejoin begins; polls were recent
    guard.assigned(18.0)
    assert guard.polled(18.1)[0] is Poll.RUN


def test_a_rebalance_found_after_an_absence_abandons_instead_of_draining() -> None:
    guard = AbsenceGuard(6_000, now_s=0.0)
    assert guard.revoking(15.0) is True  # the heartbeat learned it before the poll did
    assert guard.polled(15.1)[0] is Poll.UNCONFIRMED  # already abandoned: no second time
    guard.assigned(16.0)
    assert guard.polled(16.1)[0] is Poll.RUN


def test_a_poll_held_by_a_rebalance_is_no_absence() -> None:
    guard = AbsenceGuard(6_000, now_s=0.0)
    assert guard.revoking(0.05) is False  # a member joins; getmany waits for the assignment
    guard.assigned(9.0)  # the other member drained for 9 s
    assert guard.polled(9.01)[0] is Poll.RUN
    # Two rebalances back to back while getmany waits: the second is no absence either.
    guard = AbsenceGuard(6_000, now_s=0.0)
    assert guard.revoking(0.1) is False
    guard.assigned(5.0)
    assert guard.revoking(10.0) is False
    guard.assigned(12.0)
    assert guard.polled(12.1)[0] is Poll.RUN


def test_without_a_rebalance_the_records_run_again_after_one_session_timeout() -> None:
    guard = AbsenceGuard(6_000, now_s=0.0)
    assert guard.polled(7.0)[0] is Poll.ABSENT  # the broker kept the member after all
    assert guard.polled(12.9)[0] is Poll.UNCONFIRMED
    assert guard.polled(13.0)[0] is Poll.RUN
