# (SQL from this module's constants only; values are bound server-side.)
"""The dashboard's SQL, written once and spoken in two dialects. Pure: no I/O.

Each panel's query is written here in the Grafana ClickHouse data source's macro
spelling (`$__timeFilter(column)`, `$__timeInterval(column)`), with `{db}` for the
database. The same text then becomes:

- for Tollway's own dashboard (ingress/dashboard_api.py): a `NamedQuery` whose macros
  are replaced by server-side bound parameters (`{start:DateTime64(3, 'UTC')}`,
  `{end:...}`, `{bucket_s:UInt32}`): values never enter the SQL text;
- for Grafana (ingress/dashboard_grafana.py -> deploy/grafana/tollway-dashboard.json):
  the text as it is, `{db}` replaced by the database name.

So the Grafana panels and the dashboard read the same rows with the same SQL. Periods
are `[start, end)` on the dashboard; Grafana's `$__timeFilter` closes the end (`<=`),
a difference of one millisecond. Buckets (`$__timeInterval`) start at multiples of
`bucket_s` seconds since the epoch, UTC.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, Literal, NamedTuple

from analytics.queries import NamedQuery

PanelKind = Literal["timeseries", "table", "barchart"]

START_PARAM: Final = "start"
END_PARAM: Final = "end"
BUCKET_PARAM: Final = "bucket_s"
_TIME_TYPE: Final = "DateTime64(3, 'UTC')"

TIME_FILTER: Final = re.compile(r"\$__timeFilter\(([A-Za-z_][A-Za-z0-9_.]*)\)")
TIME_INTERVAL: Final = re.compile(r"\$__timeInterval\(([A-Za-z_][A-Za-z0-9_.]*)\)")
ANY_MACRO: Final = re.compile(r"\$__\w+")


# --- rows (what each query's columns become) ---------------------------------------


class TeamSpendPoint(NamedTuple):
    time: datetime
    team_id: str
    calls: int
    cost_usd: Decimal


class ModelSpendPoint(NamedTuple):
    time: datetime
    model: str
    calls: int
    cost_usd: Decimal


class ScopeSpendPoint(NamedTuple):
    """Cumulative spend of one budget scope (team | key | model | global) up to `time`."""

    time: datetime
    scope_type: str
    scope_id: str
    cost_usd: Decimal
    cumulative_usd: Decimal


class DeploymentLatency(NamedTuple):
    deployment: str  # '' = answered by no deployment (refused or failed before a call)
    requests: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    ttft_p99_ms: float | None


class ReliabilityPoint(NamedTuple):
    time: datetime
    requests: int
    failed: int
    fallbacks: int
    error_rate: float
    fallback_rate: float


class TeamRequests(NamedTuple):
    team_id: str
    requests: int
    failed: int
    fallbacks: int
    cache_hits: int


class TeamCache(NamedTuple):
    team_id: str
    calls: int
    cache_hits: int
    hit_rate: float
    cost_usd: Decimal
    saved_usd: Decimal


class BatchProgress(NamedTuple):
    batch_id: str
    team_id: str
    finished: int
    succeeded: int
    failed: int
    first_received_at: datetime
    last_finished_at: datetime


# --- the panels' queries -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PanelQuery:
    """One panel's query: `sql` in Grafana macro spelling, rows typed as `row`."""

    name: str
    title: str
    description: str
    kind: PanelKind
    row: Callable[..., tuple[Any, ...]]
    sql: str

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(getattr(self.row, "_fields", ()))


