"""/v1/analytics over ASGI with a fake query runner: auth, parameters, answers; no sockets.

Also the pure parts on their own (admin_auth, analytics_params, analytics_output) and
ClickHouseRunner's threading, timeout and error translation with a fake client.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Final

import httpx
import pytest
import pytest_asyncio
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from pydantic import ValidationError
from urllib3.exceptions import MaxRetryError, NewConnectionError, ReadTimeoutError

from analytics import queries as q
from ingress.admin_auth import AdminAuthenticationFailed, AdminKey, bearer_token, check_admin
from ingress.analytics_api import analytics_routes, listing
from ingress.analytics_output import cell, csv_answer
from ingress.analytics_params import MAX_ROWS, http_params, parse_call
from ingress.analytics_runner import (
    AnalyticsQueryFailed,
    ClickHouseRunner,
    Rows,
    StaticRunner,
    _translate,
    capped,
)
from ingress.app import build_app
from ingress.bus import MemoryBus
from ingress.settings import IngressSettings
from schemas.errors import (
    DeadlineExceeded,
    InvalidRequest,
    PermissionDenied,
    ServiceUnavailable,
    TollwayError,
)
from schemas.openai import ErrorBody
from schemas.routes import default_routes

KEY: Final = "unit-test-admin-key-0123456789abcdef"
AUTH: Final = {"authorization": f"Bearer {KEY}"}
NOW: Final = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)

SPEND_ROWS: Final = [
    q.SpendRow("team-a", 3, 30, 15, Decimal("12345.123456789"), Decimal("0E-9")),
    q.SpendRow("team-b", 1, 10, 5, Decimal("0.000000001"), Decimal("0.5")),
    q.SpendRow("team-c", 1, 10, 5, Decimal("0"), Decimal("0")),
]

AppFactory = Callable[..., tuple[httpx.AsyncClient, StaticRunner]]


async def _never(_: object) -> None:
    return None


@pytest_asyncio.fixture
async def make_app() -> AsyncIterator[AppFactory]:
    clients: list[httpx.AsyncClient] = []

    def factory(
        runner: StaticRunner | None = None, *, key: str | None = KEY
    ) -> tuple[httpx.AsyncClient, StaticRunner]:
        runner = runner or StaticRunner({"spend_by_team": SPEND_ROWS})
        admin = AdminKey(key) if key is not None else None
        app = build_app(
            IngressSettings(id_secret="unit-test"),
            default_routes({}),
            MemoryBus(_never),
            extra_routes=[lambda _: analytics_routes(runner, admin, now=lambda: NOW)],
        )
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        clients.append(client)
        return client, runner

    yield factory
    for client in clients:
        await client.aclose()


def _error(response: httpx.Response, status: int, code: str | None) -> ErrorBody:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = ErrorBody.model_validate_json(response.content)
    assert body.error.code == code
    assert KEY not in response.text
    return body


# --- the admin credential ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER  abc  ", "abc"),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_check_admin_paths_and_messages_never_hold_a_key() -> None:
    key = AdminKey(KEY)
    check_admin(f"Bearer {KEY}", key, what="X")  # passes
    with pytest.raises(PermissionDenied, match="X is disabled until TOLLWAY_ADMIN_KEY is set"):
        check_admin(f"Bearer {KEY}", None, what="X")
    with pytest.raises(AdminAuthenticationFailed, match="Missing admin credential"):
        check_admin(None, key, what="X")
    for wrong in (KEY[:-1], KEY + "x", KEY.upper(), "z", KEY[:-1] + "!"):
        with pytest.raises(AdminAuthenticationFailed, match="Invalid admin credential") as err:
            check_admin(f"Bearer {wrong}", key, what="X")
        assert KEY[:8] not in str(err.value)
        assert wrong not in str(err.value)
    assert KEY not in repr(key)
    assert not key.matches(KEY[:-1])
    assert key.matches(KEY)


def test_admin_key_setting_validates_without_echoing_the_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    short = "short-secret-value-123"  # 22 characters
    monkeypatch.setenv("TOLLWAY_ADMIN_KEY", short)
    with pytest.raises(ValidationError) as caught:
        IngressSettings()
    assert "TOLLWAY_ADMIN_KEY must be at least 24 characters" in str(caught.value)
    assert short not in str(caught.value)
    monkeypatch.setenv("TOLLWAY_ADMIN_KEY", "has a space in it but is long enough")
    with pytest.raises(ValidationError, match="printable ASCII without spaces"):
        IngressSettings()
    monkeypatch.setenv("TOLLWAY_ADMIN_KEY", "")
    assert IngressSettings().admin_key is None
    monkeypatch.setenv("TOLLWAY_ADMIN_KEY", KEY)
    settings = IngressSettings()
    assert settings.admin_key is not None
    assert settings.admin_key.get_secret_value() == KEY
    assert KEY not in repr(settings)
    monkeypatch.delenv("TOLLWAY_ADMIN_KEY")
    assert IngressSettings().admin_key is None


async def test_without_the_key_setting_every_analytics_route_answers_403(
    make_app: AppFactory,
) -> None:
    client, runner = make_app(key=None)
    for path in ("/v1/analytics", "/v1/analytics/spend_by_team", "/v1/analytics/nope"):
        body = _error(await client.get(path, headers=AUTH), 403, "permission_denied")
        assert body.error.type == "permission_error"
        assert "TOLLWAY_ADMIN_KEY" in body.error.message
    assert runner.calls == []


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Basic abc"}, {"authorization": "Bearer wrong-key"}],
    ids=["missing", "not-bearer", "wrong"],
)
async def test_a_missing_or_wrong_credential_is_401_before_anything_else(
    make_app: AppFactory, headers: dict[str, str]
) -> None:
    client, runner = make_app()
    for path in ("/v1/analytics", "/v1/analytics/spend_by_team", "/v1/analytics/nope?x=1"):
        response = await client.get(path, headers=headers)
        body = _error(response, 401, "invalid_api_key")
        assert body.error.type == "authentication_error"
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert runner.calls == []


# --- routes ---------------------------------------------------------------------------


async def test_listing_names_every_query_with_parameters_and_columns(
    make_app: AppFactory,
) -> None:
    client, _ = make_app()
    response = await client.get("/v1/analytics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body == listing()
    assert [item["id"] for item in body["data"]] == list(q.QUERIES)
    top = next(item for item in body["data"] if item["id"] == "top_spenders")
    assert [p["name"] for p in top["parameters"]] == [
        "since", "until", "team", "limit", "format",
    ]  # fmt: skip
    assert top["columns"] == ["team_id", "key_id", "calls", "cost_usd"]
    burn = next(item for item in body["data"] if item["id"] == "budget_burn_down")
    required = {p["name"] for p in burn["parameters"] if p["required"]}
    assert required == {"scope_id", "limit_usd"}


async def test_json_answer_has_money_as_exact_strings(make_app: AppFactory) -> None:
    client, runner = make_app()
    response = await client.get(
        "/v1/analytics/spend_by_team", params={"since": "2026-03-01", "team": ""}, headers=AUTH
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    columns = ["dimension", "calls", "prompt_tokens", "completion_tokens", "cost_usd", "saved_usd"]
    assert body == {
        "object": "list",
        "query": "spend_by_team",
        "columns": columns,
        "data": [
            {"dimension": "team-a", "calls": 3, "prompt_tokens": 30, "completion_tokens": 15,
             "cost_usd": "12345.123456789", "saved_usd": "0.000000000"},
            {"dimension": "team-b", "calls": 1, "prompt_tokens": 10, "completion_tokens": 5,
             "cost_usd": "0.000000001", "saved_usd": "0.5"},
            {"dimension": "team-c", "calls": 1, "prompt_tokens": 10, "completion_tokens": 5,
             "cost_usd": "0", "saved_usd": "0"},
        ],
        "has_more": False,
        "parameters": {"limit": MAX_ROWS, "since": "2026-03-01T00:00:00.000Z",
                       "until": "2026-03-10T12:30:00.000Z", "team": ""},
    }  # fmt: skip
    ((name, params, max_rows),) = runner.calls
    assert name == "spend_by_team"
    assert params == {"start": datetime(2026, 3, 1, tzinfo=UTC), "end": NOW, "team": ""}
    assert max_rows == MAX_ROWS + 1  # one more than asked, to learn has_more


async def test_limit_cuts_rows_and_says_so(make_app: AppFactory) -> None:
    client, runner = make_app()
    body = (await client.get("/v1/analytics/spend_by_team?limit=2", headers=AUTH)).json()
    assert [row["dimension"] for row in body["data"]] == ["team-a", "team-b"]
    assert body["has_more"] is True
    assert runner.calls[-1][2] == 3
    body = (await client.get("/v1/analytics/spend_by_team?limit=3", headers=AUTH)).json()
    assert (len(body["data"]), body["has_more"]) == (3, False)


async def test_top_spenders_binds_its_limit_one_past_the_answer(make_app: AppFactory) -> None:
    rows = [q.SpenderRow(f"t{i}", "", 1, Decimal(10 - i)) for i in range(11)]
    client, runner = make_app(StaticRunner({"top_spenders": rows}))
    body = (await client.get("/v1/analytics/top_spenders", headers=AUTH)).json()
    assert len(body["data"]) == 10  # default 10, as `tollway spend top`
    assert body["has_more"] is True
    assert body["data"][0] == {"team_id": "t0", "key_id": "", "calls": 1, "cost_usd": "10"}
    _, params, max_rows = runner.calls[0]
    assert (params["limit"], max_rows) == (11, 11)


async def test_csv_answer(make_app: AppFactory) -> None:
    client, _ = make_app()
    response = await client.get("/v1/analytics/spend_by_team?format=csv&limit=2", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert 'filename="spend_by_team.csv"' in response.headers["content-disposition"]
    assert response.headers["x-tollway-has-more"] == "true"
    assert response.text == (
        "dimension,calls,prompt_tokens,completion_tokens,cost_usd,saved_usd\r\n"
        "team-a,3,30,15,12345.123456789,0.000000000\r\n"
        "team-b,1,10,5,0.000000001,0.5\r\n"
    )


async def test_times_dates_and_missing_values(make_app: AppFactory) -> None:
    at = datetime(2026, 3, 9, 8, 0, 0, 123000, tzinfo=UTC)
    runner = StaticRunner(
        {
            "budget_events": [
                q.BudgetEventRow(at, "team", "a", "30d", 80, Decimal("4"), Decimal("5"))
            ],
            "daily_trend": [q.DayRow(date(2026, 3, 9), 0, 0, 0, Decimal(0), Decimal(0))],
            "latency_by_deployment": [q.LatencyRow("d", 0, None, None, None, 1.5, None, None)],
        }
    )
    client, _ = make_app(runner)
    event = (await client.get("/v1/analytics/budget_events", headers=AUTH)).json()["data"][0]
    assert event["occurred_at"] == "2026-03-09T08:00:00.123Z"
    assert (event["spent_usd"], event["limit_usd"]) == ("4", "5")
    day = (await client.get("/v1/analytics/daily_trend?since=2d", headers=AUTH)).json()
    assert day["data"][0]["day"] == "2026-03-09"
    assert day["parameters"]["start_day"] == "2026-03-08"
    assert day["parameters"]["end_day"] == "2026-03-10"
    lat = (await client.get("/v1/analytics/latency_by_deployment", headers=AUTH)).json()
    assert lat["data"][0]["p50_ms"] is None
    assert lat["data"][0]["ttft_p50_ms"] == 1.5
    text = (await client.get("/v1/analytics/latency_by_deployment?format=csv", headers=AUTH)).text
    assert text.splitlines()[1] == "d,0,,,,1.5,,"


async def test_unknown_query_is_404_and_bad_parameters_are_400_naming_them(
    make_app: AppFactory,
) -> None:
    client, runner = make_app()
    body = _error(await client.get("/v1/analytics/drop_tables", headers=AUTH), 404, "not_found")
    assert body.error.param == "query_name"
    cases = {
        "teem=a": "teem",
        "team=a&team=b": "team",
        "limit=0": "limit",
        f"limit={MAX_ROWS + 1}": "limit",
        "limit=ten": "limit",
        "limit=" + "9" * 5000: "limit",
        "since=999999w": "since",
        "format=xml": "format",
        "since=yesterday": "since",
        "until=2026-13-01": "until",
        "since=2026-03-10&until=2026-03-01": "since",
        "since=1900-01-01": "since",
        "sql=SELECT%201": "sql",
        "team=" + "x" * 300: "team",
    }
    for query_string, param in cases.items():
        response = await client.get(f"/v1/analytics/spend_by_team?{query_string}", headers=AUTH)
        body = _error(response, 400, None)
        assert body.error.type == "invalid_request_error"
        assert body.error.param == param, query_string
    assert runner.calls == []


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (DeadlineExceeded("slow"), 504, "deadline_exceeded"),
        (ServiceUnavailable("down", retry_after_s=5), 503, "service_unavailable"),
        (AnalyticsQueryFailed("refused (code 62)"), 500, "analytics_query_failed"),
    ],
)
async def test_runner_errors_keep_their_status(
    make_app: AppFactory, error: TollwayError, status: int, code: str
) -> None:
    client, _ = make_app(StaticRunner(error=error))
    _error(await client.get("/v1/analytics/spend_by_team", headers=AUTH), status, code)


async def test_only_get(make_app: AppFactory) -> None:
    client, runner = make_app()
    response = await client.post("/v1/analytics/spend_by_team", headers=AUTH)
    assert response.status_code == 405
    assert runner.calls == []


# --- parameters (pure) ------------------------------------------------------------------


def _call(query: q.NamedQuery[Any], query_string: str = "") -> Any:
    items = [tuple(kv.split("=", 1)) for kv in query_string.split("&") if kv]
    return parse_call(query, items, NOW)  # type: ignore[arg-type]


_MINIMAL: Final = {"budget_burn_down": "scope_id=team-a&limit_usd=100"}


@pytest.mark.parametrize("query", q.QUERIES.values(), ids=lambda query: query.name)
def test_every_named_query_is_reachable_with_its_defaults(query: q.NamedQuery[Any]) -> None:
    call = _call(query, _MINIMAL.get(query.name, ""))
    assert set(call.params) == set(query.params)
    names = [p.name for p in http_params(query)]
    assert names[-2:] == ["limit", "format"]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    ("query_string", "start", "end"),
    [
        ("", NOW - timedelta(days=7), NOW),
        ("since=90m", NOW - timedelta(minutes=90), NOW),
        ("since=2w&until=1d", NOW - timedelta(weeks=2), NOW - timedelta(days=1)),
        ("since=24h&until=now", NOW - timedelta(hours=24), NOW),
        ("since=2026-03-01", datetime(2026, 3, 1, tzinfo=UTC), NOW),
        ("since=2026-03-01T10:00:00Z", datetime(2026, 3, 1, 10, tzinfo=UTC), NOW),
        ("since=2026-03-01T10:00:00%2B02:00".replace("%2B", "+"),
         datetime(2026, 3, 1, 8, tzinfo=UTC), NOW),
        ("since=2026-03-01 10:00&until=2026-03-02", datetime(2026, 3, 1, 10, tzinfo=UTC),
         datetime(2026, 3, 2, tzinfo=UTC)),
        ("until=2026-03-02", datetime(2026, 2, 23, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)),
    ],
)  # fmt: skip
def test_periods(query_string: str, start: datetime, end: datetime) -> None:
    call = _call(q.SPEND_BY_TEAM, query_string)
    assert (call.params["start"], call.params["end"]) == (start, end)
    assert call.params["start"].tzinfo == UTC


def test_daily_queries_take_the_days_the_period_touches() -> None:
    call = _call(q.SPEND_BY_TEAM_BY_DAY, "since=2026-03-01&until=2026-03-08")
    assert call.params == {"start_day": date(2026, 3, 1), "end_day": date(2026, 3, 7)}
    call = _call(q.DAILY_TREND, "since=2026-03-01T23:00:00Z&until=2026-03-02T00:00:01Z&team=a")
    assert call.params == {"start_day": date(2026, 3, 1), "end_day": date(2026, 3, 2), "team": "a"}


@pytest.mark.parametrize(
    ("query_string", "expected"),
    [
        ("scope_id=team-a&limit_usd=100",
         {"scope_type": "team", "scope_id": "team-a", "limit_usd": Decimal("100")}),
        ("scope_type=global&limit_usd=0.000000001",
         {"scope_type": "global", "scope_id": "", "limit_usd": Decimal("0.000000001")}),
        ("scope_type=global&scope_id=x&limit_usd=1.500000000000",
         {"scope_type": "global", "scope_id": "", "limit_usd": Decimal("1.5")}),
        ("scope_type=model&scope_id=gpt-4o&limit_usd=12345678901234567890123456789",
         {"scope_type": "model", "scope_id": "gpt-4o",
          "limit_usd": Decimal("12345678901234567890123456789")}),
    ],
)  # fmt: skip
def test_burn_down_parameters(query_string: str, expected: dict[str, object]) -> None:
    params = _call(q.BUDGET_BURN_DOWN, query_string).params
    assert {k: v for k, v in params.items() if k in expected} == expected
    assert isinstance(params["limit_usd"], Decimal)


@pytest.mark.parametrize(
    ("query_string", "param"),
    [
        ("limit_usd=100", "scope_id"),
        ("scope_id=a", "limit_usd"),
        ("scope_type=team&limit_usd=1", "scope_id"),
        ("scope_type=org&scope_id=a&limit_usd=1", "scope_type"),
        ("scope_id=a&limit_usd=-1", "limit_usd"),
        ("scope_id=a&limit_usd=NaN", "limit_usd"),
        ("scope_id=a&limit_usd=Infinity", "limit_usd"),
        ("scope_id=a&limit_usd=1e40", "limit_usd"),
        ("scope_id=a&limit_usd=0.0000000001", "limit_usd"),
        ("scope_id=a&limit_usd=ten", "limit_usd"),
        ("scope_id=a&limit_usd=", "limit_usd"),
        ("scope_id=a&limit_usd=1&team=a", "team"),
    ],
)
def test_burn_down_refusals(query_string: str, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _call(q.BUDGET_BURN_DOWN, query_string)
    assert caught.value.param == param


def test_budget_events_scope_is_optional() -> None:
    assert _call(q.BUDGET_EVENTS).params["scope_id"] == ""
    assert _call(q.BUDGET_EVENTS, "scope_id=team-a").params["scope_id"] == "team-a"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("0E-9"), "0.000000000"),
        (Decimal("12345678901234567890123456789.123456789"),
         "12345678901234567890123456789.123456789"),
        (datetime(2026, 1, 1, 2, tzinfo=timezone(timedelta(hours=1))), "2026-01-01T01:00:00.000Z"),
        (datetime(2026, 1, 1, 1, 0, 0, 5000, tzinfo=UTC), "2026-01-01T01:00:00.005Z"),
        (date(2026, 1, 1), "2026-01-01"),
        (float("nan"), None),
        (0.25, 0.25),
        (7, 7),
        ("x", "x"),
        (None, None),
    ],
)  # fmt: skip
def test_cells(value: object, expected: object) -> None:
    assert cell(value) == expected


def test_csv_quotes_what_needs_quoting() -> None:
    text = csv_answer(["a", "b"], [('x,"y"', Decimal("1.10"))])
    assert text == 'a,b\r\n"x,""y""",1.10\r\n'


