"""SQL is built only from constants and checked identifiers; every user value is a bound
parameter (issue 10: SQL injection through a header or a query parameter elsewhere).

- Statically: every f-string, `.format` or `%` that builds SQL in analytics/ and
  ingress/analytics_* interpolates only reviewed identifiers (configuration or module
  constants, never a request value); a new one fails here until it is reviewed.
- At run time: injection strings through every parameter of every named query over
  HTTP reach ClickHouse's client as bound parameters, the SQL text staying the constant
  of the named query (and clickhouse-connect keeps them server-side: `param_<name>`);
  typed parameters refuse them (400) before any SQL runs.

The Authorization header and the path ids reach no SQL at all: the admin key is compared
as a digest (ingress/admin_auth.py), virtual keys are looked up by digest in memory
(ingress/auth.py), ids select files and batches in the file store and the batch view.
"""

from __future__ import annotations

import ast
import re
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Final, cast

import httpx
import pytest
from clickhouse_connect.driver.binding import bind_query
from pydantic import ValidationError

from analytics.migrate import MigrationError, migrate
from analytics.queries import QUERIES
from analytics.settings import AnalyticsSettings
from ingress.analytics_params import http_params
from ingress.analytics_runner import ClickHouseRunner, capped
from tests.unit.ingress_stack import ADMIN_KEY, IngressStack, build_stack

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

REPO: Final = Path(__file__).resolve().parents[2]
SQL_WORDS: Final = re.compile(
    r"\b(SELECT|INSERT|ALTER|CREATE|DROP|SET|USE|FROM|WHERE|TABLE|DELETE|UPDATE|OPTIMIZE)\b"
)
DATABASE: Final = "tollway"

# (file, interpolated expression) -> why it cannot carry a request value
REVIEWED: Final = {
    ("analytics/chserver.py", "name"): "setting name, matched by _SETTING_NAME first",
    ("analytics/chserver.py", "quoted"): "setting value quoted as a ClickHouse string literal "
    "(the loopback ClickHouse front: its clients may run any SQL anyway)",
    ("analytics/chserver.py", "database.replace('`', '``')"): "backquoted identifier",
    ("analytics/loader/clickhouse.py", "', '.join(table.key)"): "Table spec constants",
    ("analytics/loader/clickhouse.py", "self._database"): "configured database identifier",
    ("analytics/loader/clickhouse.py", "table.name"): "Table spec constant",
    ("analytics/loader/clickhouse.py", "table.scope"): "Table spec constant",
    ("analytics/loader/clickhouse.py", "table.time"): "Table spec constant",
    ("analytics/migrate.py", "database"): "checked by _IDENTIFIER before any statement",
    ("analytics/migrate.py", "table"): "RAW_TTL_COLUMNS constant",
    ("analytics/migrate.py", "column"): "RAW_TTL_COLUMNS constant",
    ("analytics/migrate.py", "days"): "an int from the settings",
    ("analytics/queries.py", "_HOURS"): "module constant",
    ("analytics/queries.py", "column"): "the dimension column of a constant query",
    ("analytics/queries.py", "_RAW.format(t='received_at')"): "module constant",
    ("analytics/queries.py", "_RAW.format(t='started_at')"): "module constant",
    ("analytics/queries.py", "_RAW.format(t='u.occurred_at').replace('team_id', 'u.team_id')"): (
        "module constant"
    ),
    ("analytics/queries.py", "_RAW.format(t='r.received_at').replace('team_id', 'r.team_id')"): (
        "module constant"
    ),
    ("ingress/analytics_runner.py", "query.sql"): "a named query's constant SQL",
    ("ingress/analytics_runner.py", "ROW_CAP_PARAM"): "the name of a bound parameter",
}


def _sql_interpolations(source: str, relative: str) -> set[tuple[str, str]]:
    """(relative, expression) of every value spliced into SQL-looking text in `source`."""
    found: set[tuple[str, str]] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.JoinedStr):
            text = "".join(str(v.value) for v in node.values if isinstance(v, ast.Constant))
            if SQL_WORDS.search(text):
                found |= {
                    (relative, ast.unparse(v.value))
                    for v in node.values
                    if isinstance(v, ast.FormattedValue)
                }
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            template = node.func.value
            if (
                node.func.attr == "format"
                and isinstance(template, ast.Constant)
                and isinstance(template.value, str)
                and SQL_WORDS.search(template.value)
            ):
                found.add((relative, f"format: {ast.unparse(node)}"))
        elif (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.Mod)
            and isinstance(node.left, ast.Constant)
            and isinstance(node.left.value, str)
            and SQL_WORDS.search(node.left.value)
        ):
            found.add((relative, f"%: {ast.unparse(node.right)}"))
    return found


