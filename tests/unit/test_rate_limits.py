"""The pure rate limiter (workers/router/rate_limits.py): windows, Retry-After, leases."""

from __future__ import annotations

from bisect import bisect_left

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.router.rate_limits import (
    SLOT_MS,
    WINDOW_MS,
    Lease,
    RateLimiter,
    Refusal,
    Scope,
    estimate_tokens,
    is_rate_limited,
    scopes_of,
)
from workers.tenancy.model import KeyRecord, Limits, TagPolicy, TeamRecord


class View:
    """A TenancyView over two dicts."""

    def __init__(self, teams: list[TeamRecord], keys: list[KeyRecord]) -> None:
        self.teams = {t.team_id: t for t in teams}
        self.keys = {k.key_id: k for k in keys}

    def key_by_digest(self, key_digest: str) -> KeyRecord | None:
        return next((k for k in self.keys.values() if k.key_digest == key_digest), None)

    def key(self, key_id: str) -> KeyRecord | None:
        return self.keys.get(key_id)

    def team(self, team_id: str) -> TeamRecord | None:
        return self.teams.get(team_id)

    def tag_policy(self, tag: str) -> TagPolicy | None:
        return None


NO_LIMITS = Limits()


def key(key_id: str, team_id: str, limits: Limits = NO_LIMITS) -> KeyRecord:
    return KeyRecord(key_id, team_id, "d" * 64, "tw-abc", limits=limits)


def rpm(n: int, name: str = "key:k1") -> tuple[Scope, ...]:
    return (Scope(name, Limits(rpm=n)),)


def lease(got: Lease | Refusal) -> Lease:
    assert isinstance(got, Lease), got
    return got


def refusal(got: Lease | Refusal) -> Refusal:
    assert isinstance(got, Refusal), got
    return got


# --- which requests are limited -------------------------------------------------------

VIEW = View(
    teams=[
        TeamRecord("free", "Free"),
        TeamRecord("capped", "Capped", limits=Limits(tpm=10_000)),
    ],
    keys=[
        key("k_limited", "free", Limits(rpm=60)),
        key("k_open", "free"),
        key("k_capped", "capped", Limits(max_concurrency=2)),
    ],
)


@pytest.mark.parametrize(
    ("team_id", "key_id", "names"),
    [
        ("free", "k_open", ()),
        ("free", None, ()),
        ("free", "k_limited", ("key:k_limited",)),
        ("capped", None, ("team:capped",)),
        ("capped", "k_capped", ("key:k_capped", "team:capped")),
        ("unknown", "k_unknown", ()),
    ],
)
def test_scopes_of_a_request_are_its_limited_key_then_its_limited_team(
    team_id: str, key_id: str | None, names: tuple[str, ...]
) -> None:
    assert tuple(s.name for s in scopes_of(VIEW, team_id, key_id)) == names
    assert is_rate_limited(VIEW, team_id, key_id) == bool(names)


@pytest.mark.parametrize(
    ("body", "request_fields", "embeddings", "expected"),
    [
        (b"x" * 30, {"max_tokens": 100}, False, 10 + 100),
        (b"x" * 31, {"max_completion_tokens": 50, "max_tokens": 999}, False, 11 + 50),
        (b"x" * 30, {"max_tokens": 100, "n": 3}, False, 10 + 300),
        (b"x" * 30, {}, False, 10 + 1_024),
        (b"x" * 30, {"max_tokens": 100}, True, 10),
        (b"", {}, True, 1),
    ],
)
def test_estimate_is_prompt_bytes_over_3_plus_the_most_output(
    body: bytes, request_fields: dict[str, int], embeddings: bool, expected: int
) -> None:
    assert estimate_tokens(body, request_fields, embeddings=embeddings) == expected


# --- requests per minute ----------------------------------------------------------------


