"""/v1/analytics against the embedded ClickHouse over HTTP (clickhouse-connect, real SQL).

A few requests, provider calls, priced calls and one budget event are written with the
loader's sink into a database of this module; the ingress app (in process, over ASGI)
reads them back through `ClickHouseRunner`, exactly as `tollway ingress` would.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import httpx
import pytest
import pytest_asyncio

from analytics import queries as q
from analytics.connection import connect
from analytics.loader.clickhouse import ClickHouseSink
from analytics.loader.rows import (
    ATTEMPTS,
    BUDGET_EVENTS,
    REQUESTS,
    USAGE,
    Row,
    attempt_row,
    budget_event_row,
    request_row,
    usage_row,
)
from analytics.migrate import migrate
from ingress.admin_auth import AdminKey
from ingress.analytics_api import analytics_routes
from ingress.analytics_runner import ClickHouseRunner
from ingress.app import build_app
from ingress.bus import MemoryBus
from ingress.settings import IngressSettings
from schemas.records import Attempt, BudgetEvent, Result, UsageRecord
from schemas.routes import default_routes
from tests.integration.conftest import free_port

KEY: Final = "integration-admin-key-0123456789"
AUTH: Final = {"authorization": f"Bearer {KEY}"}
AT: Final = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
AT_MS: Final = int(AT.timestamp() * 1000)
# team -> (calls, nano-USD per call, latency ms): biggest spender first
SPEND: Final = {
    "team-a": (3, 500_000_000, 100),
    "team-c": (2, 250_000_000, 300),
    "team-b": (1, 1, 50),
}


def _result(rid: str, team: str, latency_ms: int) -> Result:
    return {
        "request_id": rid, "team_id": team, "key_id": f"{team}-key", "mode": "sync",
        "execution_id": "e1", "status": "succeeded", "http_status": 200, "body": b"{}",
        "error_type": None, "requested_model": "gpt-4o-mini", "served_model": "gpt-4o-mini-1",
        "provider": "openai", "deployment": "mock", "attempts": 1, "prompt_tokens": 10,
        "completion_tokens": 5, "cached_tokens": 0, "reasoning_tokens": 0,
        "cache_write_tokens": 0, "received_at_ms": AT_MS, "finished_at_ms": AT_MS + latency_ms,
        "metadata": {"tags": "alpha"},
    }  # fmt: skip


def _attempt(rid: str, team: str) -> Attempt:
    return {
        "request_id": rid, "attempt_id": "e1.1", "attempt": 1, "team_id": team,
        "key_id": f"{team}-key", "mode": "sync", "deployment": "mock", "provider": "openai",
        "model": "gpt-4o-mini-1", "started_at_ms": AT_MS, "latency_ms": 42.5, "outcome": "ok",
        "http_status": 200, "error_type": None, "error_code": None, "prompt_tokens": 10,
        "completion_tokens": 5, "cached_tokens": 0, "reasoning_tokens": 0,
        "cache_write_tokens": 0, "router_id": "r1",
    }  # fmt: skip


def _usage(rid: str, team: str, nano_usd: int) -> UsageRecord:
    return {
        "usage_id": f"{rid}:e1.1", "request_id": rid, "attempt_id": "e1.1", "team_id": team,
        "key_id": f"{team}-key", "mode": "sync", "requested_model": "gpt-4o-mini",
        "model": "gpt-4o-mini-1", "provider": "openai", "deployment": "mock",
        "prompt_tokens": 10, "completion_tokens": 5, "cached_tokens": 0, "cache_write_tokens": 0,
        "reasoning_tokens": 0, "cost_nano_usd": nano_usd, "saved_nano_usd": 0,
        "cost_status": "priced", "pricing_version": "v1", "occurred_at_ms": AT_MS,
        "priced_at_ms": AT_MS + 5,
    }  # fmt: skip


EVENT: Final[BudgetEvent] = {
    "event_id": "ev-1", "scope_type": "team", "scope_id": "team-a", "window": "30d",
    "threshold_pct": 80, "spent_nano_usd": 4_000_000_000, "limit_nano_usd": 5_000_000_000,
    "occurred_at_ms": AT_MS,
}  # fmt: skip


@pytest.fixture(scope="module")
def database(clickhouse_url: str) -> Iterator[str]:
    name = f"http_{uuid.uuid4().hex[:12]}"
    client = connect(clickhouse_url)
    migrate(client, name)
    sink = ClickHouseSink(client, name)
    results: list[Row] = []
    attempts: list[Row] = []
    usages: list[Row] = []
    for team, (calls, nano_usd, latency_ms) in SPEND.items():
        for n in range(calls):
            rid = f"req-{team}-{n}"
            results.append(request_row(_result(rid, team, latency_ms), 0, len(results)))
            attempts.append(attempt_row(_attempt(rid, team), 0, len(attempts)))
            usages.append(usage_row(_usage(rid, team, nano_usd), 0, len(usages)))
    assert sink.write(REQUESTS, results, "r") == 6
    assert sink.write(ATTEMPTS, attempts, "a") == 6
    assert sink.write(USAGE, usages, "u") == 6
    assert sink.write(BUDGET_EVENTS, [budget_event_row(EVENT, 0, 0)], "b") == 1
    yield name
    client.command(f"DROP DATABASE {name}")
    client.close()


AppFactory = Callable[..., httpx.AsyncClient]


async def _never(_: object) -> None:
    return None


@pytest_asyncio.fixture
async def make_client(clickhouse_url: str, database: str) -> AsyncIterator[AppFactory]:
    made: list[tuple[httpx.AsyncClient, ClickHouseRunner]] = []

    def factory(
        url: str = clickhouse_url, db: str = database, timeout_s: float = 30.0
    ) -> httpx.AsyncClient:
        runner = ClickHouseRunner(url, db, threads=2, timeout_s=timeout_s)
        app = build_app(
            IngressSettings(id_secret="integration"),
            default_routes({}),
            MemoryBus(_never),
            extra_routes=[lambda _: analytics_routes(runner, AdminKey(KEY))],
        )
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        made.append((client, runner))
        return client

    yield factory
    for client, runner in made:
        await client.aclose()
        runner.close()


async def test_spend_by_team_reads_clickhouse_with_exact_money(make_client: AppFactory) -> None:
    client = make_client()
    response = await client.get("/v1/analytics/spend_by_team", headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    assert body["query"] == "spend_by_team"
    assert body["has_more"] is False
    got = [(r["dimension"], r["calls"], r["cost_usd"], r["saved_usd"]) for r in body["data"]]
    assert got == [
        ("team-a", 3, "1.500000000", "0.000000000"),
        ("team-c", 2, "0.500000000", "0.000000000"),
        ("team-b", 1, "0.000000001", "0.000000000"),
    ]


async def test_limit_is_applied_in_clickhouse_after_the_query_order(
    make_client: AppFactory,
) -> None:
    client = make_client()
    for limit, teams in ((1, ["team-a"]), (2, ["team-a", "team-c"])):
        body = (await client.get(f"/v1/analytics/spend_by_team?limit={limit}", headers=AUTH)).json()
        assert [r["dimension"] for r in body["data"]] == teams
        assert body["has_more"] is True
    top = (await client.get("/v1/analytics/top_spenders?limit=2", headers=AUTH)).json()
    assert [(r["team_id"], r["key_id"], r["cost_usd"]) for r in top["data"]] == [
        ("team-a", "team-a-key", "1.500000000"),
        ("team-c", "team-c-key", "0.500000000"),
    ]
    assert top["has_more"] is True


async def test_team_filter_period_and_csv(make_client: AppFactory) -> None:
    client = make_client()
    since = (AT - timedelta(minutes=30)).isoformat().replace("+00:00", "Z")
    response = await client.get(
        "/v1/analytics/spend_by_team",
        params={"team": "team-c", "since": since, "format": "csv"},
        headers=AUTH,
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.text == (
        "dimension,calls,prompt_tokens,completion_tokens,cost_usd,saved_usd\r\n"
        "team-c,2,20,10,0.500000000,0.000000000\r\n"
    )
    later = (AT + timedelta(hours=1)).isoformat()
    empty = await client.get("/v1/analytics/spend_by_team", params={"since": later}, headers=AUTH)
    assert empty.json()["data"] == []


def _minimal(query: q.NamedQuery[Any]) -> dict[str, str]:
    if query.name == "budget_burn_down":
        return {"scope_id": "team-a", "limit_usd": "10", "since": "2d"}
    if "start_day" in query.params:
        return {"since": "2d"}
    return {}


@pytest.mark.parametrize("query", q.QUERIES.values(), ids=lambda query: query.name)
async def test_every_named_query_answers_over_http(
    make_client: AppFactory, query: q.NamedQuery[Any]
) -> None:
    client = make_client()
    response = await client.get(f"/v1/analytics/{query.name}", params=_minimal(query), headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["columns"] == list(query.row._fields)  # type: ignore[attr-defined]
    assert body["data"], f"{query.name} found none of the rows written"
    for row in body["data"]:
        assert list(row) == body["columns"]
        for column, value in row.items():
            if column.endswith("_usd"):
                assert isinstance(value, str)
                Decimal(value)  # exact digits


async def test_daily_rows_latency_and_burn_down_values(make_client: AppFactory) -> None:
    client = make_client()
    trend = (await client.get("/v1/analytics/daily_trend?since=2d", headers=AUTH)).json()
    today = datetime.now(UTC).date()
    days = [(today - timedelta(days=n)).isoformat() for n in (2, 1, 0)]
    assert [r["day"] for r in trend["data"]] == days  # WITH FILL: every day
    by_day = {r["day"]: r["cost_usd"] for r in trend["data"]}
    assert by_day[AT.date().isoformat()] == "2.000000001"

    burn = (
        await client.get(
            "/v1/analytics/budget_burn_down",
            params={"since": "2d", "scope_id": "team-a", "limit_usd": "10.25"},
            headers=AUTH,
        )
    ).json()
    last = burn["data"][-1]
    assert (last["cumulative_usd"], last["remaining_usd"]) == ("1.500000000", "8.750000000")

    latency = (await client.get("/v1/analytics/latency_by_deployment", headers=AUTH)).json()
    (mock,) = latency["data"]
    assert (mock["deployment"], mock["requests"]) == ("mock", 6)
    assert 50 <= mock["p50_ms"] <= 300
    assert mock["ttft_p50_ms"] is None  # no streamed request

    events = (await client.get("/v1/analytics/budget_events", headers=AUTH)).json()
    (event,) = events["data"]
    assert event["occurred_at"] == AT.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert (event["spent_usd"], event["limit_usd"]) == ("4.000000000", "5.000000000")


async def test_clickhouse_down_is_503_and_missing_schema_is_503_naming_migrate(
    make_client: AppFactory,
) -> None:
    down = make_client(url=f"http://127.0.0.1:{free_port()}")
    response = await down.get("/v1/analytics/spend_by_team", headers=AUTH)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "service_unavailable"
    assert response.headers["retry-after"] == "5"

    unmigrated = make_client(db=f"missing_{uuid.uuid4().hex[:8]}")
    response = await unmigrated.get("/v1/analytics/spend_by_team", headers=AUTH)
    assert response.status_code == 503
    assert "tollway analytics migrate" in response.json()["error"]["message"]


async def test_a_query_past_its_timeout_is_504(make_client: AppFactory) -> None:
    client = make_client(timeout_s=0.001)
    response = await client.get("/v1/analytics/spend_by_tag", headers=AUTH)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "deadline_exceeded"


async def test_credentials_are_checked_before_clickhouse_is_asked(
    make_client: AppFactory,
) -> None:
    down = make_client(url=f"http://127.0.0.1:{free_port()}")  # would answer 503
    response = await down.get("/v1/analytics/spend_by_team")
    assert response.status_code == 401
    assert KEY not in response.text