# --- the ClickHouse runner with a fake client --------------------------------------------


class FakeClient:
    """Answers after `delay_s` in the calling thread; counts concurrent calls."""

    def __init__(self, rows: list[tuple[Any, ...]], delay_s: float = 0.0) -> None:
        self.rows = rows
        self.delay_s = delay_s
        self.active = 0
        self.most_active = 0
        self.lock = threading.Lock()
        self.calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self.closed = False

    def query(self, sql: str, parameters: dict[str, Any], settings: dict[str, Any]) -> Any:
        with self.lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            self.calls.append((sql, parameters, settings))
        time.sleep(self.delay_s)
        with self.lock:
            self.active -= 1
        return type("Result", (), {"result_rows": self.rows})()

    def close(self) -> None:
        self.closed = True


def _runner(client: Any, **kwargs: Any) -> ClickHouseRunner:
    def connect(url: str, **_: Any) -> Any:
        assert url == "http://ch.invalid:8123"
        if isinstance(client, Exception):
            raise client
        return client

    options: dict[str, Any] = {"threads": 2, "timeout_s": 5.0} | kwargs
    return ClickHouseRunner("http://ch.invalid:8123", "tw", connect=connect, **options)


def test_capped_wraps_the_query_and_binds_the_cap() -> None:
    wrapped = capped(q.TOP_SPENDERS)
    assert wrapped.sql.startswith("SELECT * FROM (\n")
    assert wrapped.sql.endswith("\n) LIMIT {tollway_row_cap:UInt32}")
    assert wrapped.params == {**q.TOP_SPENDERS.params, "tollway_row_cap": "UInt32"}
    assert wrapped.row is q.SpenderRow


