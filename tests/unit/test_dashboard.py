"""The dashboard: SQL dialects, the pure shaping of rows into panels, and the HTTP surface
(auth, windows, headers) over a fake runner. No ClickHouse, no sockets."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import orjson
import pytest
from starlette.testclient import TestClient

from ingress.analytics_runner import StaticRunner
from ingress.dashboard_panels import (
    MAX_SERIES,
    OTHER,
    WINDOWS,
    BudgetLine,
    PanelRows,
    Period,
    build_dashboard,
    period_for,
    usd,
)
from ingress.dashboard_sql import (
    BUDGET_BURN_DOWN,
    PANEL_QUERIES,
    SPEND_BY_TEAM_OVER_TIME,
    BatchProgress,
    DeploymentLatency,
    ReliabilityPoint,
    ScopeSpendPoint,
    TeamCache,
    TeamRequests,
    TeamSpendPoint,
    expand_grafana_macros,
    for_clickhouse,
)
from schemas.errors import ServiceUnavailable
from tests.unit.ingress_stack import ADMIN_KEY, build_stack

T0: Final = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
T0_MS: Final = int(T0.timestamp() * 1000)
MINUTE_MS: Final = 60_000
ADMIN: Final = {"authorization": f"Bearer {ADMIN_KEY}"}


def at(minutes: int) -> datetime:
    return datetime.fromtimestamp((T0_MS + minutes * MINUTE_MS) / 1000, tz=UTC)


# --- SQL dialects -------------------------------------------------------------------


def test_macros_become_bound_parameters_and_nothing_else() -> None:
    query = for_clickhouse(SPEND_BY_TEAM_OVER_TIME)
    assert dict(query.params) == {
        "start": "DateTime64(3, 'UTC')",
        "end": "DateTime64(3, 'UTC')",
        "bucket_s": "UInt32",
    }
    assert "$__" not in query.sql
    assert "occurred_at >= {start:DateTime64(3, 'UTC')}" in query.sql
    assert "occurred_at < {end:DateTime64(3, 'UTC')}" in query.sql
    assert "toStartOfInterval(occurred_at, toIntervalSecond({bucket_s:UInt32}))" in query.sql


@pytest.mark.parametrize("panel", PANEL_QUERIES, ids=lambda p: p.name)
def test_every_panel_query_takes_exactly_the_parameters_its_sql_names(panel: Any) -> None:
    query = for_clickhouse(panel)
    named = set(re.findall(r"\{(\w+):", query.sql))
    assert named == set(query.params)
    assert "{db}" in query.sql  # the database is the runner's, never a value in the text


def test_an_unknown_macro_is_refused() -> None:
    bad = BUDGET_BURN_DOWN.__class__(**{**_fields(BUDGET_BURN_DOWN), "sql": "SELECT $__nope"})
    with pytest.raises(ValueError, match=r"\$__nope"):
        for_clickhouse(bad)


def _fields(panel: Any) -> dict[str, Any]:
    return {f: getattr(panel, f) for f in ("name", "title", "description", "kind", "row", "sql")}


def test_grafana_expansion_matches_the_data_sources_spelling() -> None:
    sql = expand_grafana_macros("SELECT $__timeInterval(t) WHERE $__timeFilter(t)", 10, 20, 60)
    assert sql == (
        "SELECT toStartOfInterval(toDateTime(t), INTERVAL 60 second) "
        "WHERE t >= toDateTime(10) AND t <= toDateTime(20)"
    )


# --- pure shaping -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "bucket_s", "buckets"),
    [("15m", 15, 60), ("1h", 60, 60), ("6h", 300, 72), ("24h", 900, 96), ("30d", 21_600, 120)],
)
def test_periods_end_now_and_cover_the_window_in_aligned_buckets(
    window: str, bucket_s: int, buckets: int
) -> None:
    now_ms = T0_MS + 7_500  # mid-bucket
    period = period_for(window, now_ms)
    assert period.end_ms == now_ms
    assert period.end_ms - period.start_ms == WINDOWS[window][0] * 1000
    times = period.bucket_times_ms()
    assert all(t % (bucket_s * 1000) == 0 for t in times)
    assert times[0] <= period.start_ms < times[0] + bucket_s * 1000
    assert len(times) in {buckets, buckets + 1}


def test_usd_is_exact_with_nine_places() -> None:
    assert usd(Decimal("0E-9")) == "0.000000000"
    assert usd(Decimal("12.5")) == "12.500000000"
    assert usd(Decimal("0.000000001")) == "0.000000001"


PERIOD: Final = Period("15m", T0_MS, T0_MS + 3 * MINUTE_MS, 60)
ROWS: Final = PanelRows(
    spend_by_team=[
        TeamSpendPoint(at(0), "acme", 2, Decimal("0.5")),
        TeamSpendPoint(at(2), "acme", 1, Decimal("0.25")),
        TeamSpendPoint(at(2), "beta", 3, Decimal("1.000000001")),
    ],
    burn_down=[
        ScopeSpendPoint(at(0), "team", "acme", Decimal("0.5"), Decimal("0.5")),
        ScopeSpendPoint(at(2), "team", "acme", Decimal("0.25"), Decimal("0.75")),
        ScopeSpendPoint(at(2), "team", "beta", Decimal("1.000000001"), Decimal("1.000000001")),
        ScopeSpendPoint(at(0), "global", "*", Decimal("0.5"), Decimal("0.5")),
        ScopeSpendPoint(at(2), "global", "*", Decimal("1.250000001"), Decimal("1.750000001")),
    ],
    latency=[DeploymentLatency("d1", 4, 10.0, 20.0, 30.0, None, None, None)],
    reliability=[ReliabilityPoint(at(1), 5, 1, 2, 0.2, 0.4)],
    requests_by_team=[TeamRequests("acme", 3, 1, 2, 0), TeamRequests("gamma", 2, 2, 0, 0)],
    cache_by_team=[
        TeamCache("acme", 3, 1, 1 / 3, Decimal("0.75"), Decimal("0.1")),
        TeamCache("beta", 3, 0, 0.0, Decimal("1.000000001"), Decimal(0)),
    ],
    batches=[BatchProgress("batch_1", "acme", 3, 2, 1, at(0), at(2))],
)


def test_headline_totals_are_the_sums_of_the_rows() -> None:
    doc = build_dashboard(PERIOD, ROWS, (), generated_at_ms=T0_MS)
    assert doc["headline"] == {
        "spend_usd": "1.750000001",
        "calls": 6,
        "requests": 5,
        "failed": 3,
        "error_rate": 0.6,
        "fallbacks": 2,
        "fallback_rate": 0.4,
        "cache_hits": 1,
        "cache_hit_rate": 1 / 6,
        "saved_usd": "0.100000000",
    }
    assert orjson.loads(orjson.dumps(doc)) == doc  # JSON as it is (money: strings)


def test_spend_series_are_dense_per_bucket_biggest_first() -> None:
    doc = build_dashboard(PERIOD, ROWS, (), generated_at_ms=T0_MS)
    panel = doc["spend_by_team"]
    assert panel["times_ms"] == [T0_MS, T0_MS + MINUTE_MS, T0_MS + 2 * MINUTE_MS]
    assert panel["series"] == [
        {
            "name": "beta",
            "total_usd": "1.000000001",
            "values_usd": ["0.000000000", "0.000000000", "1.000000001"],
        },
        {
            "name": "acme",
            "total_usd": "0.750000000",
            "values_usd": ["0.500000000", "0.000000000", "0.250000000"],
        },
    ]


def test_series_past_the_limit_are_summed_as_other() -> None:
    rows = PanelRows(
        spend_by_team=[
            TeamSpendPoint(at(0), f"team-{i:02}", 1, Decimal(100 - i))
            for i in range(MAX_SERIES + 3)
        ]
    )
    series = build_dashboard(PERIOD, rows, (), T0_MS)["spend_by_team"]["series"]
    assert [s["name"] for s in series][-1] == OTHER
    assert len(series) == MAX_SERIES + 1
    assert series[-1]["total_usd"] == usd(Decimal(100 - 8) + Decimal(100 - 9) + Decimal(100 - 10))
    total = sum(Decimal(s["total_usd"]) for s in series)
    assert total == sum(Decimal(100 - i) for i in range(MAX_SERIES + 3))


def test_burn_down_follows_the_budgets_and_carries_totals_forward() -> None:
    budgets = [
        BudgetLine("team", "acme", "24h", Decimal(1), "hard"),
        BudgetLine("key", "key_unseen", "1h", Decimal(2), "soft"),
    ]
    scopes = build_dashboard(PERIOD, ROWS, budgets, T0_MS)["burn_down"]["scopes"]
    assert scopes == [
        {
            "scope": "team:acme",
            "budget_window": "24h",
            "enforcement": "hard",
            "limit_usd": "1.000000000",
            "spent_usd": "0.750000000",
            "remaining_usd": "0.250000000",
            "used_pct": 75.0,
            "cumulative_usd": ["0.500000000", "0.500000000", "0.750000000"],
        },
        {
            "scope": "key:key_unseen",
            "budget_window": "1h",
            "enforcement": "soft",
            "limit_usd": "2.000000000",
            "spent_usd": "0.000000000",
            "remaining_usd": "2.000000000",
            "used_pct": 0.0,
            "cumulative_usd": ["0.000000000"] * 3,
        },
    ]


def test_without_budgets_the_burn_down_shows_global_then_teams_by_spend() -> None:
    scopes = build_dashboard(PERIOD, ROWS, (), T0_MS)["burn_down"]["scopes"]
    assert [(s["scope"], s["spent_usd"], s["limit_usd"]) for s in scopes] == [
        ("global", "1.750000001", None),
        ("team:beta", "1.000000001", None),
        ("team:acme", "0.750000000", None),
    ]


def test_teams_merge_request_and_usage_rows() -> None:
    teams = build_dashboard(PERIOD, ROWS, (), T0_MS)["teams"]
    by_id = {t["team_id"]: t for t in teams}
    assert [t["team_id"] for t in teams] == ["beta", "acme", "gamma"]  # by spend
    assert by_id["acme"] | {"hit_rate": 0} == {
        "team_id": "acme", "requests": 3, "failed": 1, "fallbacks": 2, "calls": 3,
        "cache_hits": 1, "hit_rate": 0, "cost_usd": "0.750000000", "saved_usd": "0.100000000",
    }  # fmt: skip
    assert by_id["gamma"]["calls"] == 0
    assert by_id["gamma"]["failed"] == 2
    assert by_id["beta"]["requests"] == 0


def test_reliability_latency_and_batches() -> None:
    doc = build_dashboard(PERIOD, ROWS, (), T0_MS)
    assert doc["reliability"]["requests"] == [0, 5, 0]
    assert doc["reliability"]["failed"] == [0, 1, 0]
    assert doc["reliability"]["fallbacks"] == [0, 2, 0]
    assert doc["latency"] == [
        {
            "deployment": "d1", "requests": 4, "p50_ms": 10.0, "p95_ms": 20.0, "p99_ms": 30.0,
            "ttft_p50_ms": None, "ttft_p95_ms": None, "ttft_p99_ms": None,
        }
    ]  # fmt: skip
    assert doc["batches"] == [
        {
            "batch_id": "batch_1", "team_id": "acme", "finished": 3, "succeeded": 2,
            "failed": 1, "first_received_ms": T0_MS, "last_finished_ms": T0_MS + 2 * MINUTE_MS,
        }
    ]  # fmt: skip


# --- the HTTP surface ---------------------------------------------------------------


def _client(runner: StaticRunner | None = None, admin_key: str | None = ADMIN_KEY) -> TestClient:
    return TestClient(build_stack(auth="keys", runner=runner, admin_key=admin_key).asgi)


def test_the_page_and_assets_need_no_credential_and_hold_no_data() -> None:
    client = _client()
    page = client.get("/admin/v1/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        asset = client.get(f"/admin/v1/dashboard/assets/{name}")
        assert asset.status_code == 200
        assert asset.headers["content-type"].startswith(kind)
    assert client.get("/admin/v1/dashboard/assets/..%2Fapp.py").status_code == 404


def test_the_page_loads_nothing_from_elsewhere_and_keeps_no_inline_script() -> None:
    client = _client()
    html = client.get("/admin/v1/dashboard").text
    script = client.get("/admin/v1/dashboard/assets/dashboard.js").text
    assert re.findall(r"(?:src|href)=\"([^\"]+)\"", html) == [
        "dashboard/assets/dashboard.css",
        "dashboard/assets/dashboard.js",
    ]
    assert "<script>" not in html  # the CSP allows no inline script
    assert re.findall(r"https?://[^\s\"']+", script) == ["http://www.w3.org/2000/svg"]
    assert "innerHTML" not in script
    assert "sessionStorage" in script
    assert "history.replaceState" in script  # the fragment's key leaves the address bar


@pytest.mark.parametrize(
    ("headers", "admin_key", "status"),
    [
        ({}, ADMIN_KEY, 401),
        ({"authorization": "Bearer not-the-admin-key-0123456789"}, ADMIN_KEY, 401),
        (ADMIN, None, 403),
    ],
)
def test_the_data_needs_the_admin_key(
    headers: dict[str, str], admin_key: str | None, status: int
) -> None:
    runner = StaticRunner()
    response = _client(runner, admin_key).get("/admin/v1/dashboard/data", headers=headers)
    assert response.status_code == status
    assert response.json()["error"]["message"]
    assert runner.calls == []  # refused before any query


def test_an_unknown_window_is_a_400_before_any_query() -> None:
    runner = StaticRunner()
    response = _client(runner).get("/admin/v1/dashboard/data?window=2h", headers=ADMIN)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "window"
    assert runner.calls == []


def test_the_data_runs_every_panel_query_with_its_own_parameters() -> None:
    runner = StaticRunner({"dashboard_requests_by_team": [TeamRequests("acme", 7, 1, 0, 0)]})
    response = _client(runner).get("/admin/v1/dashboard/data?window=6h", headers=ADMIN)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["window"] == "6h"
    assert body["bucket_s"] == 300
    assert body["headline"]["requests"] == 7
    assert sorted(name for name, _, _ in runner.calls) == sorted(
        f"dashboard_{p.name}" for p in PANEL_QUERIES
    )
    for name, params, _ in runner.calls:
        start, end = params["start"], params["end"]
        assert isinstance(start, datetime)
        assert isinstance(end, datetime)
        assert (end - start).total_seconds() == 6 * 3600, name
        assert ("bucket_s" in params) == ("$__timeInterval" in _panel(name).sql)


def _panel(name: str) -> Any:
    return next(p for p in PANEL_QUERIES if f"dashboard_{p.name}" == name)


def test_clickhouse_down_is_a_503_error_body() -> None:
    runner = StaticRunner(error=ServiceUnavailable("ClickHouse is unreachable; try again later."))
    response = _client(runner).get("/admin/v1/dashboard/data", headers=ADMIN)
    assert response.status_code == 503
    assert response.json()["error"]["type"]
