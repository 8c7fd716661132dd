"""analytics/loader/rows.py: records -> rows, money exact, tables in step with the migrations."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from analytics.loader.rows import (
    ATTEMPTS,
    BUDGET_EVENTS,
    REQUESTS,
    TABLES,
    USAGE,
    Table,
    attempt_row,
    budget_event_row,
    first_per_key,
    request_row,
    usage_row,
    usd,
)
from analytics.migrate import bundled
from schemas.records import Attempt, BudgetEvent, Result, UsageRecord


@pytest.mark.parametrize(
    ("nano", "expected"),
    [
        (0, "0E-9"),
        (1, "1E-9"),
        (999_999_999, "0.999999999"),
        (1_000_000_000, "1.000000000"),
        (1_500_000_001, "1.500000001"),
        (9_223_372_036_854_775_807, "9223372036.854775807"),  # the Avro long's maximum
        (-25, "-2.5E-8"),  # a refund or correction stays exact too
    ],
)
def test_usd_is_exact(nano: int, expected: str) -> None:
    assert usd(nano) == Decimal(expected)
    assert str(usd(nano)) == expected


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_usd_round_trips_to_nano(nano: int) -> None:
    assert usd(nano).scaleb(9) == nano
    assert usd(nano).as_tuple().exponent == -9


def _result(**overrides: object) -> Result:
    base: Result = {
        "request_id": "req_1", "team_id": "t", "key_id": None, "mode": "sync",
        "execution_id": "e1", "status": "succeeded", "http_status": 200, "body": b"{}",
        "error_type": None, "requested_model": "gpt", "served_model": "gpt-1",
        "provider": "openai", "deployment": "d1", "attempts": 1, "prompt_tokens": 1,
        "completion_tokens": 2, "cached_tokens": 0, "reasoning_tokens": 0,
        "cache_write_tokens": 0, "received_at_ms": 1_000, "finished_at_ms": 1_250, "metadata": {},
    }  # fmt: skip
    base.update(overrides)  # type: ignore[typeddict-item]  # tests override fields by name
    return base


def _named(row: tuple[object, ...], columns: tuple[str, ...]) -> dict[str, object]:
    assert len(row) == len(columns)
    return dict(zip(columns, row, strict=True))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, {"latency_ms": 250, "fallback_used": False, "cache_hit": False, "tags": []}),
        ({"attempts": 3}, {"fallback_used": True}),
        ({"finished_at_ms": 900}, {"latency_ms": 0}),  # clocks disagree: never negative
        (
            {"metadata": {"tags": "b, a,,b", "app": "web", "tollway.cache": "semantic-hit"}},
            {"tags": ["a", "b"], "app": "web", "cache_hit": True},
        ),
        (
            {"metadata": {"tollway.cache": "miss", "ttft_ms": "87"}},
            {"cache_hit": False, "ttft_ms": 87},
        ),
        ({"metadata": {"ttft_ms": "soon"}}, {"ttft_ms": None}),
        (
            {"metadata": {"tollway.batch_id": "batch_1", "tollway.custom_id": "line-7"}},
            {"batch_id": "batch_1", "custom_id": "line-7"},
        ),
        ({}, {"batch_id": None, "custom_id": None, "app": ""}),
    ],
)
def test_request_row(overrides: dict[str, object], expected: dict[str, object]) -> None:
    row = _named(request_row(_result(**overrides), 3, 42), REQUESTS.columns)
    assert {k: row[k] for k in expected} == expected
    assert (row["kafka_partition"], row["kafka_offset"]) == (3, 42)
    assert row["received_at"] == 1_000  # epoch ms: DateTime64(3) ticks


def test_usage_row_turns_nano_usd_into_decimal_usd() -> None:
    record: UsageRecord = {
        "usage_id": "req_1:e1.1", "request_id": "req_1", "attempt_id": "e1.1", "team_id": "t",
        "key_id": "k", "mode": "batch", "requested_model": "gpt", "model": "gpt-1",
        "provider": "openai", "deployment": "d1", "prompt_tokens": 10, "completion_tokens": 20,
        "cached_tokens": 5, "cache_write_tokens": 0, "reasoning_tokens": 0,
        "cost_nano_usd": 123_456_789_012, "saved_nano_usd": 7, "cost_status": "priced",
        "pricing_version": "2026-11", "occurred_at_ms": 5_000, "priced_at_ms": 5_001,
    }  # fmt: skip
    row = _named(usage_row(record, 0, 9), USAGE.columns)
    assert row["cost_usd"] == Decimal("123.456789012")
    assert row["saved_usd"] == Decimal("0.000000007")
    assert (row["occurred_at"], row["priced_at"]) == (5_000, 5_001)  # DateTime64(3) ticks


def test_attempt_and_budget_event_rows_have_their_tables_shape() -> None:
    attempt: Attempt = {
        "request_id": "r", "attempt_id": "e.1", "attempt": 1, "team_id": "t", "key_id": None,
        "mode": "async", "deployment": "d", "provider": "p", "model": "m",
        "started_at_ms": 1, "latency_ms": 12.5, "outcome": "error", "http_status": None,
        "error_type": "ProviderTimeout", "error_code": None, "prompt_tokens": 0,
        "completion_tokens": 0, "cached_tokens": 0, "reasoning_tokens": 0,
        "cache_write_tokens": 0, "router_id": "r1",
    }  # fmt: skip
    assert _named(attempt_row(attempt, 1, 2), ATTEMPTS.columns)["latency_ms"] == 12.5
    event: BudgetEvent = {
        "event_id": "team:t:30d:80", "scope_type": "team", "scope_id": "t", "window": "30d",
        "threshold_pct": 80, "spent_nano_usd": 4_000_000_000, "limit_nano_usd": 5_000_000_000,
        "occurred_at_ms": 0,
    }  # fmt: skip
    row = _named(budget_event_row(event, 0, 0), BUDGET_EVENTS.columns)
    assert (row["budget_window"], row["limit_usd"]) == ("30d", Decimal("5.000000000"))


def test_first_per_key_keeps_the_first_occurrence_in_order() -> None:
    rows = [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)]
    table = Table(
        name="x", topic="t", columns=("request_id", "v"), key=("request_id",), scope="v", time="v"
    )
    assert first_per_key(table, rows) == {"a": ("a", 1), "b": ("b", 2), "c": ("c", 4)}
    pairs = Table(name="y", topic="t", columns=("a", "b"), key=("a", "b"), scope="a", time="b")
    assert list(first_per_key(pairs, [(1, 2), (1, 3), (1, 2)])) == [(1, 2), (1, 3)]


def _migrated_columns() -> dict[str, list[str]]:
    """Column names per table, read from the CREATE TABLE statements (MATERIALIZED left out)."""
    found: dict[str, list[str]] = {}
    for migration in bundled():
        for statement in migration.statements("db"):
            match = re.match(r"CREATE TABLE IF NOT EXISTS db\.(\w+)\s*\((.*?)\n\)", statement, re.S)
            if match:
                found[match.group(1)] = [
                    line.split()[0]
                    for line in match.group(2).splitlines()
                    if line.strip() and "MATERIALIZED" not in line
                ]
    return found


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
def test_table_specs_match_the_migrations(table: Table) -> None:
    assert list(table.columns) == _migrated_columns()[table.name]
    assert set(table.key) | {table.scope, table.time} <= set(table.columns)