async def test_runner_runs_read_only_off_the_loop_with_the_cap() -> None:
    fake = FakeClient([("team-a", 1, 2, 3, Decimal("1"), Decimal("0"))], delay_s=0.2)
    runner = _runner(fake)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    params = {"start": NOW - timedelta(days=1), "end": NOW, "team": ""}
    rows: Rows = await runner.rows(q.SPEND_BY_TEAM, params, 11)
    ticker.cancel()
    assert ticks >= 5  # the loop kept running while the query slept in its thread
    assert rows == [q.SpendRow("team-a", 1, 2, 3, Decimal("1"), Decimal("0"))]
    ((sql, bound, settings),) = fake.calls
    assert "FROM tw.cost_hourly" in sql
    assert sql.endswith("LIMIT {tollway_row_cap:UInt32}")
    assert bound == {**params, "tollway_row_cap": 11}
    assert settings == {"readonly": 1}
    runner.close()
    assert fake.closed


async def test_runner_pool_is_bounded() -> None:
    fake = FakeClient([], delay_s=0.1)
    runner = _runner(fake, threads=2)
    params = {"start": NOW - timedelta(days=1), "end": NOW, "team": ""}
    await asyncio.gather(*(runner.rows(q.SPEND_BY_TEAM, params, 1) for _ in range(6)))
    assert len(fake.calls) == 6
    assert fake.most_active == 2
    runner.close()


