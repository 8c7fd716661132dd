"""workers/budget/windows.py (window arithmetic) and ledger.py (the state windows are read from)."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from typing import Any, Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.records import UsageRecord
from workers.budget import windows as w
from workers.budget.config import parse_budgets
from workers.budget.ledger import (
    GLOBAL_SCOPE,
    LedgerBatch,
    Value,
    expired_keys,
    newer_chunk,
    partial_global_scope,
    scope_totals,
    seen_key,
)
from workers.budget.states import crossings, threshold_level


def ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp() * 1000)


NOW: Final = ms("2026-11-27T10:30:15.123")
MIN: Final = w.MINUTE_MS
HOUR: Final = w.HOUR_MS
DAY: Final = w.DAY_MS


@pytest.mark.parametrize(
    ("window", "start", "end"),
    [
        ("1h", ms("2026-11-27T09:30:00"), ms("2026-11-27T10:31:00")),
        ("24h", ms("2026-11-26T10:00:00"), ms("2026-11-27T11:00:00")),
        ("7d", ms("2026-11-20T10:00:00"), ms("2026-11-27T11:00:00")),
        ("30d", ms("2026-10-28T10:00:00"), ms("2026-11-27T11:00:00")),
        ("mtd", ms("2026-11-01T00:00:00"), ms("2026-11-27T11:00:00")),
    ],
)
def test_window_bounds(window: w.Window, start: int, end: int) -> None:
    assert w.window_start_ms(window, NOW) == start
    assert w.window_end_ms(window, NOW) == end
    assert w.in_window(window, start, NOW)
    assert not w.in_window(window, start - 1, NOW)


@pytest.mark.parametrize(
    ("now", "month_start", "next_month", "label"),
    [
        ("2026-11-27T10:30:00", "2026-11-01T00:00:00", "2026-12-01T00:00:00", "2026-11"),
        ("2026-12-31T23:59:59.999", "2026-12-01T00:00:00", "2027-01-01T00:00:00", "2026-12"),
        ("2028-02-29T12:00:00", "2028-02-01T00:00:00", "2028-03-01T00:00:00", "2028-02"),
        ("2027-01-01T00:00:00", "2027-01-01T00:00:00", "2027-02-01T00:00:00", "2027-01"),
    ],
)
def test_calendar_months_in_utc(now: str, month_start: str, next_month: str, label: str) -> None:
    assert w.month_start_ms(ms(now)) == ms(month_start)
    assert w.next_month_start_ms(ms(now)) == ms(next_month)
    assert w.month_label(ms(now)) == label


@pytest.mark.parametrize(("t", "size", "start"), [(0, MIN, 0), (59_999, MIN, 0), (-1, MIN, -MIN)])
def test_bucket_start_floors(t: int, size: int, start: int) -> None:
    assert w.bucket_start(t, size) == start


def test_frees_at_is_when_enough_old_spend_has_left() -> None:
    old, recent = w.bucket_start(NOW - 50 * MIN, MIN), w.bucket_start(NOW - 10 * MIN, MIN)
    buckets = {old: 6, recent: 5}
    assert w.frees_at_ms("1h", buckets, 10, NOW) == old + HOUR + MIN
    assert w.window_total("1h", buckets, old + HOUR + MIN) == 5
    assert w.window_total("1h", buckets, old + HOUR + MIN - 1) == 11
    assert w.frees_at_ms("1h", buckets, 12, NOW) is None  # under the limit already
    assert w.frees_at_ms("1h", buckets, 3, NOW) == recent + HOUR + MIN  # both must leave
    assert w.frees_at_ms("mtd", {w.bucket_start(NOW, HOUR): 9}, 5, NOW) == ms("2026-12-01T00:00")


_events = st.lists(
    st.tuples(st.integers(0, 40 * DAY), st.integers(0, 10**9)), max_size=60
)  # (age in ms, amount)


def _buckets(events: Sequence[tuple[int, int]], window: w.Window) -> dict[int, int]:
    return w.add_to_buckets(
        {}, ((NOW - age, amount) for age, amount in events), w.BUCKET_MS[window]
    )


@given(_events, st.sampled_from(w.WINDOWS), st.integers(-DAY, DAY))
def test_window_total_is_the_sum_of_usage_in_the_window(
    events: list[tuple[int, int]], window: w.Window, shift: int
) -> None:
    now = NOW + shift
    past = [(NOW - age, amount) for age, amount in events if NOW - age <= now]
    buckets = w.add_to_buckets({}, past, w.BUCKET_MS[window])
    expected = sum(a for t, a in past if w.window_start_ms(window, now) <= t)
    assert w.window_total(window, buckets, now) == expected


@given(_events, st.sampled_from(["1h", "24h", "7d", "30d"]))
def test_rolling_windows_count_at_least_their_length_and_at_most_one_bucket_more(
    events: list[tuple[int, int]], window: w.Window
) -> None:
    length, size = w.ROLLING_LENGTH_MS[window], w.BUCKET_MS[window]
    for age, _ in events:
        counted = w.in_window(window, NOW - age, NOW)
        if age < length:
            assert counted
        if age >= length + size:
            assert not counted


@given(_events, st.sampled_from(w.WINDOWS), st.integers(1, 5 * 10**9))
def test_frees_at_is_the_first_moment_under_the_limit(
    events: list[tuple[int, int]], window: w.Window, limit: int
) -> None:
    buckets = _buckets(events, window)
    frees = w.frees_at_ms(window, buckets, limit, NOW)
    if frees is None:
        assert w.window_total(window, buckets, NOW) < limit
        return
    assert frees > NOW
    assert w.window_total(window, buckets, frees) < limit
    assert w.window_total(window, buckets, frees - 1) >= limit


def test_retention_covers_every_window() -> None:
    for window in w.WINDOWS:
        size = w.BUCKET_MS[window]
        assert w.retained_from_ms(size, NOW) <= w.window_start_ms(window, ms("2026-12-31T23:59"))
        assert w.retained_from_ms(size, NOW) <= w.window_start_ms(window, NOW)


# --- ledger: the stored buckets, dedup and replays ----------------------------------------

BUDGETS: Final = parse_budgets(
    """
