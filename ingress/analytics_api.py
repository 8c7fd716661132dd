"""Analytics over HTTP: the named queries, read-only, behind the admin credential.

    GET /v1/analytics                 the named queries, their parameters and columns
    GET /v1/analytics/{query_name}    run one: {"object": "list", "query", "columns",
                                      "data": [{column: value}], "has_more", "parameters"}
                                      or text/csv with `?format=csv`

Every route needs `Authorization: Bearer <TOLLWAY_ADMIN_KEY>` (ingress/admin_auth.py);
without the setting they all answer 403. Only the named queries of
analytics/queries.py run here, each with `readonly=1` and at most `limit` rows
(<= 10,000): no ad-hoc SQL over HTTP (that is `tollway sql`, an operator tool).
Parameters are analytics_params.py, the answer analytics_output.py, ClickHouse
analytics_runner.py (off the event loop, bounded pool, per-query timeout).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from analytics.queries import QUERIES, NamedQuery
from ingress.admin_auth import AdminKey, check_admin
from ingress.analytics_output import csv_answer, json_answer
from ingress.analytics_params import http_params, parse_call
from ingress.analytics_runner import ClickHouseRunner, QueryRunner
from schemas.errors import NotFound

if TYPE_CHECKING:
    from ingress.app import Ingress

log = logging.getLogger("tollway.ingress.analytics")

WHAT: Final = "Analytics over HTTP"
_NO_STORE: Final = {"cache-control": "no-store"}


def utc_now() -> datetime:
    return datetime.now(UTC)


def _columns(query: NamedQuery[Any]) -> list[str]:
    return list(getattr(query.row, "_fields", ()))


def listing() -> dict[str, Any]:
    """What `GET /v1/analytics` answers: every named query with its parameters and columns."""
    return {
        "object": "list",
        "data": [
            {
                "object": "analytics.query",
                "id": query.name,
                "path": f"/v1/analytics/{query.name}",
                "description": query.description,
                "parameters": [param.listing() for param in http_params(query)],
                "columns": _columns(query),
            }
            for query in QUERIES.values()
        ],
    }


class AnalyticsApi:
    """The handlers, closed over the runner, the admin key and the clock."""

    def __init__(
        self,
        runner: QueryRunner,
        admin_key: AdminKey | None,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.runner = runner
        self.admin_key = admin_key
        self.now = now

    def _authorize(self, request: Request) -> None:
        check_admin(request.headers.get("authorization"), self.admin_key, what=WHAT)

    async def list_queries(self, request: Request) -> Response:
        self._authorize(request)
        return Response(orjson.dumps(listing()), headers=_NO_STORE, media_type="application/json")

    async def run_query(self, request: Request) -> Response:
        self._authorize(request)
        name = request.path_params["query_name"]
        query = QUERIES.get(name)
        if query is None:
            raise NotFound(
                f"No analytics query named {name!r}; GET /v1/analytics lists them.",
                param="query_name",
            )
        call = parse_call(query, request.query_params.multi_items(), self.now())
        rows = await self.runner.rows(call.query, call.params, call.limit + 1)
        has_more = len(rows) > call.limit
        rows = rows[: call.limit]
        columns = _columns(query)
        if call.fmt == "csv":
            return Response(
                csv_answer(columns, rows),
                headers={
                    **_NO_STORE,
                    "content-disposition": f'attachment; filename="{query.name}.csv"',
                    "x-tollway-has-more": "true" if has_more else "false",
                },
                media_type="text/csv; charset=utf-8",
            )
        body = json_answer(query.name, columns, rows, has_more=has_more, parameters=call.resolved)
        return Response(orjson.dumps(body), headers=_NO_STORE, media_type="application/json")


def analytics_routes(
    runner: QueryRunner,
    admin_key: AdminKey | None,
    *,
    now: Callable[[], datetime] = utc_now,
) -> list[BaseRoute]:
    api = AnalyticsApi(runner, admin_key, now)
    return [
        Route("/v1/analytics", api.list_queries, methods=["GET"]),
        Route("/v1/analytics/{query_name}", api.run_query, methods=["GET"]),
    ]


def clickhouse_runner_for(ingress: Ingress) -> tuple[ClickHouseRunner, str]:
    """The ingress's ClickHouse runner (`CLICKHOUSE_URL`, `TOLLWAY_ANALYTICS_DATABASE`,
    `TOLLWAY_INGRESS_ANALYTICS_*`) and the server's URL as logs may show it."""
    from analytics.settings import AnalyticsSettings

    store = AnalyticsSettings()
    runner = ClickHouseRunner(
        store.url,
        store.database,
        threads=ingress.settings.analytics_threads,
        timeout_s=ingress.settings.analytics_timeout_s,
    )
    return runner, store.url_for_logs


def analytics_routes_for(ingress: Ingress) -> list[BaseRoute]:
    """The `extra_routes` factory of ingress/server.py: settings from the environment.

    ClickHouse is `CLICKHOUSE_URL` / `TOLLWAY_ANALYTICS_DATABASE` (analytics/settings.py);
    the key, timeout and threads are `TOLLWAY_ADMIN_KEY`, `TOLLWAY_INGRESS_ANALYTICS_*`.
    Nothing connects here: the client is made on the first query.
    """
    runner, url_for_logs = clickhouse_runner_for(ingress)
    key = ingress.settings.admin_key
    if key is None:
        log.info("analytics over HTTP is off: TOLLWAY_ADMIN_KEY is not set")
    else:
        log.info("analytics over HTTP on, ClickHouse at %s", url_for_logs)
    return analytics_routes(runner, AdminKey(key.get_secret_value()) if key else None)