async def test_runner_times_out_with_504_without_waiting_for_the_thread() -> None:
    fake = FakeClient([], delay_s=1.0)
    runner = _runner(fake, timeout_s=0.1)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"longer than 0\.1 s"):
        await runner.rows(q.SPEND_BY_TEAM, {"start": NOW, "end": NOW, "team": ""}, 1)
    assert time.monotonic() - started < 0.5
    runner.close()


async def test_runner_reconnects_after_clickhouse_was_unreachable() -> None:
    refused = OperationalError("Error executing HTTP request")
    refused.__cause__ = MaxRetryError(
        None,  # type: ignore[arg-type]  # the pool is irrelevant here
        "/",
        NewConnectionError(None, "refused"),  # type: ignore[arg-type]
    )
    attempts: list[int] = []
    fake = FakeClient([])

    def connect(url: str, **_: Any) -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            raise refused
        return fake

    runner = ClickHouseRunner("http://x", "tw", threads=1, timeout_s=5, connect=connect)
    params = {"start": NOW, "end": NOW, "team": ""}
    with pytest.raises(ServiceUnavailable, match="unreachable") as caught:
        await runner.rows(q.SPEND_BY_TEAM, params, 1)
    assert caught.value.headers() == {"retry-after": "5"}
    assert await runner.rows(q.SPEND_BY_TEAM, params, 1) == []
    assert len(attempts) == 2
    runner.close()