def test_string_built_sql_interpolates_only_reviewed_identifiers() -> None:
    files = [
        *sorted((REPO / "analytics").rglob("*.py")),
        *sorted((REPO / "ingress").glob("analytics_*.py")),
    ]
    assert len(files) > 10
    found = set().union(
        *(_sql_interpolations(p.read_text("utf-8"), p.relative_to(REPO).as_posix()) for p in files)
    )
    assert found - set(REVIEWED) == set(), "review these SQL interpolations"
    assert set(REVIEWED) - found == set(), "reviewed entries no longer in the code: drop them"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def q(team):\n    return f\"SELECT 1 FROM t WHERE team = '{team}'\"\n", "team"),
        ("def q(t):\n    return 'DELETE FROM x WHERE a = {}'.format(t)\n", "format: "),
        ("def q(t):\n    return 'SELECT * FROM x WHERE a = %s' % t\n", "%: t"),
    ],
)
def test_the_scan_sees_every_way_of_splicing_a_value(source: str, expected: str) -> None:
    ((_, found),) = _sql_interpolations(source, "probe.py")
    assert found.startswith(expected)


@pytest.mark.parametrize("name", ["tollway; DROP DATABASE x", "a.b", "`x`", "x--", ""])
def test_the_database_name_is_an_identifier(name: str) -> None:
    with pytest.raises(ValidationError):
        AnalyticsSettings(database=name)
    with pytest.raises(MigrationError):
        migrate(client=None, database=name)  # type: ignore[arg-type]  # refused before any use


# --- run time: every parameter of every named query -----------------------------------

INJECTIONS: Final = [
    "' OR '1'='1",
    "x'; DROP TABLE tollway.usage; --",
    "') UNION ALL SELECT name, 1, 1, 1, 1, 1 FROM system.users --",
    "{team:String}",
    "{db}.usage",
    "\\' OR 1=1 --",
    "1) OR (1=1",
    "$heredoc$ SELECT 1 $heredoc$",
    "x\\",
    "équipe-a' -- ünïcode",
]
TEXT_PARAMS: Final = {"team", "scope_id"}


class RecordingClient:
    """clickhouse-connect's `Client.query`, recorded; no rows."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

    def query(
        self,
        sql: str,
        parameters: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> SimpleNamespace:
        self.calls.append((sql, dict(parameters or {}), dict(settings or {})))
        return SimpleNamespace(result_rows=[])

    def close(self) -> None:
        return None


@pytest.fixture
async def analytics() -> AsyncIterator[tuple[httpx.AsyncClient, RecordingClient, IngressStack]]:
    client = RecordingClient()

    def connect(*_: object, **__: object) -> Client:
        return cast("Client", client)  # what ClickHouseRunner uses of a Client: query, close

    runner = ClickHouseRunner(
        "http://127.0.0.1:9", DATABASE, threads=1, timeout_s=10, connect=connect
    )
    stack = build_stack(runner=runner)
    transport = httpx.ASGITransport(app=stack.asgi)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://ingress",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    ) as http:
        yield http, client, stack
    runner.close()


def _required(name: str) -> dict[str, str]:
    query = QUERIES[name]
    return {
        p.name: {"scope_id": "team-a", "limit_usd": "10"}[p.name]
        for p in http_params(query)
        if p.required
    }


CASES: Final = [
    (name, param.name) for name, query in QUERIES.items() for param in http_params(query)
]


@pytest.mark.parametrize(("name", "param"), CASES, ids=[f"{n}-{p}" for n, p in CASES])
async def test_injection_strings_are_bound_or_refused_never_spliced(
    analytics: tuple[httpx.AsyncClient, RecordingClient, IngressStack], name: str, param: str
) -> None:
    http, client, _ = analytics
    expected_sql = capped(QUERIES[name]).render(DATABASE)
    for payload in INJECTIONS:
        before = len(client.calls)
        response = await http.get(
            f"/v1/analytics/{name}", params={**_required(name), param: payload}
        )
        if param not in TEXT_PARAMS:
            assert response.status_code == 400, (param, payload, response.text)
            assert response.json()["error"]["param"] == param
            assert len(client.calls) == before  # refused before any SQL ran
            continue
        assert response.status_code == 200, (param, payload, response.text)
        ((sql, parameters, settings),) = client.calls[before:]
        assert sql == expected_sql  # the named query's constant text, whatever was sent
        assert parameters[param] == payload  # the value itself, bound
        assert settings == {"readonly": 1}
        final_sql, bound = bind_query(sql, parameters)
        assert final_sql == expected_sql  # clickhouse-connect binds server-side...
        assert f"param_{param}" in bound  # ...as an HTTP parameter, never in the text
