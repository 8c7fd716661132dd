"""analytics/migrate.py: numbering, ordering, statement splitting, checksums (no database)."""

from __future__ import annotations

import pytest

from analytics.migrate import (
    RAW_TTL_COLUMNS,
    Migration,
    MigrationError,
    bundled,
    load,
    plan,
    split_statements,
    ttl_statements,
)


def test_files_are_ordered_by_number_whatever_the_listing_order() -> None:
    migrations = load([("0002_b.sql", "B"), ("README.md", "x"), ("0001_a.sql", "A")])
    assert [(m.version, m.name, m.sql) for m in migrations] == [(1, "a", "A"), (2, "b", "B")]


@pytest.mark.parametrize(
    "files",
    [
        [("0001_a.sql", ""), ("0003_c.sql", "")],  # a gap
        [("0002_b.sql", "")],  # not starting at 1
        [("0001_a.sql", ""), ("0001_b.sql", "")],  # a duplicate number
        [("1_a.sql", "")],  # a badly named SQL file
        [("0001_A.sql", "")],
    ],
)
def test_bad_numbering_is_refused(files: list[tuple[str, str]]) -> None:
    with pytest.raises(MigrationError):
        load(files)


def test_split_statements_at_line_ending_semicolons() -> None:
    sql = """-- a header comment;
CREATE TABLE a (x String DEFAULT 'a;b') ENGINE = Memory;

-- between statements
CREATE VIEW v AS
SELECT 1;  -- trailing comment
SELECT ';'
"""
    assert split_statements(sql) == [
        "CREATE TABLE a (x String DEFAULT 'a;b') ENGINE = Memory",
        "CREATE VIEW v AS\nSELECT 1",
        "SELECT ';'",
    ]


def _m(version: int, sql: str = "") -> Migration:
    return Migration(version, f"m{version}", sql or f"SELECT {version}")


def test_plan_returns_what_is_missing_in_order() -> None:
    migrations = [_m(1), _m(2), _m(3)]
    assert plan(migrations, {}) == migrations
    assert plan(migrations, {1: _m(1).checksum}) == migrations[1:]
    assert plan(migrations, {m.version: m.checksum for m in migrations}) == []


def test_plan_refuses_an_edited_or_unknown_applied_migration() -> None:
    with pytest.raises(MigrationError, match="changed after it was applied"):
        plan([_m(1, "SELECT 'edited'")], {1: _m(1).checksum})
    with pytest.raises(MigrationError, match="not on disk"):
        plan([_m(1)], {1: _m(1).checksum, 2: "abc"})


def test_bundled_migrations_are_numbered_and_rerunnable() -> None:
    migrations = bundled()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    for migration in migrations:
        for statement in migration.statements("tollway"):
            assert "IF NOT EXISTS" in statement, statement[:80]
            assert "{db}" not in statement


def test_ttl_statements() -> None:
    assert ttl_statements("tw", 400)[0] == (
        "ALTER TABLE tw.requests MODIFY TTL toDateTime(received_at) + toIntervalDay(400)"
    )
    assert ttl_statements("tw", 0) == [f"ALTER TABLE tw.{t} REMOVE TTL" for t in RAW_TTL_COLUMNS]
