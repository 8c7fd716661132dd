# ruff: noqa: S608  # the SQL is composed from this module's constants; values are bound server-side
"""The SQL layer as a public contract: named, parameterized queries returning typed rows.

Every query is a `NamedQuery`: a stable name, its SQL (server-side parameters
`{name:Type}`, `{db}` for the database), the parameters it takes and the NamedTuple
its rows become. `run(client, QUERY, start=..., end=...)` executes one read-only
(`readonly=1`) and converts the rows: money is `Decimal`, times are aware UTC
datetimes, a quantile of no values is None. `QUERIES` lists them all;
docs/analytics-schema.md documents each one and a test pins the names.

Periods are half-open, `[start, end)`. Spend and cost queries read the hourly or
daily rollups, so `start` counts from the beginning of its hour (daily queries take
dates); request, latency and reliability queries read the raw rows. The optional
`team` parameter restricts a query to one team; '' means all teams.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Generic, NamedTuple, TypeVar

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

R = TypeVar("R", bound=tuple[Any, ...])

_PERIOD: Final = {"start": "DateTime64(3, 'UTC')", "end": "DateTime64(3, 'UTC')"}
_DAYS: Final = {"start_day": "Date", "end_day": "Date"}
_TEAM: Final = {"team": "String"}
_HOURS: Final = (
    "hour >= toStartOfHour({start:DateTime64(3, 'UTC')}) AND hour < {end:DateTime64(3, 'UTC')}"
    " AND ({team:String} = '' OR team_id = {team:String})"
)
_RAW: Final = (
    "{t} >= {{start:DateTime64(3, 'UTC')}} AND {t} < {{end:DateTime64(3, 'UTC')}}"
    " AND ({{team:String}} = '' OR team_id = {{team:String}})"
)


@dataclass(frozen=True, slots=True)
class NamedQuery(Generic[R]):
    name: str
    description: str
    params: Mapping[str, str]
    row: Callable[..., R]
    sql: str

    def render(self, database: str) -> str:
        return self.sql.replace("{db}", database)


# --- rows ---------------------------------------------------------------------------


class SpendRow(NamedTuple):
    """Spend of one value of the grouping dimension (team, key, model, provider or tag)."""

    dimension: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    saved_usd: Decimal


class TeamDayRow(NamedTuple):
    day: date
    team_id: str
    calls: int
    cost_usd: Decimal
    saved_usd: Decimal


class DayRow(NamedTuple):
    day: date
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal
    saved_usd: Decimal


class SpenderRow(NamedTuple):
    team_id: str
    key_id: str  # '' = requests without a virtual key
    calls: int
    cost_usd: Decimal


class CostPer1kRow(NamedTuple):
    team_id: str
    requests: int
    cost_usd: Decimal
    cost_per_1k_requests_usd: Decimal


class LatencyRow(NamedTuple):
    """End-to-end request latency (received -> finished) and time to first token."""

    deployment: str
    requests: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    ttft_p99_ms: float | None


class CallLatencyRow(NamedTuple):
    """Provider-call latency, one call per attempt."""

    deployment: str
    provider: str
    calls: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class ReliabilityRow(NamedTuple):
    requested_model: str
    requests: int
    failed: int
    error_rate: float
    multi_call: int  # more than one provider call: a retry or a fallback
    fallback: int  # provider calls on more than one deployment
    fallback_rate: float


class CacheRow(NamedTuple):
    team_id: str
    calls: int
    cache_hits: int
    hit_rate: float
    cost_usd: Decimal
    saved_usd: Decimal


class BurnDownRow(NamedTuple):
    day: date
    spent_usd: Decimal
    cumulative_usd: Decimal
    remaining_usd: Decimal


class BudgetEventRow(NamedTuple):
    occurred_at: datetime
    scope_type: str
    scope_id: str
    budget_window: str
    threshold_pct: int
    spent_usd: Decimal
    limit_usd: Decimal


# --- queries ------------------------------------------------------------------------


def _spend_from_rollup(name: str, column: str, what: str) -> NamedQuery[SpendRow]:
    return NamedQuery(
        name=name,
        description=f"Spend per {what} over [start, end), biggest first.",
        params={**_PERIOD, **_TEAM},
        row=SpendRow,
        sql=f"""
SELECT {column} AS dimension, sum(calls), sum(prompt_tokens), sum(completion_tokens),
       sum(cost_usd) AS cost, sum(saved_usd)
FROM {{db}}.cost_hourly
WHERE {_HOURS}
GROUP BY dimension
ORDER BY cost DESC, dimension""",
    )


SPEND_BY_TEAM: Final = _spend_from_rollup("spend_by_team", "team_id", "team")
SPEND_BY_KEY: Final = _spend_from_rollup("spend_by_key", "key_id", "virtual key ('' = none)")
SPEND_BY_MODEL: Final = _spend_from_rollup("spend_by_model", "model", "upstream model")
SPEND_BY_PROVIDER: Final = _spend_from_rollup("spend_by_provider", "provider", "provider")
SPEND_BY_TAG: Final = NamedQuery(
    name="spend_by_tag",
    description="Spend per request tag over [start, end); a call of a request with two "
    "tags counts for both, so tags do not add up to the total.",
    params={**_PERIOD, **_TEAM},
    row=SpendRow,
    sql=f"""
