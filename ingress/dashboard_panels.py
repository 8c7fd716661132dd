"""Query rows -> the dashboard's JSON panels. Pure: rows, budget rules and `now_ms` in.

`WINDOWS` are the periods the page offers, each with its bucket size; `period_for`
turns one into `[start, end)` at `now_ms`. `build_dashboard` shapes the rows of the
panel queries (ingress/dashboard_sql.py) into the document
`GET /admin/v1/dashboard/data` answers:

    headline      totals over the window: spend, calls, requests, failures, fallbacks,
                  cache hits and savings, with their rates
    spend_by_team, spend_by_model
                  {"times_ms": [...], "series": [{"name", "total_usd", "values_usd"}]}:
                  one value per bucket (0 where nothing was spent), the biggest
                  `MAX_SERIES` series by total, the rest summed as "(other)"
    burn_down     per budget rule (or, with no rules, per team and global): cumulative
                  spend per bucket over the window, the limit and what remains of it
    latency       per deployment: requests, p50/p95/p99 latency and TTFT (ms)
    reliability   per bucket: requests, failed, fallbacks
    teams         per team: requests, failed, fallbacks (request rows) and calls, cache
                  hits, spend, savings (usage rows)
    batches       per recent batch: finished, succeeded, failed

Money is a decimal string with nine places (exact: never a float); times are Unix
epoch milliseconds, UTC. Rates are floats in [0, 1] (display only).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from ingress.dashboard_sql import (
    BatchProgress,
    DeploymentLatency,
    ModelSpendPoint,
    ReliabilityPoint,
    ScopeSpendPoint,
    TeamCache,
    TeamRequests,
    TeamSpendPoint,
)

WINDOWS: Final[Mapping[str, tuple[int, int]]] = {
    # name: (length_s, bucket_s); about 60-120 buckets each
    "15m": (15 * 60, 15),
    "1h": (3600, 60),
    "6h": (6 * 3600, 300),
    "24h": (86_400, 900),
    "7d": (7 * 86_400, 3600),
    "30d": (30 * 86_400, 6 * 3600),
}
DEFAULT_WINDOW: Final = "1h"
MAX_SERIES: Final = 8
OTHER: Final = "(other)"
GLOBAL_SCOPE_ID: Final = "*"
_ZERO: Final = Decimal(0)


@dataclass(frozen=True, slots=True)
class Period:
    """`[start_ms, end_ms)`, cut into buckets of `bucket_s` aligned to the epoch."""

    window: str
    start_ms: int
    end_ms: int
    bucket_s: int

    @property
    def bucket_ms(self) -> int:
        return self.bucket_s * 1000

    def bucket_times_ms(self) -> list[int]:
        """Start of every bucket that overlaps the period, oldest first."""
        first = self.start_ms - self.start_ms % self.bucket_ms
        return list(range(first, self.end_ms, self.bucket_ms))


@dataclass(frozen=True, slots=True)
class BudgetLine:
    """A configured budget, as the burn-down panel needs it."""

    scope_type: str
    scope_id: str
    window: str
    limit_usd: Decimal
    enforcement: str

    @property
    def scope(self) -> str:
        if self.scope_type == "global":
            return "global"
        return f"{self.scope_type}:{self.scope_id}"


@dataclass(frozen=True, slots=True)
class PanelRows:
    """The rows of every panel query for one period."""

    spend_by_team: Sequence[TeamSpendPoint] = ()
    spend_by_model: Sequence[ModelSpendPoint] = ()
    burn_down: Sequence[ScopeSpendPoint] = ()
    latency: Sequence[DeploymentLatency] = ()
    reliability: Sequence[ReliabilityPoint] = ()
    requests_by_team: Sequence[TeamRequests] = ()
    cache_by_team: Sequence[TeamCache] = ()
    batches: Sequence[BatchProgress] = ()


def period_for(window: str, now_ms: int) -> Period:
    """The period of `window` (a key of `WINDOWS`) ending at `now_ms`."""
    length_s, bucket_s = WINDOWS[window]
    return Period(window, now_ms - length_s * 1000, now_ms, bucket_s)


def usd(value: Decimal) -> str:
    """Nine decimal places, never an exponent (`Decimal('0E-9')` -> '0.000000000')."""
    return f"{value.quantize(Decimal('1e-9')):f}"


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _series(
    times_ms: Sequence[int], points: Iterable[tuple[int, str, Decimal]]
) -> list[dict[str, Any]]:
    """(bucket_ms, name, usd) points -> one dense series per name, biggest first; names
    past `MAX_SERIES` are summed into `OTHER`."""
    by_name: dict[str, dict[int, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for at_ms, name, value in points:
        by_name[name][at_ms] += value
    totals = {name: sum(values.values(), _ZERO) for name, values in by_name.items()}
    ranked = sorted(by_name, key=lambda n: (-totals[n], n))
    kept, rest = ranked[:MAX_SERIES], ranked[MAX_SERIES:]
    if len(rest) == 1:  # "(other)" for one series would hide its name for nothing
        kept, rest = ranked, []
    series = [(name, by_name[name]) for name in kept]
    if rest:
        other: dict[int, Decimal] = defaultdict(Decimal)
        for name in rest:
            for at_ms, value in by_name[name].items():
                other[at_ms] += value
        series.append((OTHER, other))
    return [
        {
            "name": name,
            "total_usd": usd(sum(values.values(), _ZERO)),
            "values_usd": [usd(values.get(t, _ZERO)) for t in times_ms],
        }
        for name, values in series
    ]


def _cumulative(times_ms: Sequence[int], points: Sequence[ScopeSpendPoint]) -> list[str]:
    """Running totals at every bucket (carried forward over buckets without spend)."""
    at = {epoch_ms(p.time): p.cumulative_usd for p in points}
    running = _ZERO
    out = []
    for t in times_ms:
        running = at.get(t, running)
        out.append(usd(running))
    return out


def _burn_down(
    times_ms: Sequence[int], rows: Sequence[ScopeSpendPoint], budgets: Sequence[BudgetLine]
) -> list[dict[str, Any]]:
    by_scope: dict[tuple[str, str], list[ScopeSpendPoint]] = defaultdict(list)
    for row in rows:
        by_scope[(row.scope_type, row.scope_id)].append(row)
    lines: list[tuple[str, str, BudgetLine | None]]
    if budgets:
        lines = [(b.scope_type, b.scope_id, b) for b in budgets]
    else:  # no budgets configured: every team's (and the global) cumulative spend
        teams = sorted(
            (key for key in by_scope if key[0] == "team"),
            key=lambda k: (-max(p.cumulative_usd for p in by_scope[k]), k[1]),
        )[:MAX_SERIES]
        lines = [("global", GLOBAL_SCOPE_ID, None), *((t, s, None) for t, s in teams)]
    panels = []
    for scope_type, scope_id, budget in lines:
        points = sorted(by_scope.get((scope_type, scope_id), ()), key=lambda p: p.time)
        spent = points[-1].cumulative_usd if points else _ZERO
        entry: dict[str, Any] = {
            "scope": budget.scope
            if budget
            else BudgetLine(scope_type, scope_id, "", _ZERO, "").scope,
            "budget_window": budget.window if budget else None,
            "enforcement": budget.enforcement if budget else None,
            "limit_usd": usd(budget.limit_usd) if budget else None,
            "spent_usd": usd(spent),
            "remaining_usd": usd(budget.limit_usd - spent) if budget else None,
            "used_pct": float(spent * 100 / budget.limit_usd) if budget else None,
            "cumulative_usd": _cumulative(times_ms, points),
        }
        panels.append(entry)
    return panels


def _teams(requests: Sequence[TeamRequests], cache: Sequence[TeamCache]) -> list[dict[str, Any]]:
    by_team: dict[str, dict[str, Any]] = {}

    def blank(team_id: str) -> dict[str, Any]:
        return {
            "team_id": team_id, "requests": 0, "failed": 0, "fallbacks": 0, "calls": 0,
            "cache_hits": 0, "hit_rate": 0.0, "cost_usd": usd(_ZERO), "saved_usd": usd(_ZERO),
        }  # fmt: skip

    for r in requests:
        team = by_team.setdefault(r.team_id, blank(r.team_id))
        team.update(requests=r.requests, failed=r.failed, fallbacks=r.fallbacks)
    for c in cache:
        team = by_team.setdefault(c.team_id, blank(c.team_id))
        team.update(
            calls=c.calls,
            cache_hits=c.cache_hits,
            hit_rate=_rate(c.cache_hits, c.calls),
            cost_usd=usd(c.cost_usd),
            saved_usd=usd(c.saved_usd),
        )
    return sorted(by_team.values(), key=lambda t: (-Decimal(t["cost_usd"]), t["team_id"]))


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def build_dashboard(
    period: Period, rows: PanelRows, budgets: Sequence[BudgetLine], generated_at_ms: int
) -> dict[str, Any]:
    """The dashboard document for `period` (see the module docstring)."""
    times = period.bucket_times_ms()
    spend = sum((p.cost_usd for p in rows.spend_by_team), _ZERO)
    calls = sum(p.calls for p in rows.spend_by_team)
    requests = sum(t.requests for t in rows.requests_by_team)
    failed = sum(t.failed for t in rows.requests_by_team)
    fallbacks = sum(t.fallbacks for t in rows.requests_by_team)
    cache_hits = sum(c.cache_hits for c in rows.cache_by_team)
    saved = sum((c.saved_usd for c in rows.cache_by_team), _ZERO)
    reliability_at = {epoch_ms(p.time): p for p in rows.reliability}
    return {
        "object": "dashboard",
        "window": period.window,
        "start_ms": period.start_ms,
        "end_ms": period.end_ms,
        "bucket_s": period.bucket_s,
        "generated_at_ms": generated_at_ms,
        "headline": {
            "spend_usd": usd(spend),
            "calls": calls,
            "requests": requests,
            "failed": failed,
            "error_rate": _rate(failed, requests),
            "fallbacks": fallbacks,
            "fallback_rate": _rate(fallbacks, requests),
            "cache_hits": cache_hits,
            "cache_hit_rate": _rate(cache_hits, calls),
            "saved_usd": usd(saved),
        },
        "spend_by_team": {
            "times_ms": times,
            "series": _series(
                times, ((epoch_ms(p.time), p.team_id, p.cost_usd) for p in rows.spend_by_team)
            ),
        },
        "spend_by_model": {
            "times_ms": times,
            "series": _series(
                times, ((epoch_ms(p.time), p.model, p.cost_usd) for p in rows.spend_by_model)
            ),
        },
        "burn_down": {"times_ms": times, "scopes": _burn_down(times, rows.burn_down, budgets)},
        "latency": [
            {
                "deployment": d.deployment,
                "requests": d.requests,
                **{f: _ms(getattr(d, f)) for f in DeploymentLatency._fields[2:]},
            }
            for d in rows.latency
        ],
        "reliability": {
            "times_ms": times,
            "requests": [reliability_at[t].requests if t in reliability_at else 0 for t in times],
            "failed": [reliability_at[t].failed if t in reliability_at else 0 for t in times],
            "fallbacks": [reliability_at[t].fallbacks if t in reliability_at else 0 for t in times],
        },
        "teams": _teams(rows.requests_by_team, rows.cache_by_team),
        "batches": [
            {
                "batch_id": b.batch_id,
                "team_id": b.team_id,
                "finished": b.finished,
                "succeeded": b.succeeded,
                "failed": b.failed,
                "first_received_ms": epoch_ms(b.first_received_at),
                "last_finished_ms": epoch_ms(b.last_finished_at),
            }
            for b in rows.batches
        ],
    }
