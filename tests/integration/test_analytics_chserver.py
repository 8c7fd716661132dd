"""analytics/chserver.py: clickhouse-connect against the embedded ClickHouse over HTTP.

Each path clickhouse-connect takes (query with bound parameters, insert in Native with
every request compression, form-encoded large parameters, commands, errors, ping) and
the insert_deduplication_token behaviour the loader relies on, in a database per test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import clickhouse_connect
import httpx
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from analytics.connection import connect


@pytest.fixture
def database(clickhouse_url: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    client = connect(clickhouse_url)
    client.command(f"CREATE DATABASE {name}")
    client.command(
        f"CREATE TABLE {name}.t (id String, team LowCardinality(String), key Nullable(String),"
        " cost Decimal(38, 9), at DateTime64(3, 'UTC'), tags Array(LowCardinality(String)),"
        " meta Map(String, String)) ENGINE = MergeTree ORDER BY id"
        " SETTINGS non_replicated_deduplication_window = 100"
    )
    yield name
    client.command(f"DROP DATABASE {name}")


_AT_1 = datetime(2026, 1, 1, tzinfo=UTC)
_AT_2 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
ROWS = [
    ("a", "t1", None, Decimal("0.000000001"), _AT_1, ["x"], {"k": "v"}),
    ("b", "t2", "k'\\\t", Decimal("12345.123456789"), _AT_2, [], {}),
]


@pytest.mark.parametrize("compress", [True, "lz4", "zstd", "gzip", False])
def test_insert_and_query_roundtrip_with_every_compression(
    clickhouse_url: str, database: str, compress: bool | str
) -> None:
    client = clickhouse_connect.get_client(dsn=clickhouse_url, compress=compress)
    client.insert(f"{database}.t", ROWS)
    got = client.query(f"SELECT * FROM {database}.t ORDER BY id").result_rows
    assert [(r[0], r[1], r[2], r[3], r[5], r[6]) for r in got] == [
        (r[0], r[1], r[2], r[3], r[5], r[6]) for r in ROWS
    ]
    assert [r[4].replace(tzinfo=UTC) for r in got] == [r[4] for r in ROWS]


@pytest.mark.parametrize("compress", ["lz4", "gzip", False])
def test_raw_insert_with_the_statement_in_the_url(
    clickhouse_url: str, database: str, compress: str | bool
) -> None:
    client = clickhouse_connect.get_client(dsn=clickhouse_url, compress=compress)
    client.raw_insert(f"{database}.t", ["id", "team"], "r1\tt9\nr2\tt9\n", fmt="TabSeparated")
    assert client.query(
        f"SELECT id FROM {database}.t WHERE team = 't9' ORDER BY id"
    ).result_rows == [
        ("r1",),
        ("r2",),
    ]


def test_server_side_parameters_including_form_encoded_large_ones(
    clickhouse_url: str, database: str
) -> None:
    client = connect(clickhouse_url)
    client.insert(f"{database}.t", ROWS)
    tricky = "a\tb\\c'd\n" + "x" * 10_000  # too long for the URL: sent as a form field
    got = client.query(
        f"SELECT count(), {{s:String}} FROM {database}.t WHERE cost > {{c:Decimal(38, 9)}}"
        " AND team IN {teams:Array(String)}",
        parameters={"s": tricky, "c": Decimal("1"), "teams": ["t1", "t2"]},
    ).result_rows
    assert got == [(1, tricky)]


def test_commands_errors_readonly_and_ping(clickhouse_url: str, database: str) -> None:
    client = connect(clickhouse_url)
    assert client.command("SELECT 1 + 1") == 2
    assert client.command(f"SELECT id FROM {database}.t") == ""  # a result set, empty
    with pytest.raises(DatabaseError, match="UNKNOWN_TABLE") as caught:
        client.query(f"SELECT * FROM {database}.missing")
    assert caught.value.code == 60
    with pytest.raises(DatabaseError, match="readonly"):
        client.command(f"INSERT INTO {database}.t (id) VALUES ('z')", settings={"readonly": 1})
    assert client.query(f"SELECT count() FROM {database}.t", settings={"readonly": 1}).result_rows
    client.command("SET max_threads = 1")  # a no-op without a session, as on a server
    assert client.ping()
    assert httpx.get(f"{clickhouse_url}/ping").text == "Ok.\n"


def test_settings_do_not_leak_between_requests(clickhouse_url: str) -> None:
    client = connect(clickhouse_url)
    query = "SELECT value FROM system.settings WHERE name = 'max_result_rows'"
    assert client.query(query, settings={"max_result_rows": 7}).result_rows == [("7",)]
    assert client.query(query).result_rows == [("0",)]


def _count(client: Client, table: str) -> int:
    value = client.command(f"SELECT count() FROM {table}")
    assert isinstance(value, int)
    return value


def test_deduplication_token_drops_a_replayed_insert_in_the_table_and_its_views(
    clickhouse_url: str, database: str
) -> None:
    client = connect(clickhouse_url)
    client.command(
        f"CREATE TABLE {database}.per_team (team LowCardinality(String), cost Decimal(38, 9))"
        " ENGINE = SummingMergeTree ORDER BY team"
        " SETTINGS non_replicated_deduplication_window = 100"
    )
    client.command(
        f"CREATE MATERIALIZED VIEW {database}.per_team_mv TO {database}.per_team AS"
        f" SELECT team, sum(cost) AS cost FROM {database}.t GROUP BY team"
    )
    for token in ("batch-1", "batch-1", "batch-2"):
        client.insert(f"{database}.t", ROWS[:1], settings={"insert_deduplication_token": token})
    assert _count(client, f"{database}.t") == 2  # batch-1 once, batch-2 once
    total = client.query(f"SELECT sum(cost) FROM {database}.per_team").result_rows[0][0]
    assert total == Decimal("0.000000002")