SELECT t.tag AS dimension, count(), sum(u.prompt_tokens), sum(u.completion_tokens),
       sum(u.cost_usd) AS cost, sum(u.saved_usd)
FROM {{db}}.usage AS u
INNER JOIN
(
    SELECT request_id, arrayJoin(tags) AS tag
    FROM {{db}}.requests
    WHERE received_at >= {{start:DateTime64(3, 'UTC')}} - INTERVAL 1 DAY
      AND received_at < {{end:DateTime64(3, 'UTC')}}
) AS t ON u.request_id = t.request_id
WHERE {_RAW.format(t="u.occurred_at").replace("team_id", "u.team_id")}
GROUP BY dimension
ORDER BY cost DESC, dimension""",
)
SPEND_BY_TEAM_BY_DAY: Final = NamedQuery(
    name="spend_by_team_by_day",
    description="Spend per team and day, days start_day..end_day inclusive.",
    params=_DAYS,
    row=TeamDayRow,
    sql="""
SELECT day, team_id, sum(calls), sum(cost_usd), sum(saved_usd)
FROM {db}.cost_daily
WHERE day >= {start_day:Date} AND day <= {end_day:Date}
GROUP BY day, team_id
ORDER BY day, team_id""",
)
DAILY_TREND: Final = NamedQuery(
    name="daily_trend",
    description="Calls, tokens and spend per day (days without spend included as 0).",
    params={**_DAYS, **_TEAM},
    row=DayRow,
    sql="""
SELECT day, sum(calls), sum(prompt_tokens), sum(completion_tokens), sum(cost_usd),
       sum(saved_usd)
FROM {db}.cost_daily
WHERE day >= {start_day:Date} AND day <= {end_day:Date}
  AND ({team:String} = '' OR team_id = {team:String})
GROUP BY day
ORDER BY day WITH FILL FROM {start_day:Date} TO {end_day:Date} + 1""",
)
TOP_SPENDERS: Final = NamedQuery(
    name="top_spenders",
    description="The `limit` (team, key) pairs that spent most over [start, end).",
    params={**_PERIOD, **_TEAM, "limit": "UInt32"},
    row=SpenderRow,
    sql=f"""
SELECT team_id, key_id, sum(calls), sum(cost_usd) AS cost
FROM {{db}}.cost_hourly
WHERE {_HOURS}
GROUP BY team_id, key_id
ORDER BY cost DESC, team_id, key_id
LIMIT {{limit:UInt32}}""",
)
COST_PER_1K_REQUESTS: Final = NamedQuery(
    name="cost_per_1k_requests",
    description="Per team: requests received, their spend, and spend per 1,000 requests.",
    params={**_PERIOD, **_TEAM},
    row=CostPer1kRow,
    sql=f"""
SELECT team_id, requests, cost,
       if(requests = 0, toDecimal128(0, 9), cost * 1000 / greatest(requests, 1))
FROM
(
    SELECT team_id, count() AS requests FROM {{db}}.requests
    WHERE {_RAW.format(t="received_at")}
    GROUP BY team_id
) AS r
FULL OUTER JOIN
(
    SELECT team_id, sum(cost_usd) AS cost FROM {{db}}.cost_hourly
    WHERE {_HOURS}
    GROUP BY team_id
) AS c USING (team_id)
ORDER BY cost DESC, team_id""",
)
LATENCY_BY_DEPLOYMENT: Final = NamedQuery(
    name="latency_by_deployment",
    description="p50/p95/p99 request latency and time to first token per serving deployment.",
    params={**_PERIOD, **_TEAM},
    row=LatencyRow,
    sql=f"""
SELECT ifNull(deployment, '') AS dep, count(),
       quantiles(0.5, 0.95, 0.99)(latency_ms) AS q, quantiles(0.5, 0.95, 0.99)(ttft_ms) AS t
FROM {{db}}.requests
WHERE {_RAW.format(t="received_at")}
GROUP BY dep
ORDER BY dep""",
)
CALL_LATENCY_BY_DEPLOYMENT: Final = NamedQuery(
    name="call_latency_by_deployment",
    description="p50/p95/p99 provider-call latency and errors per deployment (from attempts).",
    params={**_PERIOD, **_TEAM},
    row=CallLatencyRow,
    sql=f"""
SELECT deployment, provider, count(), countIf(outcome = 'error'),
       quantiles(0.5, 0.95, 0.99)(latency_ms) AS q
FROM {{db}}.attempts
WHERE {_RAW.format(t="started_at")}
GROUP BY deployment, provider
ORDER BY deployment, provider""",
)
RELIABILITY: Final = NamedQuery(
    name="reliability",
    description="Per requested model: error rate, retries-or-fallbacks, and true fallbacks "
    "(calls on more than one deployment).",
    params={**_PERIOD, **_TEAM},
    row=ReliabilityRow,
    sql=f"""