- {scope: "team:acme", window: 1h, limit_usd: "0.000010", enforcement: hard}
- {scope: "team:acme", window: mtd, limit_usd: "1", enforcement: soft}
- {scope: global, window: 24h, limit_usd: "0.00005"}
"""
)


def usage(
    n: int, *, cost: int = 1_000, team: str = "acme", at: int = NOW, status: str = "priced"
) -> UsageRecord:
    return {
        "usage_id": f"req_{n}:exec.1",
        "request_id": f"req_{n}",
        "attempt_id": "exec.1",
        "team_id": team,
        "key_id": "key_1",
        "mode": "sync",
        "requested_model": "mock-a",
        "model": "mock-a",
        "provider": "openai",
        "deployment": "mock",
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "cached_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cost_nano_usd": cost,
        "saved_nano_usd": 0,
        "cost_status": status,  # type: ignore[typeddict-item]  # tests pass the literal
        "pricing_version": "v",
        "occurred_at_ms": at,
        "priced_at_ms": at,
    }


def run(
    store: dict[str, Value], records: Sequence[tuple[int, UsageRecord]], partition: int = 0
) -> LedgerBatch:
    batch = LedgerBatch(store.get, partition, NOW)
    for offset, record in records:
        batch.apply(offset, record)
    store.update(batch.writes)
    return batch


def spent(store: dict[str, Value], scope: tuple[str, str], window: w.Window = "1h") -> int:
    return scope_totals(store.get, [scope], NOW)[window].spent_nano_usd  # type: ignore[list-item]  # a Scope


def test_one_usage_lands_in_every_scope_and_both_granularities() -> None:
    store: dict[str, Value] = {}
    batch = run(store, [(0, usage(1, cost=700))])
    assert batch.counts == {"applied": 1, "replayed": 0, "duplicate": 0}
    assert batch.touched == {
        ("team", "acme"),
        ("key", "key_1"),
        ("model", "acme/mock-a"),
        ("global", "partition-0"),
    }
    for scope in batch.touched:
        totals = scope_totals(store.get, [scope], NOW)
        assert {window: t.spent_nano_usd for window, t in totals.items()} == dict.fromkeys(
            w.WINDOWS, 700
        )
    assert f"m|team:acme|{w.bucket_start(NOW, HOUR)}" in store
    assert f"h|team:acme|{w.bucket_start(NOW, DAY)}" in store


def test_a_duplicate_usage_id_at_a_later_offset_is_not_counted() -> None:
    store: dict[str, Value] = {}
    run(store, [(0, usage(1)), (1, usage(2))])
    later = run(store, [(2, usage(3)), (3, usage(1)), (4, usage(2))])
    assert later.counts == {"applied": 1, "replayed": 0, "duplicate": 2}
    assert spent(store, ("team", "acme")) == 3_000


def test_the_processors_own_replay_is_skipped_by_chunk_offsets() -> None:
    store: dict[str, Value] = {}
    run(store, [(0, usage(1)), (1, usage(2))])
    replay = run(store, [(0, usage(1)), (1, usage(2)), (2, usage(3))])
    assert replay.counts == {"applied": 1, "replayed": 2, "duplicate": 0}
    assert spent(store, ("team", "acme")) == 3_000


def test_a_crash_between_the_seen_set_and_the_chunks_loses_nothing() -> None:
    store: dict[str, Value] = {}
    first = LedgerBatch(store.get, 0, NOW)
    first.apply(0, usage(1))
    store.update({k: v for k, v in first.writes.items() if k.startswith("s|")})  # chunks lost
    replay = run(store, [(0, usage(1))])
    assert replay.counts["applied"] == 1
    assert spent(store, ("team", "acme")) == 1_000


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_totals_equal_unique_usage_under_duplicates_and_crashes(data: st.DataObject) -> None:
    """Invariant 2: whatever is redelivered and whatever a crash half-writes, spend is counted
    once. The log holds usage with repeated ids (the cost processor re-priced after a crash);
    the processor crashes at random batches, persisting an arbitrary subset of the batch's
    writes, and replays from the last batch whose writes were all persisted (the commit)."""
    ids = data.draw(st.lists(st.integers(0, 30), min_size=1, max_size=80), label="usage ids")
    costs = {i: 1_000 + i for i in set(ids)}
    ages = {i: data.draw(st.integers(0, 2 * HOUR), label=f"age {i}") for i in set(ids)}
    log = [(offset, usage(i, cost=costs[i], at=NOW - ages[i])) for offset, i in enumerate(ids)]
    rng = random.Random(data.draw(st.integers(0, 2**32), label="seed"))
    store: dict[str, Value] = {}
    committed = 0
    while committed < len(log):
        size = rng.randint(1, 10)
        batch = LedgerBatch(store.get, 0, NOW)
        for offset, record in log[committed : committed + size]:
            batch.apply(offset, record)
        if rng.random() < 0.3:  # crash: some writes reached the changelog, the commit did not
            store.update({k: v for k, v in batch.writes.items() if rng.random() < 0.5})
            continue
        store.update(batch.writes)
        committed += size
    for window in w.WINDOWS:
        expected = sum(costs[i] for i in set(ids) if w.in_window(window, NOW - ages[i], NOW))
        for scope in (("team", "acme"), ("key", "key_1"), ("global", "partition-0")):
            assert spent(store, scope, window) == expected


def test_states_carry_limits_status_and_frees_at() -> None:
    store: dict[str, Value] = {}
    batch = LedgerBatch(store.get, 0, NOW)
    for n in range(12):
        batch.apply(n, usage(n, cost=1_000))
    states, events = batch.states(BUDGETS, now_ms=NOW, updated_at_ms=NOW - 5)
    by_key = {(s["scope_type"], s["scope_id"], s["window"]): s for s in states}
    hour = by_key[("team", "acme", "1h")]
    assert (hour["spent_nano_usd"], hour["limit_nano_usd"], hour["status"]) == (
        12_000,
        10_000,
        "exceeded",
    )
    assert hour["remaining_nano_usd"] == 0
    assert hour["enforcement"] == "hard"
    assert hour["frees_at_ms"] == w.bucket_start(NOW, MIN) + HOUR + MIN
    assert hour["updated_at_ms"] == NOW - 5
    month = by_key[("team", "acme", "mtd")]
    assert (month["status"], month["remaining_nano_usd"]) == ("ok", 999_988_000)
    key_state = by_key[("key", "key_1", "24h")]
    assert (key_state["limit_nano_usd"], key_state["status"]) == (None, "ok")
    assert [s["window"] for s in states if s["scope_type"] == "global"] == ["1h"]  # heartbeat
    assert [(e["window"], e["threshold_pct"]) for e in events] == [
        ("1h", 50),
        ("1h", 80),
        ("1h", 100),
    ]


def test_threshold_events_fire_once_per_crossing_with_stable_ids() -> None:
    store: dict[str, Value] = {}
    first = run(store, [(0, usage(0, cost=6_000))])
    _, events = first.states(BUDGETS, now_ms=NOW, updated_at_ms=NOW)
    store.update(first.writes)
    assert [e["threshold_pct"] for e in events] == [50]
    assert events[0]["event_id"] == f"team:acme:1h:50:{w.window_start_ms('1h', NOW)}"
    second = run(store, [(1, usage(1, cost=3_000))])
    _, events = second.states(BUDGETS, now_ms=NOW, updated_at_ms=NOW)
    store.update(second.writes)
    assert [e["threshold_pct"] for e in events] == [80]
    again = LedgerBatch(store.get, 0, NOW)
    assert again.states(BUDGETS, now_ms=NOW, updated_at_ms=NOW, scopes=[("team", "acme")])[1] == []
    # two hours later the spend has left the 1h window: the level drops, silently
    later = LedgerBatch(store.get, 0, NOW + 2 * HOUR)
    _, events = later.states(
        BUDGETS, now_ms=NOW + 2 * HOUR, updated_at_ms=NOW, scopes=[("team", "acme")]
    )
    assert events == []
    assert later.writes["l|team:acme|1h"]["v"] == 0


@pytest.mark.parametrize(
    ("spent_nano", "limit", "level"),
    [(0, 100, 0), (49, 100, 0), (50, 100, 50), (99, 100, 80), (100, 100, 100), (500, 100, 100)],
)
def test_threshold_level(spent_nano: int, limit: int, level: int) -> None:
    assert threshold_level(spent_nano, limit) == level


def test_mtd_events_are_named_by_month() -> None:
    state: Any = {
        "scope_type": "team",
        "scope_id": "acme",
        "window": "mtd",
        "spent_nano_usd": 100,
        "limit_nano_usd": 100,
    }
    level, events = crossings(state, 80, NOW)
    assert level == 100
    assert [e["event_id"] for e in events] == ["team:acme:mtd:100:2026-11"]


def test_unpriced_usage_fails_hard_budgets_closed_while_in_the_window() -> None:
    store: dict[str, Value] = {}
    batch = run(store, [(0, usage(0, cost=0, status="unpriced"))])
    states, _ = batch.states(BUDGETS, now_ms=NOW, updated_at_ms=NOW, scopes=[("team", "acme")])
    hour = next(s for s in states if s["window"] == "1h")
    assert (hour["spent_nano_usd"], hour["status"]) == (0, "exceeded")
    assert hour["frees_at_ms"] == w.bucket_start(NOW, MIN) + HOUR + MIN
    ignoring = BUDGETS.model_copy(update={"unpriced": "ignore"})
    states, _ = batch.states(ignoring, now_ms=NOW, updated_at_ms=NOW, scopes=[("team", "acme")])
    assert next(s for s in states if s["window"] == "1h")["status"] == "ok"


def test_global_spend_sums_the_partitions_shares() -> None:
    store: dict[str, Value] = {}
    run(store, [(0, usage(1, cost=2_000, team="a"))], partition=0)
    run(store, [(0, usage(2, cost=3_000, team="b"))], partition=4)
    batch = LedgerBatch(store.get, 0, NOW)
    states, events = batch.states(
        BUDGETS, now_ms=NOW, updated_at_ms=NOW, scopes=[GLOBAL_SCOPE], usage_partitions=6
    )
    day = next(s for s in states if s["window"] == "24h")
    assert (day["scope_id"], day["spent_nano_usd"], day["status"]) == ("*", 5_000, "ok")
    assert events == []
    assert spent(store, partial_global_scope(4)) == 3_000


def test_forwarded_chunks_only_move_forward() -> None:
    assert newer_chunk(None, {"o": 3})
    assert newer_chunk({"o": 3}, {"o": 3})
    assert not newer_chunk({"o": 4}, {"o": 3})


def test_expired_keys() -> None:
    keys = [
        f"m|team:a|{w.bucket_start(NOW - 3 * HOUR, HOUR)}",  # minutes older than 2 h: gone
        f"m|team:a|{w.bucket_start(NOW - HOUR, HOUR)}",
        f"h|team:a|{w.bucket_start(NOW - 40 * DAY, DAY)}",  # hours older than 32 days: gone
        f"h|team:a|{w.bucket_start(NOW - 31 * DAY, DAY)}",
        seen_key(0, NOW - 20 * MIN),  # behind partition 0's watermark by > 15 min: gone
        seen_key(0, NOW - 5 * MIN),
        seen_key(1, NOW - 20 * MIN),  # partition 1 has no watermark yet: kept
        "l|team:a|1h",
    ]
    gone = set(expired_keys(keys, now_ms=NOW, watermarks_ms={0: NOW}, dedup_horizon_ms=15 * MIN))
    assert gone == {keys[0], keys[2], keys[4]}