def _with_cause(exc: Exception, cause: BaseException) -> Exception:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "expected", "match"),
    [
        (_with_cause(OperationalError("x"), ReadTimeoutError(None, "/", "read timed out")),  # type: ignore[arg-type]
         DeadlineExceeded, "in time"),
        (OperationalError("x"), ServiceUnavailable, "unreachable"),
        (DatabaseError("x", code=159), DeadlineExceeded, "time limit"),
        (OperationalError("x", code=159), DeadlineExceeded, "time limit"),
        (DatabaseError("x", code=81), ServiceUnavailable, "tollway analytics migrate"),
        (DatabaseError("x", code=60), ServiceUnavailable, "tollway analytics migrate"),
        (DatabaseError("Syntax error near SELECT secret", code=62), AnalyticsQueryFailed,
         r"refused the analytics query \(code 62\)\.$"),
        (RuntimeError("boom"), AnalyticsQueryFailed, r"^The analytics query failed\.$"),
    ],
)  # fmt: skip
def test_clickhouse_errors_are_translated(
    exc: Exception, expected: type[TollwayError], match: str
) -> None:
    translated = _translate(exc, "spend_by_team")
    assert type(translated) is expected
    assert re.search(match, translated.message), translated.message
    assert "secret" not in translated.message  # ClickHouse's message stays in the log


# --- wiring (ingress/server.py's factory) -------------------------------------------------


@pytest.mark.parametrize("key", [None, KEY])
async def test_the_server_factory_reads_the_settings_and_connects_lazily(
    monkeypatch: pytest.MonkeyPatch, key: str | None
) -> None:
    from ingress.analytics_api import analytics_routes_for

    monkeypatch.setenv("CLICKHOUSE_URL", "http://127.0.0.1:9")  # nothing may connect to it
    settings = IngressSettings(id_secret="unit-test", admin_key=key)
    app = build_app(
        settings, default_routes({}), MemoryBus(_never), extra_routes=[analytics_routes_for]
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        listed = await client.get("/v1/analytics", headers=AUTH)
        unknown = await client.get("/v1/analytics/nope", headers=AUTH)
    if key is None:
        _error(listed, 403, "permission_denied")
        _error(unknown, 403, "permission_denied")
    else:
        assert listed.status_code == 200
        assert len(listed.json()["data"]) == len(q.QUERIES)
        _error(unknown, 404, "not_found")
