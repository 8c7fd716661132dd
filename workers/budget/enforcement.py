"""Admission against budgets: a pure decision from the latest budget states.

Used by the ingress (`ingress/budgets.py`) and, later, the routers. Inputs are
the budget-state records of the scopes a request spends against (`team:<id>`,
`key:<id>`, `model:<team>/<model>`, `global`), the budgets config, `now_ms`
and a staleness bound; the output is an `Admission` (the model to run, maybe
downgraded, and warnings) or an error:

=============  ======================  ===========================================
enforcement    budget spent            budget state unknown / stale
=============  ======================  ===========================================
hard           429 `BudgetExceeded`    503 `ServiceUnavailable` (fail closed)
soft           allow + warning         allow + warning
downgrade      run `downgrade_to`      run `downgrade_to` (the cheaper model)
=============  ======================  ===========================================

Fail closed with 503, not 429: "we cannot tell" is not "you spent it" — a
client (or its dashboard) must not read an outage as a spent budget, and a
503 with Retry-After is retried by every OpenAI SDK.

Freshness: a state is trusted while `now - updated_at <= stale_after_ms`. For
team, key and model scopes a missing or older state is also trusted when the
processor that owns the team's partition is fresh (`owner_updated_ms`, its
heartbeat `global:partition-<p>:1h`): it emits a scope's state on every change,
so the latest state is an upper bound of the spend and a missing one means
nothing was spent. `global` is trusted on its own `updated_at` only.

A state computed against a different limit than this process's config (a
config rolled out to one side first) is re-judged on its `spent` against the
local limit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from schemas.errors import BudgetExceeded, ServiceUnavailable
from schemas.records import BudgetState
from workers.budget.config import WARN_PCT, BudgetRule, BudgetsConfig, format_usd

UNAVAILABLE_RETRY_AFTER_S: Final = 5.0

Verdict = Literal["ok", "warn", "exceeded", "unknown"]


@dataclass(frozen=True, slots=True)
class Admission:
    """The request may run: with `model` (maybe downgraded), carrying these warnings."""

    model: str
    downgraded_from: str | None = None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Judgement:
    rule: BudgetRule
    verdict: Verdict
    spent_nano_usd: int | None = None
    frees_at_ms: int | None = None


def scopes_for(team_id: str, key_id: str | None, model: str) -> tuple[str, ...]:
    """The budget scopes a request spends against, in the order they are reported."""
    scopes = [f"team:{team_id}"]
    if key_id:
        scopes.append(f"key:{key_id}")
    scopes.extend((f"model:{team_id}/{model}", "global"))
    return tuple(scopes)


def judge(
    rule: BudgetRule,
    state: BudgetState | None,
    *,
    owner_updated_ms: int | None,
    now_ms: int,
    stale_after_ms: int,
) -> Judgement:
    """One budget against its latest state."""
    oldest_trusted = now_ms - stale_after_ms
    owner_fresh = (
        rule.scope != "global"
        and owner_updated_ms is not None
        and owner_updated_ms >= oldest_trusted
    )
    if state is None:
        return Judgement(rule, "ok", 0) if owner_fresh else Judgement(rule, "unknown")
    if state["updated_at_ms"] < oldest_trusted and not owner_fresh:
        return Judgement(rule, "unknown")
    spent = state["spent_nano_usd"]
    limit = rule.limit_nano_usd
    if state["limit_nano_usd"] == limit:
        exceeded = state["status"] == "exceeded"  # includes unpriced spend, when fail-closed
        frees_at = state["frees_at_ms"]
    else:
        exceeded, frees_at = spent >= limit, None
    if exceeded and frees_at is not None and now_ms >= frees_at:
        exceeded = False  # the spend left the window since the state was computed
    if exceeded:
        return Judgement(rule, "exceeded", spent, frees_at)
    if spent * 100 >= limit * WARN_PCT:
        return Judgement(rule, "warn", spent)
    return Judgement(rule, "ok", spent)


def _describe(j: Judgement) -> str:
    spent = "unknown" if j.spent_nano_usd is None else format_usd(j.spent_nano_usd)
    return (
        f"{j.rule.scope} has spent {spent} of its {format_usd(j.rule.limit_nano_usd)} "
        f"{j.rule.window} budget"
    )


def _retry_after_s(frees_at_ms: int | None, now_ms: int) -> float | None:
    if frees_at_ms is None:
        return None
    return float(max(1, math.ceil((frees_at_ms - now_ms) / 1000)))


def admit(
    *,
    team_id: str,
    key_id: str | None,
    model: str,
    config: BudgetsConfig,
    states: Mapping[str, BudgetState],
    owner_updated_ms: int | None,
    now_ms: int,
    stale_after_ms: int,
) -> Admission:
    """Admit, downgrade or refuse one request (see the module docstring)."""
    judgements = _judge_all(
        scopes_for(team_id, key_id, model), config, states, owner_updated_ms, now_ms, stale_after_ms
    )
    _refuse_on_hard(judgements, now_ms)
    warnings = [_warning(j) for j in judgements if _warning(j)]
    downgrade = next(
        (
            j.rule
            for j in judgements
            if j.rule.enforcement == "downgrade" and j.verdict in ("exceeded", "unknown")
        ),
        None,
    )
    if downgrade is None or downgrade.downgrade_to is None or downgrade.downgrade_to == model:
        return Admission(model, warnings=tuple(warnings))
    cheaper = downgrade.downgrade_to
    # The cheaper model may have hard budgets of its own (never downgrade twice).
    again = _judge_all(
        (f"model:{team_id}/{cheaper}",), config, states, owner_updated_ms, now_ms, stale_after_ms
    )
    _refuse_on_hard(again, now_ms)
    warnings.append(f"{_describe_downgrade(downgrade)}: running {cheaper} instead of {model}")
    warnings.extend(w for j in again if (w := _warning(j)))
    return Admission(cheaper, downgraded_from=model, warnings=tuple(warnings))


def _judge_all(  # noqa: PLR0917  # a private helper: admit's arguments, passed through
    scopes: tuple[str, ...],
    config: BudgetsConfig,
    states: Mapping[str, BudgetState],
    owner_updated_ms: int | None,
    now_ms: int,
    stale_after_ms: int,
) -> list[Judgement]:
    return [
        judge(
            rule,
            states.get(rule.state_key),
            owner_updated_ms=owner_updated_ms,
            now_ms=now_ms,
            stale_after_ms=stale_after_ms,
        )
        for scope in scopes
        for rule in config.rules_for(scope)
    ]


def _refuse_on_hard(judgements: list[Judgement], now_ms: int) -> None:
    hard = [j for j in judgements if j.rule.enforcement == "hard"]
    spent = [j for j in hard if j.verdict == "exceeded"]
    if spent:
        # Admission needs every hard scope to have room: wait for the last one to free.
        frees = [j.frees_at_ms for j in spent]
        latest = None if None in frees else max(f for f in frees if f is not None)
        first = spent[0]
        raise BudgetExceeded(
            f"Budget exceeded: {'; '.join(_describe(j) for j in spent)}.",
            retry_after_s=_retry_after_s(latest, now_ms),
            scope=first.rule.scope,
            window=first.rule.window,
        )
    unknown = [j for j in hard if j.verdict == "unknown"]
    if unknown:
        names = ", ".join(f"{j.rule.scope} ({j.rule.window})" for j in unknown)
        raise ServiceUnavailable(
            f"Budget state unavailable for {names}: hard budgets fail closed. Retry shortly.",
            retry_after_s=UNAVAILABLE_RETRY_AFTER_S,
        )


def _warning(j: Judgement) -> str:
    if j.verdict == "unknown" and j.rule.enforcement == "soft":
        return f"budget state unavailable for {j.rule.scope} ({j.rule.window})"
    if j.verdict == "exceeded" and j.rule.enforcement == "soft":
        return f"{_describe(j)} (soft limit exceeded)"
    if j.verdict == "warn":
        return f"{_describe(j)} (over {WARN_PCT}%)"
    return ""


def _describe_downgrade(rule: BudgetRule) -> str:
    return f"{rule.scope} {rule.window} budget of {format_usd(rule.limit_nano_usd)} reached"