SPEND_BY_TEAM_OVER_TIME: Final = PanelQuery(
    name="spend_by_team_over_time",
    title="Spend over time by team (USD)",
    description="Priced provider calls per time bucket and team, from the raw usage rows.",
    kind="timeseries",
    row=TeamSpendPoint,
    sql="""
SELECT $__timeInterval(occurred_at) AS time, team_id, count() AS calls, sum(cost_usd) AS cost_usd
FROM {db}.usage
WHERE $__timeFilter(occurred_at)
GROUP BY time, team_id
ORDER BY time, team_id""",
)
SPEND_BY_MODEL_OVER_TIME: Final = PanelQuery(
    name="spend_by_model_over_time",
    title="Spend over time by model (USD)",
    description="Priced provider calls per time bucket and upstream model.",
    kind="timeseries",
    row=ModelSpendPoint,
    sql="""
SELECT $__timeInterval(occurred_at) AS time, model, count() AS calls, sum(cost_usd) AS cost_usd
FROM {db}.usage
WHERE $__timeFilter(occurred_at)
GROUP BY time, model
ORDER BY time, model""",
)
BUDGET_BURN_DOWN: Final = PanelQuery(
    name="budget_burn_down",
    title="Budget burn-down: cumulative spend per scope (USD)",
    description="Spend per bucket and its running total for every budget scope the rows "
    "name: global, team, key, and model (team/requested model, as budgets name it).",
    kind="timeseries",
    row=ScopeSpendPoint,
    sql="""
SELECT time, scope_type, scope_id, cost_usd,
       sum(cost_usd) OVER (PARTITION BY scope_type, scope_id ORDER BY time
                           ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cumulative_usd
FROM
(
    SELECT $__timeInterval(occurred_at) AS time, scope.1 AS scope_type, scope.2 AS scope_id,
           sum(cost_usd) AS cost_usd
    FROM {db}.usage
    ARRAY JOIN [('global', '*'), ('team', toString(team_id)),
                ('key', ifNull(toString(key_id), '')),
                ('model', concat(toString(team_id), '/', toString(requested_model)))] AS scope
    WHERE $__timeFilter(occurred_at)
    GROUP BY time, scope_type, scope_id
    HAVING scope_id != ''
)
ORDER BY time, scope_type, scope_id""",
)
LATENCY_BY_DEPLOYMENT: Final = PanelQuery(
    name="latency_by_deployment",
    title="Latency and time to first token per deployment (ms)",
    description="End-to-end request latency (received -> finished) and TTFT quantiles per "
    "serving deployment, from the raw request rows.",
    kind="barchart",
    row=DeploymentLatency,
    sql="""
SELECT ifNull(toString(deployment), '') AS deployment, count() AS requests,
       quantile(0.5)(latency_ms) AS p50_ms, quantile(0.95)(latency_ms) AS p95_ms,
       quantile(0.99)(latency_ms) AS p99_ms, quantile(0.5)(ttft_ms) AS ttft_p50_ms,
       quantile(0.95)(ttft_ms) AS ttft_p95_ms, quantile(0.99)(ttft_ms) AS ttft_p99_ms
FROM {db}.requests
WHERE $__timeFilter(received_at)
GROUP BY deployment
ORDER BY deployment""",
)
RELIABILITY_OVER_TIME: Final = PanelQuery(
    name="reliability_over_time",
    title="Error and fallback rates",
    description="Per time bucket: requests, failed ones, ones served after a retry or a "
    "fallback, and both as rates.",
    kind="timeseries",
    row=ReliabilityPoint,
    sql="""
SELECT $__timeInterval(received_at) AS time, count() AS requests,
       countIf(status = 'failed') AS failed, countIf(fallback_used) AS fallbacks,
       failed / requests AS error_rate, fallbacks / requests AS fallback_rate
FROM {db}.requests
WHERE $__timeFilter(received_at)
GROUP BY time
ORDER BY time""",
)
REQUESTS_BY_TEAM: Final = PanelQuery(
    name="requests_by_team",
    title="Requests by team",
    description="Requests received per team, failed ones, fallbacks and cache hits.",
    kind="table",
    row=TeamRequests,
    sql="""
SELECT team_id, count() AS requests, countIf(status = 'failed') AS failed,
       countIf(fallback_used) AS fallbacks, countIf(cache_hit) AS cache_hits
FROM {db}.requests
WHERE $__timeFilter(received_at)
GROUP BY team_id
ORDER BY requests DESC, team_id""",
)
CACHE_BY_TEAM: Final = PanelQuery(
    name="cache_by_team",
    title="Cache hit rate and savings by team",
    description="Priced calls, the cache hits among them, spend and what the cache saved.",
    kind="table",
    row=TeamCache,
    sql="""
SELECT team_id, count() AS calls, countIf(cost_status = 'cache_hit') AS cache_hits,
       cache_hits / calls AS hit_rate, sum(cost_usd) AS cost_usd, sum(saved_usd) AS saved_usd
FROM {db}.usage
WHERE $__timeFilter(occurred_at)
GROUP BY team_id
ORDER BY saved_usd DESC, team_id""",
)
BATCH_PROGRESS: Final = PanelQuery(
    name="batch_progress",
    title="Batch progress",
    description="Per batch: requests finished so far, succeeded and failed (the 20 most "
    "recently active batches).",
    kind="table",
    row=BatchProgress,
    sql="""
SELECT assumeNotNull(batch_id) AS batch, any(team_id) AS team, count() AS finished,
       countIf(status = 'succeeded') AS succeeded, countIf(status = 'failed') AS failed,
       min(received_at) AS first_received_at, max(finished_at) AS last_finished_at
FROM {db}.requests
WHERE $__timeFilter(received_at) AND batch_id IS NOT NULL
GROUP BY batch
ORDER BY last_finished_at DESC, batch
LIMIT 20""",
)

