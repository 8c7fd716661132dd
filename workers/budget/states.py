"""What a scope's spend means against its budget: state records and threshold events. Pure.

`evaluate` turns one scope's totals over one window into the `tollway.budget-state`
record (limit, remaining, status ok/warn/exceeded, frees_at); `crossings` turns a
rise in spend into the `tollway.budget-events` it crossed (50/80/100 %).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from schemas.records import BudgetEvent, BudgetState, ScopeType
from workers.budget.config import THRESHOLDS_PCT, WARN_PCT, BudgetRule, state_key
from workers.budget.windows import (
    Window,
    frees_at_ms,
    month_label,
    window_start_ms,
)

Scope = tuple[ScopeType, str]


@dataclass(frozen=True, slots=True)
class Totals:
    """One scope over one window at one moment."""

    spent_nano_usd: int
    unpriced_calls: int
    money_buckets: Mapping[int, int]
    unpriced_buckets: Mapping[int, int]


def evaluate(
    scope: Scope,
    window: Window,
    totals: Totals,
    rule: BudgetRule | None,
    *,
    unpriced_fail_closed: bool,
    now_ms: int,
    watermark_ms: int,
    updated_at_ms: int,
) -> BudgetState:
    """The `tollway.budget-state` record of one scope and window."""
    spent = totals.spent_nano_usd
    state: BudgetState = {
        "scope_type": scope[0],
        "scope_id": scope[1],
        "window": window,
        "spent_nano_usd": spent,
        "limit_nano_usd": None,
        "remaining_nano_usd": None,
        "status": "ok",
        "enforcement": "soft",
        "frees_at_ms": None,
        "watermark_ms": watermark_ms,
        "updated_at_ms": updated_at_ms,
    }
    if rule is None:
        return state
    limit = rule.limit_nano_usd
    over_limit = spent >= limit
    blocked = unpriced_fail_closed and totals.unpriced_calls > 0
    frees: list[int] = []
    if over_limit:
        frees.append(frees_at_ms(window, totals.money_buckets, limit, now_ms) or now_ms)
    if blocked:
        frees.append(frees_at_ms(window, totals.unpriced_buckets, 1, now_ms) or now_ms)
    if over_limit or blocked:
        status: Literal["ok", "warn", "exceeded"] = "exceeded"
    elif spent * 100 >= limit * WARN_PCT:
        status = "warn"
    else:
        status = "ok"
    state["limit_nano_usd"] = limit
    state["remaining_nano_usd"] = max(0, limit - spent)
    state["status"] = status
    state["enforcement"] = rule.enforcement
    state["frees_at_ms"] = max(frees) if frees else None
    return state


def threshold_level(spent_nano_usd: int, limit_nano_usd: int) -> int:
    """The highest threshold (percent) the spend has reached, 0 for none."""
    reached = [t for t in THRESHOLDS_PCT if spent_nano_usd * 100 >= limit_nano_usd * t]
    return max(reached, default=0)


def crossings(
    state: BudgetState, previous_level: int, now_ms: int
) -> tuple[int, list[BudgetEvent]]:
    """The new level and one event per threshold crossed upward since `previous_level`.

    Event ids are stable: `<state key>:<pct>:<period>`, the period being the month
    (`mtd`) or the window's start when the crossing was seen (rolling windows), so
    a replay that sees the same crossing in the same bucket produces the same id.
    """
    limit = state["limit_nano_usd"]
    if limit is None:
        return 0, []
    level = threshold_level(state["spent_nano_usd"], limit)
    window = state["window"]
    period = (
        month_label(now_ms) if window == "mtd" else str(window_start_ms(window, now_ms))  # type: ignore[arg-type]  # a Window
    )
    key = state_key(state["scope_type"], state["scope_id"], window)
    events: list[BudgetEvent] = [
        {
            "event_id": f"{key}:{pct}:{period}",
            "scope_type": state["scope_type"],
            "scope_id": state["scope_id"],
            "window": window,
            "threshold_pct": pct,
            "spent_nano_usd": state["spent_nano_usd"],
            "limit_nano_usd": limit,
            "occurred_at_ms": now_ms,
        }
        for pct in THRESHOLDS_PCT
        if previous_level < pct <= level
    ]
    return level, events
