"""Deployment quota pacing (workers/router/pacing.py)."""

from __future__ import annotations

import pytest

from workers.router.pacing import Pacer, TokenBucket


def test_a_bucket_starts_full_and_refills_continuously() -> None:
    bucket = TokenBucket(60)  # one per second
    bucket.take(0, 60)
    assert bucket.wait_ms(0) > 0
    assert bucket.wait_ms(1_000) == 0
    bucket.take(1_000, 1)
    assert 0 < bucket.wait_ms(1_000) <= 1_001


def test_a_bucket_never_holds_more_than_a_minute() -> None:
    bucket = TokenBucket(10)
    bucket.take(10 * 60_000, 10)  # after a long idle time it was full, not 100
    assert bucket.wait_ms(10 * 60_000) > 0


def test_rpm_paces_queued_work() -> None:
    pacer = Pacer()
    assert pacer.wait_ms("d", 120, None, 0) == 0
    for _ in range(120):
        pacer.spend("d", 120, None, 0, 0)
    wait = pacer.wait_ms("d", 120, None, 0)
    assert 0 < wait <= 501  # 2 per second: the next slot within half a second


def test_tpm_counts_tokens() -> None:
    pacer = Pacer()
    pacer.spend("d", None, 1_000, 0, 1_500)  # an interactive call may overdraw
    assert pacer.wait_ms("d", None, 1_000, 0) == pytest.approx(30_001, abs=2)


def test_a_429_pauses_queued_work_until_its_retry_after() -> None:
    pacer = Pacer()
    pacer.pause("d", 5_000)
    assert pacer.wait_ms("d", None, None, 1_000) == 4_000
    assert pacer.wait_ms("d", None, None, 5_000) == 0


def test_no_quota_means_no_wait() -> None:
    pacer = Pacer()
    pacer.spend("d", None, None, 0, 10**9)
    assert pacer.wait_ms("d", None, None, 0) == 0
