"""deploy/grafana/tollway-dashboard.json: current, well-formed, and its SQL valid.

- the file is what ingress/dashboard_grafana.py generates (the same SQL as the dashboard);
- every panel is a grafana-clickhouse-datasource query whose SQL names only tables and
  columns the migrations create (parsed from their CREATE TABLE statements);
- every panel's SQL, macros expanded as the data source expands them, runs in an
  embedded chdb on the migrated schema (in a child process: chdb allows one engine per
  process, and the unit tier opens no other).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any, Final

import pytest

from analytics.migrate import bundled as load_migrations
from ingress.dashboard_grafana import PLUGIN, grafana_dashboard, render
from ingress.dashboard_sql import ANY_MACRO, PANEL_QUERIES, TIME_FILTER, TIME_INTERVAL

ROOT: Final = Path(__file__).resolve().parents[2]
GRAFANA_FILE: Final = ROOT / "deploy" / "grafana" / "tollway-dashboard.json"
DATABASE: Final = "tollway"

_CREATE_TABLE: Final = re.compile(
    r"CREATE TABLE IF NOT EXISTS \{db\}\.(\w+)\s*\((.*?)\n\)\s*ENGINE", re.DOTALL
)
_COLUMN: Final = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s+[A-Z]", re.MULTILINE)
_TABLE_REF: Final = re.compile(rf"\b{DATABASE}\.(\w+)")
_STRING: Final = re.compile(r"'(?:[^'\\]|\\.)*'")
_ALIAS: Final = re.compile(r"\bAS\s+(\w+)", re.IGNORECASE)
_WORD: Final = re.compile(r"(?<![\w.$])([A-Za-z_]\w*)\b(?!\s*\()")
#: SQL words and type/unit names that are not columns.
_NOT_COLUMNS: Final = frozenset(
    [
        "SELECT",
        "FROM",
        "WHERE",
        "GROUP",
        "BY",
        "ORDER",
        "AND",
        "OR",
        "AS",
        "DESC",
        "ASC",
        "LIMIT",
        "HAVING",
        "OVER",
        "PARTITION",
        "ROWS",
        "BETWEEN",
        "UNBOUNDED",
        "PRECEDING",
        "CURRENT",
        "ROW",
        "ARRAY",
        "JOIN",
        "IS",
        "NOT",
        "NULL",
        "INTERVAL",
        "second",
    ]
)


@cache
def schema_columns() -> dict[str, frozenset[str]]:
    """Table -> its columns, from the migrations' CREATE TABLE statements."""
    tables: dict[str, frozenset[str]] = {}
    for migration in load_migrations():
        for name, body in _CREATE_TABLE.findall(migration.sql):
            columns = re.sub(r"--[^\n]*", "", body)
            tables[name] = frozenset(_COLUMN.findall(columns))
    return tables


def _identifiers(sql: str) -> tuple[set[str], set[str]]:
    """(tables, bare identifiers that must be columns) of a panel's Grafana SQL."""
    tables = set(_TABLE_REF.findall(sql))
    text = _STRING.sub("''", sql)
    text = _TABLE_REF.sub(" ", text)
    text = ANY_MACRO.sub(" ", text)  # `$__timeFilter(col)` -> ` (col)`: the column stays
    aliases = set(_ALIAS.findall(text))
    words = set(_WORD.findall(text))
    return tables, words - aliases - _NOT_COLUMNS


def test_the_committed_file_is_the_generated_one() -> None:
    assert GRAFANA_FILE.read_text("utf-8") == render(), (
        "stale: python -m ingress.dashboard_grafana > deploy/grafana/tollway-dashboard.json"
    )


