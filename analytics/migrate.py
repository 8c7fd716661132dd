"""Numbered, idempotent ClickHouse migrations: `analytics/migrations/NNNN_name.sql`.

`migrate(client)` creates the database and `schema_migrations`, then applies, in
order, every migration not recorded there, recording each one (version, name,
checksum) after all its statements succeeded. Statements are written to be
re-runnable (`IF NOT EXISTS`), so a crash half-way through a migration is repaired by
running it again. An applied migration is never edited: a changed checksum stops
`migrate` (add a new migration instead). `{db}` in a file is the database name.

Afterwards the raw-row TTL is brought in line with the setting (recorded in
`schema_settings`, altered only when it changed).

The planning functions (`load`, `split_statements`, `plan`) are pure.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

log = logging.getLogger("tollway.analytics.migrate")

_FILE_NAME: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_IDENTIFIER: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_STATEMENT_END: Final = re.compile(r";[ \t]*(?:--[^\n]*)?(?:\n|$)")
#: Raw tables and the expression their TTL counts from.
RAW_TTL_COLUMNS: Final = {
    "requests": "toDateTime(received_at)",
    "attempts": "toDateTime(started_at)",
    "usage": "toDateTime(occurred_at)",
    "budget_events": "toDateTime(occurred_at)",
    "request_costs": "occurred_on",
}


class MigrationError(Exception):
    """The migrations on disk and in the database disagree; nothing was applied."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self, database: str) -> list[str]:
        return split_statements(self.sql.replace("{db}", database))


def load(files: Iterable[tuple[str, str]]) -> list[Migration]:
    """Migrations from (file name, text) pairs, ordered; numbers must run 1, 2, 3, ..."""
    found: list[Migration] = []
    for filename, text in files:
        match = _FILE_NAME.match(filename)
        if match is None:
            if filename.endswith(".sql"):
                raise MigrationError(f"{filename}: migration files are named NNNN_name.sql")
            continue
        found.append(Migration(int(match.group(1)), match.group(2), text))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migration numbers must be 1..n without gaps, found {versions}")
    return found


def split_statements(sql: str) -> list[str]:
    """Statements of a file, split at `;` ending a line; comment-only pieces are dropped."""
    pieces = _STATEMENT_END.split(sql)
    statements = []
    for piece in pieces:
        code = "\n".join(line for line in piece.splitlines() if not line.strip().startswith("--"))
        if code.strip():
            statements.append(code.strip())
    return statements


def plan(migrations: list[Migration], applied: Mapping[int, str]) -> list[Migration]:
    """The migrations to apply, given {version: checksum} of those already applied."""
    known = {m.version: m for m in migrations}
    for version, checksum in sorted(applied.items()):
        migration = known.get(version)
        if migration is None:
            raise MigrationError(f"migration {version} is applied but not on disk (newer code?)")
        if migration.checksum != checksum:
            raise MigrationError(
                f"migration {version:04d}_{migration.name} changed after it was applied; "
                "add a new migration instead"
            )
    return [m for m in migrations if m.version not in applied]


def bundled() -> list[Migration]:
    folder = resources.files("analytics") / "migrations"
    return load(
        (entry.name, entry.read_text("utf-8")) for entry in folder.iterdir() if entry.is_file()
    )


def ttl_statements(database: str, days: int) -> list[str]:
    """ALTERs that set (or, for 0, remove) the raw tables' TTL."""
    if days == 0:
        return [f"ALTER TABLE {database}.{table} REMOVE TTL" for table in RAW_TTL_COLUMNS]
    return [
        f"ALTER TABLE {database}.{table} MODIFY TTL {column} + toIntervalDay({days})"
        for table, column in RAW_TTL_COLUMNS.items()
    ]


def migrate(
    client: Client,
    database: str = "tollway",
    raw_ttl_days: int = 365,
    migrations: list[Migration] | None = None,
) -> list[Migration]:
    """Apply the missing migrations and the TTL setting; returns what was applied."""
    if not _IDENTIFIER.match(database):
        raise MigrationError(f"{database!r} is not a plain identifier")
    todo_source = bundled() if migrations is None else migrations
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations (version UInt32, name String,"
        " checksum String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3))"
        " ENGINE = ReplacingMergeTree ORDER BY version"
    )
    client.command(
        f"CREATE TABLE IF NOT EXISTS {database}.schema_settings (name String, value String,"
        " applied_at DateTime64(3, 'UTC') DEFAULT now64(3))"
        " ENGINE = ReplacingMergeTree(applied_at) ORDER BY name"
    )
    rows = client.query(
        f"SELECT version, argMax(checksum, applied_at) FROM {database}.schema_migrations"  # noqa: S608  # checked identifier
        " GROUP BY version"
    ).result_rows
    todo = plan(todo_source, {int(v): str(c) for v, c in rows})
    for migration in todo:
        log.info("applying migration %04d_%s", migration.version, migration.name)
        for statement in migration.statements(database):
            client.command(statement)
        client.insert(
            f"{database}.schema_migrations",
            [(migration.version, migration.name, migration.checksum)],
            column_names=["version", "name", "checksum"],
        )
    _apply_ttl(client, database, raw_ttl_days)
    return todo


def _apply_ttl(client: Client, database: str, days: int) -> None:
    current = client.query(
        f"SELECT argMax(value, applied_at) FROM {database}.schema_settings"  # noqa: S608  # checked identifier
        " WHERE name = 'raw_ttl_days'"
    ).result_rows
    recorded = current[0][0] if current and current[0][0] != "" else None
    if recorded == str(days) or (recorded is None and days == 0):
        return
    log.info("raw-row TTL: %s -> %d days", recorded or "none", days)
    for statement in ttl_statements(database, days):
        client.command(statement)
    client.insert(
        f"{database}.schema_settings", [("raw_ttl_days", str(days))], column_names=["name", "value"]
    )
