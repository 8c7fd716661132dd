"""analytics/cli.py and analytics/report.py: read-only guard, periods, output formats."""

from __future__ import annotations

import argparse
import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from analytics.cli import UsageError, add_commands, period, readonly_sql
from analytics.report import render


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "  select count() from tollway.usage;",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "SHOW TABLES FROM tollway",
        "DESCRIBE TABLE tollway.usage",
        "EXPLAIN SELECT 1",
    ],
)
def test_read_only_queries_pass(sql: str) -> None:
    assert readonly_sql(sql) == sql.strip().removesuffix(";").strip()


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("DROP TABLE tollway.usage", "only SELECT"),
        ("INSERT INTO tollway.usage SELECT * FROM tollway.usage", "only SELECT"),
        ("ALTER TABLE tollway.usage DELETE WHERE 1", "only SELECT"),
        ("SET readonly = 0", "only SELECT"),
        ("SELECT 1; DROP TABLE tollway.usage", "one statement"),
        ("SELECT 1 FORMAT JSON", "leave out FORMAT"),
        ("", "only SELECT"),
    ],
)
def test_anything_else_is_refused(sql: str, reason: str) -> None:
    with pytest.raises(UsageError, match=reason):
        readonly_sql(sql)


NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("days", "start", "end", "expected"),
    [
        (7, None, None, (NOW - timedelta(days=7), NOW)),
        (7, "2026-03-01", None, (datetime(2026, 3, 1, tzinfo=UTC), NOW)),
        (
            1,
            None,
            "2026-03-05",
            (datetime(2026, 3, 4, tzinfo=UTC), datetime(2026, 3, 5, tzinfo=UTC)),
        ),
        (
            7,
            "2026-03-01T02:00:00+02:00",
            "2026-03-02",
            (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)),
        ),
    ],
)
def test_period(
    days: int, start: str | None, end: str | None, expected: tuple[datetime, datetime]
) -> None:
    assert period(days, start, end, NOW) == expected


def test_an_empty_period_is_refused() -> None:
    with pytest.raises(UsageError):
        period(7, "2026-03-02", "2026-03-01", NOW)


def _parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="tollway")
    add_commands(root.add_subparsers(dest="command", required=True))
    return root


@pytest.mark.parametrize(
    "argv",
    [
        ["analytics", "serve", "--port", "9000"],
        ["analytics", "migrate"],
        ["analytics", "queries", "--format", "json"],
        ["loader"],
        ["spend"],
        ["spend", "by", "--by", "tag", "--days", "30", "--format", "csv"],
        ["spend", "daily", "--team", "t"],
        ["spend", "burn-down", "--scope-id", "t", "--limit-usd", "500"],
        ["usage", "reliability", "--start", "2026-01-01"],
        ["sql", "SELECT 1", "--format", "json"],
    ],
)
def test_commands_parse(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    assert callable(args.func)


ROWS = [("team-a", 3, Decimal("1.500000001"), date(2026, 3, 1), None, 0.25, Decimal("0E-9"))]
COLUMNS = ["team", "calls", "cost_usd", "day", "ttft", "rate", "saved_usd"]


def test_table_aligns_and_keeps_money_exact() -> None:
    lines = render(COLUMNS, ROWS, "table").splitlines()
    assert lines[0].split() == COLUMNS
    assert "1.500000001" in lines[2]
    assert "2026-03-01" in lines[2]
    assert lines[-1] == "(1 row)"


def test_json_money_is_a_string_never_a_float() -> None:
    assert json.loads(render(COLUMNS, ROWS, "json")) == [
        {"team": "team-a", "calls": 3, "cost_usd": "1.500000001", "day": "2026-03-01",
         "ttft": None, "rate": 0.25, "saved_usd": "0.000000000"}
    ]  # fmt: skip


def test_csv() -> None:
    parsed = list(csv.reader(io.StringIO(render(COLUMNS, ROWS, "csv"))))
    assert parsed == [
        COLUMNS,
        ["team-a", "3", "1.500000001", "2026-03-01", "", "0.250", "0.000000000"],
    ]