def test_rpm_admits_the_limit_then_refuses_until_the_first_slot_leaves_the_window() -> None:
    limiter = RateLimiter()
    for i in range(60):
        lease(limiter.acquire(rpm(60), 1_000_000 + i * 10, 1)).release()
    no = refusal(limiter.acquire(rpm(60), 1_000_600, 1))
    assert (no.scope, no.limit, no.allowed) == ("key:k1", "rpm", 60)
    # charges at 1_000_000..1_000_090 share the slot [1_000_000, 1_000_100): it leaves the
    # window at 1_060_100, so every admission counts for at least 60 s
    assert no.wait_ms == 1_060_100 - 1_000_600
    assert no.retry_after_s == 60
    assert "60 requests per minute" in no.message()
    assert "key:k1" in no.message()
    assert isinstance(limiter.acquire(rpm(60), 1_060_099, 1), Refusal)
    assert isinstance(limiter.acquire(rpm(60), 1_060_100, 1), Lease)


@pytest.mark.parametrize(
    ("wait_ms", "retry_after_s"),
    [(1, 1), (999, 1), (1_000, 1), (1_001, 2), (59_500, 60), (60_100, 61), (None, 1)],
)
def test_retry_after_is_whole_seconds_rounded_up(wait_ms: int | None, retry_after_s: int) -> None:
    assert Refusal("key:k", "rpm", 1, wait_ms).retry_after_s == retry_after_s


def test_retry_after_of_a_refused_request_finds_room() -> None:
    limiter = RateLimiter()
    for t in (0, 20_000, 40_000):
        lease(limiter.acquire(rpm(3), t, 1))
    no = refusal(limiter.acquire(rpm(3), 45_321, 1))
    assert isinstance(limiter.acquire(rpm(3), 45_321 + no.retry_after_s * 1000 - 1_000, 1), Refusal)
    assert isinstance(limiter.acquire(rpm(3), 45_321 + no.retry_after_s * 1000, 1), Lease)


def test_a_refusal_charges_nothing_in_any_scope() -> None:
    limiter = RateLimiter()
    both = (Scope("key:k1", Limits(rpm=100)), Scope("team:t", Limits(rpm=1)))
    lease(limiter.acquire(both, 0, 5))
    refusal(limiter.acquire(both, 10, 5))
    assert limiter.usage("key:k1", 10) == (1, 5, 1)
    assert limiter.usage("team:t", 10) == (1, 5, 1)


def test_the_longest_wait_is_reported() -> None:
    limiter = RateLimiter()
    scopes = (Scope("key:k1", Limits(rpm=1)), Scope("team:t", Limits(rpm=2)))
    lease(limiter.acquire(scopes, 0, 1))
    lease(limiter.acquire((scopes[1],), 30_000, 1))
    no = refusal(limiter.acquire(scopes, 30_000, 1))
    assert no.scope == "key:k1"  # the team frees at 60.1 s too, the key's wait is not shorter
    assert no.wait_ms == 60_100 - 30_000
    k2, u = Scope("key:k2", Limits(rpm=1)), Scope("team:u", Limits(rpm=1))
    lease(limiter.acquire((k2,), 0, 1))
    lease(limiter.acquire((u,), 30_000, 1))
    no = refusal(limiter.acquire((k2, u), 50_000, 1))
    assert (no.scope, no.wait_ms) == ("team:u", 90_100 - 50_000)


def test_a_zero_limit_admits_nothing() -> None:
    no = refusal(RateLimiter().acquire(rpm(0), 0, 1))
    assert no.wait_ms == WINDOW_MS


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 50),
    gaps_ms=st.lists(st.integers(0, 5_000), min_size=1, max_size=400),
)
def test_never_more_than_the_rpm_in_any_60_s_window(limit: int, gaps_ms: list[int]) -> None:
    limiter = RateLimiter()
    now_ms, admitted = 0, []
    for gap in gaps_ms:
        now_ms += gap
        if isinstance(limiter.acquire(rpm(limit), now_ms, 1), Lease):
            admitted.append(now_ms)
    for i, start in enumerate(admitted):  # every window starting at an admission
        assert bisect_left(admitted, start + WINDOW_MS) - i <= limit


