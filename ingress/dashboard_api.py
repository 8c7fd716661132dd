"""The operator's dashboard, served by the ingress.

    GET /admin/v1/dashboard                 the page (HTML; no credential: it holds no data)
    GET /admin/v1/dashboard/assets/{name}   its script and style sheet (no credential)
    GET /admin/v1/dashboard/data?window=1h  the panels as JSON (admin credential)

Auth without the secret in any server log: the page reads the admin key
(`TOLLWAY_ADMIN_KEY`) from a form or from the URL fragment (`#token=...`, which
browsers never send to a server), keeps it in the tab's sessionStorage, removes it
from the address bar, and calls the data route with `Authorization: Bearer <key>`
(ingress/admin_auth.py: unset key -> 403, wrong key -> 401). The static routes take
no credential and answer the same bytes to everyone. Every answer is `no-store`;
the page forbids framing and every origin but its own (Content-Security-Policy), so
it runs no inline or third-party script.

The data route runs the panel queries (ingress/dashboard_sql.py) concurrently through
the same `QueryRunner` seam as /v1/analytics (ClickHouse off the event loop, bounded
pool, per-query timeout, errors in the typed tree) and shapes the rows with
ingress/dashboard_panels.py. The page polls it every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ingress.admin_auth import AdminKey, check_admin
from ingress.analytics_runner import QueryRunner
from ingress.dashboard_panels import (
    DEFAULT_WINDOW,
    WINDOWS,
    BudgetLine,
    PanelRows,
    build_dashboard,
    period_for,
)
from ingress.dashboard_sql import (
    BATCH_PROGRESS,
    BUCKET_PARAM,
    BUDGET_BURN_DOWN,
    CACHE_BY_TEAM,
    END_PARAM,
    LATENCY_BY_DEPLOYMENT,
    RELIABILITY_OVER_TIME,
    REQUESTS_BY_TEAM,
    SPEND_BY_MODEL_OVER_TIME,
    SPEND_BY_TEAM_OVER_TIME,
    START_PARAM,
    PanelQuery,
    for_clickhouse,
)
from schemas.errors import InvalidRequest, NotFound

if TYPE_CHECKING:
    from analytics.queries import NamedQuery
    from ingress.app import Ingress
    from workers.budget.config import BudgetRule

log = logging.getLogger("tollway.ingress.dashboard")

WHAT: Final = "The dashboard"
PAGE_PATH: Final = "/admin/v1/dashboard"
ASSET_PATH: Final = "/admin/v1/dashboard/assets/{name}"
DATA_PATH: Final = "/admin/v1/dashboard/data"
MAX_ROWS_PER_PANEL: Final = 10_000
"""Enough for 120 buckets x ~80 series; more is cut (the panel then shows a prefix)."""

ASSETS: Final = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_PAGE_FILE: Final = "index.html"
_STATIC_DIR: Final = "dashboard_static"
_SECURITY_HEADERS: Final = {
    "cache-control": "no-store",
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
}
_NO_STORE: Final = {"cache-control": "no-store"}


def _static(name: str) -> bytes:
    return resources.files("ingress").joinpath(_STATIC_DIR, name).read_bytes()


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def budget_lines(rules: Sequence[BudgetRule]) -> list[BudgetLine]:
    """The budgets file's rules as the burn-down panel shows them."""
    return [
        BudgetLine(r.scope_type, r.scope_id, r.window, r.limit_usd, r.enforcement) for r in rules
    ]


class DashboardApi:
    """The handlers, closed over the runner, the admin key, the budgets and the clock."""

    def __init__(
        self,
        runner: QueryRunner,
        admin_key: AdminKey | None,
        budgets: Sequence[BudgetLine] = (),
        clock_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.runner = runner
        self.admin_key = admin_key
        self.budgets = tuple(budgets)
        self.clock_ms = clock_ms
        self._page = _static(_PAGE_FILE)
        self._assets = {name: _static(name) for name in ASSETS}
        self._queries: dict[str, NamedQuery[Any]] = {}

    async def page(self, request: Request) -> Response:
        return Response(self._page, headers=_SECURITY_HEADERS, media_type="text/html")

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = self._assets.get(name)
        if body is None:
            raise NotFound("No such dashboard asset.", param="name")
        return Response(body, headers=_SECURITY_HEADERS, media_type=ASSETS[name])

    async def data(self, request: Request) -> Response:
        check_admin(request.headers.get("authorization"), self.admin_key, what=WHAT)
        window = request.query_params.get("window", DEFAULT_WINDOW)
        if window not in WINDOWS:
            raise InvalidRequest(f"window must be one of {', '.join(WINDOWS)}.", param="window")
        now_ms = self.clock_ms()
        period = period_for(window, now_ms)
        params: dict[str, object] = {
            START_PARAM: _datetime(period.start_ms),
            END_PARAM: _datetime(period.end_ms),
            BUCKET_PARAM: period.bucket_s,
        }
        panels = (
            SPEND_BY_TEAM_OVER_TIME,
            SPEND_BY_MODEL_OVER_TIME,
            BUDGET_BURN_DOWN,
            LATENCY_BY_DEPLOYMENT,
            RELIABILITY_OVER_TIME,
            REQUESTS_BY_TEAM,
            CACHE_BY_TEAM,
            BATCH_PROGRESS,
        )
        results = await asyncio.gather(*(self._rows(panel, params) for panel in panels))
        rows = PanelRows(*results)
        body = build_dashboard(period, rows, self.budgets, now_ms)
        return Response(orjson.dumps(body), headers=_NO_STORE, media_type="application/json")

    async def _rows(self, panel: PanelQuery, params: dict[str, object]) -> list[Any]:
        query = self._queries.get(panel.name)
        if query is None:
            query = self._queries[panel.name] = for_clickhouse(panel)
        taken = {name: value for name, value in params.items() if name in query.params}
        return list(await self.runner.rows(query, taken, MAX_ROWS_PER_PANEL))

    def routes(self) -> list[BaseRoute]:
        return [
            Route(PAGE_PATH, self.page, methods=["GET"]),
            Route(DATA_PATH, self.data, methods=["GET"]),
            Route(ASSET_PATH, self.asset, methods=["GET"]),
        ]


def _datetime(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)


def dashboard_routes_for(ingress: Ingress, budgets: Sequence[BudgetRule] = ()) -> list[BaseRoute]:
    """The `extra_routes` factory of ingress/server.py: ClickHouse and the admin key as for
    /v1/analytics (`CLICKHOUSE_URL`, `TOLLWAY_ADMIN_KEY`, `TOLLWAY_INGRESS_ANALYTICS_*`)."""
    from ingress.analytics_api import clickhouse_runner_for

    runner, _ = clickhouse_runner_for(ingress)
    key = ingress.settings.admin_key
    if key is None:
        log.info("the dashboard's data is off: TOLLWAY_ADMIN_KEY is not set")
    admin = AdminKey(key.get_secret_value()) if key else None
    return DashboardApi(runner, admin, budget_lines(budgets)).routes()