PANEL_QUERIES: Final[tuple[PanelQuery, ...]] = (
    SPEND_BY_TEAM_OVER_TIME,
    SPEND_BY_MODEL_OVER_TIME,
    BUDGET_BURN_DOWN,
    LATENCY_BY_DEPLOYMENT,
    RELIABILITY_OVER_TIME,
    REQUESTS_BY_TEAM,
    CACHE_BY_TEAM,
    BATCH_PROGRESS,
)


# --- the two dialects --------------------------------------------------------------


def for_clickhouse(panel: PanelQuery) -> NamedQuery[Any]:
    """`panel` as a named query: macros -> bound parameters (it takes only those it uses)."""
    params: dict[str, str] = {}
    sql = panel.sql
    if TIME_FILTER.search(sql):
        params |= {START_PARAM: _TIME_TYPE, END_PARAM: _TIME_TYPE}
        sql = TIME_FILTER.sub(
            lambda m: (
                f"{m[1]} >= {{{START_PARAM}:{_TIME_TYPE}}} "
                f"AND {m[1]} < {{{END_PARAM}:{_TIME_TYPE}}}"
            ),
            sql,
        )
    if TIME_INTERVAL.search(sql):
        params[BUCKET_PARAM] = "UInt32"
        sql = TIME_INTERVAL.sub(
            lambda m: f"toStartOfInterval({m[1]}, toIntervalSecond({{{BUCKET_PARAM}:UInt32}}))",
            sql,
        )
    leftover = ANY_MACRO.search(sql)
    if leftover is not None:
        raise ValueError(f"{panel.name}: no ClickHouse spelling for {leftover[0]}")
    return NamedQuery(
        name=f"dashboard_{panel.name}",
        description=panel.description,
        params=params,
        row=panel.row,
        sql=sql,
    )


def for_grafana(panel: PanelQuery, database: str) -> str:
    """`panel`'s SQL as the Grafana ClickHouse data source runs it (macros kept)."""
    return panel.sql.replace("{db}", database).strip()


def expand_grafana_macros(sql: str, start_s: int, end_s: int, interval_s: int) -> str:
    """What the Grafana data source sends for `sql` over [start_s, end_s] (Unix seconds):
    its expansion of `$__timeFilter` and `$__timeInterval`, to run the panels' SQL in tests."""
    sql = TIME_FILTER.sub(
        lambda m: f"{m[1]} >= toDateTime({start_s}) AND {m[1]} <= toDateTime({end_s})", sql
    )
    return TIME_INTERVAL.sub(
        lambda m: f"toStartOfInterval(toDateTime({m[1]}), INTERVAL {interval_s} second)", sql
    )


def clickhouse_queries() -> Mapping[str, NamedQuery[Any]]:
    """Every panel's named query, by panel name."""
    return {panel.name: for_clickhouse(panel) for panel in PANEL_QUERIES}