def test_every_panel_is_a_clickhouse_query_with_the_dashboards_sql() -> None:
    document = json.loads(GRAFANA_FILE.read_text("utf-8"))
    assert document["__inputs"][0]["pluginId"] == PLUGIN
    panels = document["panels"]
    assert [p["title"] for p in panels] == [q.title for q in PANEL_QUERIES]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel, query in zip(panels, PANEL_QUERIES, strict=True):
        (target,) = panel["targets"]
        assert target["datasource"]["type"] == PLUGIN
        assert target["editorType"] == "sql"
        assert target["rawSql"] == query.sql.replace("{db}", DATABASE).strip()
        assert TIME_FILTER.search(target["rawSql"]), "every panel follows the time picker"
        assert (target["format"] == 0) == (panel["type"] == "timeseries")
        if panel["type"] == "timeseries":
            assert TIME_INTERVAL.search(target["rawSql"]), "time series are bucketed"


def test_the_migrations_are_parsed() -> None:
    tables = schema_columns()
    assert {"requests", "attempts", "usage", "cost_hourly", "cost_daily"} <= set(tables)
    assert {"cost_usd", "occurred_at", "team_id", "key_id"} <= tables["usage"]
    assert "first_wins_version" in tables["requests"]


@pytest.mark.parametrize("panel", grafana_dashboard()["panels"], ids=lambda p: p["title"])
def test_every_panel_names_only_tables_and_columns_of_the_migrations(
    panel: dict[str, Any],
) -> None:
    sql = panel["targets"][0]["rawSql"]
    tables, names = _identifiers(sql)
    schema = schema_columns()
    assert tables, "reads a Tollway table"
    assert tables <= set(schema), sorted(tables - set(schema))
    known = frozenset().union(*(schema[t] for t in tables))
    assert names <= known, f"not columns of {sorted(tables)}: {sorted(names - known)}"


def test_the_column_check_catches_an_unknown_column() -> None:
    tables, names = _identifiers(
        "SELECT team_id, sum(cost_cents) AS c FROM tollway.usage WHERE $__timeFilter(occurred_at)"
    )
    assert tables == {"usage"}
    assert names - schema_columns()["usage"] == {"cost_cents"}


_RUN_IN_CHDB: Final = """
import json, sys, tempfile
import clickhouse_connect
from analytics.migrate import migrate
queries = json.loads(sys.stdin.read())
with tempfile.TemporaryDirectory() as store:
    client = clickhouse_connect.get_client(dsn=f"chdb://{store}/db")
    migrate(client, "tollway")
    client.command(
        "INSERT INTO tollway.usage (usage_id, request_id, attempt_id, team_id, mode, "
        "requested_model, model, provider, deployment, cost_usd, saved_usd, cost_status, "
        "pricing_version, occurred_at, priced_at, kafka_partition, kafka_offset) VALUES "
        "('u1', 'r1', 'a1', 't1', 'sync', 'm', 'm-1', 'p', 'd', 0.25, 0, 'priced', 'v', "
        "now64(3), now64(3), 0, 1)"
    )
    counts = [len(client.query(sql, settings={"readonly": 1}).result_rows) for sql in queries]
    client.close()
print(json.dumps(counts))
"""


def test_every_panels_sql_runs_in_an_embedded_clickhouse() -> None:
    import time

    from ingress.dashboard_sql import expand_grafana_macros

    now_s = int(time.time())
    queries = [
        expand_grafana_macros(p["targets"][0]["rawSql"], now_s - 3600, now_s + 60, 60)
        for p in grafana_dashboard()["panels"]
    ]
    assert not any(ANY_MACRO.search(q) for q in queries), "every macro expanded"
    done = subprocess.run(
        [sys.executable, "-c", _RUN_IN_CHDB],
        input=json.dumps(queries),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    by_title = dict(zip((p["title"] for p in grafana_dashboard()["panels"]), counts, strict=True))
    # the one usage row shows in the usage panels (spend, burn-down: 4 scopes, no key)
    assert by_title["Spend over time by team (USD)"] == 1
    assert by_title["Budget burn-down: cumulative spend per scope (USD)"] == 3
    assert by_title["Cache hit rate and savings by team"] == 1