SELECT r.requested_model, count() AS n, countIf(r.status = 'failed') AS failed,
       failed / n, countIf(r.fallback_used), countIf(a.deployments > 1) AS fb, fb / n
FROM {{db}}.requests AS r
LEFT JOIN
(
    SELECT request_id, uniqExact(deployment) AS deployments FROM {{db}}.attempts
    WHERE {_RAW.format(t="started_at")}
    GROUP BY request_id
) AS a ON r.request_id = a.request_id
WHERE {_RAW.format(t="r.received_at").replace("team_id", "r.team_id")}
GROUP BY r.requested_model
ORDER BY n DESC, r.requested_model""",
)
CACHE_SAVINGS: Final = NamedQuery(
    name="cache_savings",
    description="Per team: calls, cache hits, hit rate, spend and what the cache saved.",
    params={**_PERIOD, **_TEAM},
    row=CacheRow,
    sql=f"""
SELECT team_id, sum(calls) AS n, sum(cache_hits) AS hits, if(n = 0, 0, hits / n),
       sum(cost_usd), sum(saved_usd) AS saved
FROM {{db}}.cost_hourly
WHERE {_HOURS}
GROUP BY team_id
ORDER BY saved DESC, team_id""",
)
BUDGET_BURN_DOWN: Final = NamedQuery(
    name="budget_burn_down",
    description="Daily spend of one scope (team | key | model | global), cumulative, and "
    "what remains of `limit_usd`, every day start_day..end_day.",
    params={**_DAYS, "scope_type": "String", "scope_id": "String", "limit_usd": "Decimal(38, 9)"},
    row=BurnDownRow,
    sql="""
SELECT day, spent,
       sum(spent) OVER (ORDER BY day ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS total,
       {limit_usd:Decimal(38, 9)} - total
FROM
(
    SELECT day, sum(cost_usd) AS spent
    FROM {db}.cost_daily
    WHERE day >= {start_day:Date} AND day <= {end_day:Date}
      AND multiIf({scope_type:String} = 'team', team_id = {scope_id:String},
                  {scope_type:String} = 'key', key_id = {scope_id:String},
                  {scope_type:String} = 'model', model = {scope_id:String},
                  {scope_type:String} = 'global', 1, 0)
    GROUP BY day
    ORDER BY day WITH FILL FROM {start_day:Date} TO {end_day:Date} + 1
)
ORDER BY day""",
)
BUDGET_EVENTS: Final = NamedQuery(
    name="budget_events",
    description="Budget threshold crossings over [start, end), newest first.",
    params={**_PERIOD, "scope_id": "String"},
    row=BudgetEventRow,
    sql="""
SELECT occurred_at, scope_type, scope_id, budget_window, threshold_pct, spent_usd, limit_usd
FROM {db}.budget_events
WHERE occurred_at >= {start:DateTime64(3, 'UTC')} AND occurred_at < {end:DateTime64(3, 'UTC')}
  AND ({scope_id:String} = '' OR scope_id = {scope_id:String})
ORDER BY occurred_at DESC, event_id""",
)

QUERIES: Final[dict[str, NamedQuery[Any]]] = {
    q.name: q
    for q in (
        SPEND_BY_TEAM,
        SPEND_BY_KEY,
        SPEND_BY_MODEL,
        SPEND_BY_PROVIDER,
        SPEND_BY_TAG,
        SPEND_BY_TEAM_BY_DAY,
        DAILY_TREND,
        TOP_SPENDERS,
        COST_PER_1K_REQUESTS,
        LATENCY_BY_DEPLOYMENT,
        CALL_LATENCY_BY_DEPLOYMENT,
        RELIABILITY,
        CACHE_SAVINGS,
        BUDGET_BURN_DOWN,
        BUDGET_EVENTS,
    )
}


class QueryParameterError(ValueError):
    """A named query was called with missing or unknown parameters."""


def run(
    client: Client, query: NamedQuery[R], database: str = "tollway", **params: object
) -> list[R]:
    """Run a named query read-only; rows come back as `query.row` tuples."""
    given = set(params)
    if given != set(query.params):
        missing, unknown = sorted(set(query.params) - given), sorted(given - set(query.params))
        raise QueryParameterError(f"{query.name}: missing {missing}, unknown {unknown}")
    result = client.query(query.render(database), parameters=params, settings={"readonly": 1})
    rows = result.result_rows
    if rows and not any(isinstance(v, list | float | datetime) for v in rows[0]):
        return [query.row(*row) for row in rows]  # nothing to convert (most queries)
    return [query.row(*_flatten(row)) for row in rows]


def _flatten(row: Sequence[Any]) -> list[Any]:
    """Quantile arrays become their elements; naive datetimes are UTC; NaN is None."""
    out: list[Any] = []
    for value in row:
        if isinstance(value, list):
            out.extend(_value(v) for v in value)
        else:
            out.append(_value(value))
    return out


def _value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