@settings(max_examples=30, deadline=None)
@given(limit=st.integers(1, 30), start_ms=st.integers(0, 10**12))
def test_a_steady_stream_is_admitted_at_the_limit(limit: int, start_ms: int) -> None:
    """Requests every 50 ms for 3 minutes: exactly `limit` in each of the three minutes,
    give or take the slot a window boundary falls in."""
    limiter = RateLimiter()
    admitted = [
        t
        for t in range(start_ms, start_ms + 180_000, 50)
        if isinstance(limiter.acquire(rpm(limit), t, 1), Lease)
    ]
    assert 3 * limit - 1 <= len(admitted) <= 3 * limit
    gaps = [b - a for a, b in zip(admitted[:-limit], admitted[limit:], strict=True)]
    assert all(WINDOW_MS <= gap <= WINDOW_MS + SLOT_MS + 50 for gap in gaps)


# --- tokens per minute --------------------------------------------------------------


def test_tpm_charges_the_estimate_and_settles_to_the_real_count() -> None:
    limiter = RateLimiter()
    tpm = (Scope("team:t", Limits(tpm=1_000)),)
    first = lease(limiter.acquire(tpm, 0, 600))
    no = refusal(limiter.acquire(tpm, 1, 600))
    assert (no.limit, no.allowed, no.wait_ms) == ("tpm", 1_000, 60_100 - 1)
    first.settle(150)  # the answer was short: 450 tokens come back
    second = lease(limiter.acquire(tpm, 2, 600))
    assert limiter.usage("team:t", 2)[1] == 750
    second.settle(900)  # longer than estimated: the overshoot is charged too
    assert limiter.usage("team:t", 2)[1] == 1_050
    second.settle(10)  # once only
    assert limiter.usage("team:t", 2)[1] == 1_050
    assert isinstance(limiter.acquire(tpm, 60_099, 1), Refusal)
    assert limiter.usage("team:t", 60_100) == (0, 0, 2)  # both never released: 2 in flight


def test_a_failed_call_gives_its_tokens_back() -> None:
    limiter = RateLimiter()
    tpm = (Scope("team:t", Limits(tpm=1_000)),)
    failed = lease(limiter.acquire(tpm, 0, 1_000))
    failed.settle(0)
    failed.release()
    assert isinstance(limiter.acquire(tpm, 1, 1_000), Lease)


def test_a_request_larger_than_the_tpm_runs_alone_in_an_empty_window() -> None:
    limiter = RateLimiter()
    tpm = (Scope("team:t", Limits(tpm=1_000)),)
    lease(limiter.acquire(tpm, 0, 10))
    no = refusal(limiter.acquire(tpm, 5_000, 5_000))
    assert no.wait_ms == 60_100 - 5_000
    big = lease(limiter.acquire(tpm, 60_100, 5_000))
    big.settle(4_000)
    assert isinstance(limiter.acquire(tpm, 120_000, 1), Refusal)
    assert isinstance(limiter.acquire(tpm, 120_200, 1), Lease)


def test_settling_after_the_charge_left_the_window_changes_nothing() -> None:
    limiter = RateLimiter()
    tpm = (Scope("team:t", Limits(tpm=1_000)),)
    slow = lease(limiter.acquire(tpm, 0, 500))
    lease(limiter.acquire(tpm, 60_500, 100))
    slow.settle(5_000)  # a call longer than the window: its slot is gone
    assert limiter.usage("team:t", 60_500)[1] == 100


@settings(max_examples=150, deadline=None)
@given(
    tpm=st.integers(100, 5_000),
    calls=st.lists(
        st.tuples(st.integers(0, 3_000), st.integers(1, 100), st.integers(0, 100)),
        min_size=1,
        max_size=300,
    ),
)
def test_never_more_than_the_tpm_in_any_60_s_window_when_estimates_are_upper_bounds(
    tpm: int, calls: list[tuple[int, int, int]]
) -> None:
    limiter = RateLimiter()
    scope = (Scope("team:t", Limits(tpm=tpm)),)
    now_ms, used = 0, []
    for gap, estimate, used_pct in calls:
        now_ms += gap
        got = limiter.acquire(scope, now_ms, estimate)
        if isinstance(got, Lease):
            actual = estimate * used_pct // 100
            got.settle(actual)
            got.release()
            used.append((now_ms, actual))
    for start, _ in used:
        in_window = sum(n for t, n in used if start <= t < start + WINDOW_MS)
        assert in_window <= tpm


# --- concurrency --------------------------------------------------------------------


def test_concurrency_is_released_once_and_refusals_have_no_time_wait() -> None:
    limiter = RateLimiter()
    two = (Scope("key:k1", Limits(max_concurrency=2)),)
    a, b = lease(limiter.acquire(two, 0, 1)), lease(limiter.acquire(two, 0, 1))
    no = refusal(limiter.acquire(two, 0, 1))
    assert (no.limit, no.wait_ms, no.retry_after_s) == ("max_concurrency", None, 1)
    assert "2 requests in flight" in no.message()
    a.release()
    a.release()  # idempotent: b still holds its slot
    assert a.released
    c = lease(limiter.acquire(two, 0, 1))
    assert isinstance(limiter.acquire(two, 0, 1), Refusal)
    b.release()
    c.release()
    assert limiter.usage("key:k1", 0)[2] == 0


@settings(max_examples=150, deadline=None)
@given(
    limit=st.integers(1, 5),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 20)), min_size=1, max_size=200),
)
def test_never_more_than_max_concurrency_in_flight(limit: int, ops: list[tuple[bool, int]]) -> None:
    limiter = RateLimiter()
    scope = (Scope("team:t", Limits(max_concurrency=limit)),)
    open_leases: list[Lease] = []
    for start, pick in ops:
        if start:
            got = limiter.acquire(scope, 0, 1)
            if isinstance(got, Lease):
                open_leases.append(got)
            else:
                assert len(open_leases) == limit
        elif open_leases:
            open_leases.pop(pick % len(open_leases)).release()
        assert len(open_leases) <= limit
        assert limiter.usage("team:t", 0)[2] == len(open_leases)


def test_a_limit_added_while_calls_run_counts_them() -> None:
    limiter = RateLimiter()
    running = [
        lease(limiter.acquire((Scope("team:t", Limits(rpm=1_000)),), 0, 1)) for _ in range(3)
    ]
    assert isinstance(limiter.acquire((Scope("team:t", Limits(max_concurrency=3)),), 0, 1), Refusal)
    running[0].release()
    assert isinstance(limiter.acquire((Scope("team:t", Limits(max_concurrency=3)),), 0, 1), Lease)


# --- memory -------------------------------------------------------------------------


def test_idle_scopes_are_forgotten_and_logs_stay_bounded() -> None:
    limiter = RateLimiter(prune_every=10)
    for i in range(50):
        lease(limiter.acquire(rpm(1_000_000, f"key:k{i}"), i, 1)).release()
    assert limiter.scopes <= 50
    limiter.prune(WINDOW_MS + SLOT_MS + 50)
    assert limiter.scopes == 0
    busy = (Scope("team:busy", Limits(rpm=10**9)),)
    for t in range(0, 10 * WINDOW_MS, 7):  # 10 minutes of requests every 7 ms
        lease(limiter.acquire(busy, t, 1)).release()
    state = limiter._states["team:busy"]
    assert len(state.requests.slots) <= WINDOW_MS // SLOT_MS + 1
    assert len(state.tokens.slots) <= WINDOW_MS // SLOT_MS + 1


def test_window_and_slot_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(slot_ms=0)
