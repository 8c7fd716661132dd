"""workers/budget/enforcement.py (admission) and freshness.py (what "stale" means)."""

from __future__ import annotations

from typing import Final

import pytest

from schemas.errors import BudgetExceeded, ServiceUnavailable
from schemas.records import BudgetState, Enforcement
from workers.budget.config import BudgetsConfig, parse_budgets
from workers.budget.enforcement import Admission, admit, scopes_for
from workers.budget.freshness import Freshness

NOW: Final = 1_800_000_000_000
STALE_MS: Final = 10_000
LIMIT: Final = 5_000_000_000  # $5


def config(*lines: str) -> BudgetsConfig:
    return parse_budgets("\n".join(f"- {{{line}}}" for line in lines))


HARD_TEAM: Final = config('scope: "team:acme", window: 24h, limit_usd: 5')


def state(
    key: str = "team:acme:24h",
    spent: int = 0,
    *,
    limit: int | None = LIMIT,
    status: str | None = None,
    enforcement: Enforcement = "hard",
    frees_at: int | None = None,
    updated_at: int = NOW - 1_000,
) -> tuple[str, BudgetState]:
    scope_type, rest = key.split(":", 1)
    scope_id, window = rest.rsplit(":", 1)
    if status is None:
        status = "exceeded" if limit is not None and spent >= limit else "ok"
    return key, {
        "scope_type": scope_type,  # type: ignore[typeddict-item]  # built from a valid key
        "scope_id": scope_id,
        "window": window,
        "spent_nano_usd": spent,
        "limit_nano_usd": limit,
        "remaining_nano_usd": None if limit is None else max(0, limit - spent),
        "status": status,  # type: ignore[typeddict-item]  # as above
        "enforcement": enforcement,
        "frees_at_ms": frees_at,
        "watermark_ms": NOW - 2_000,
        "updated_at_ms": updated_at,
    }


def check(
    budgets: BudgetsConfig,
    *states: tuple[str, BudgetState],
    heartbeat: int | None = NOW - 500,
    key_id: str | None = "key_1",
    model: str = "gpt-4o",
) -> Admission:
    return admit(
        team_id="acme",
        key_id=key_id,
        model=model,
        config=budgets,
        states=dict(states),
        owner_updated_ms=heartbeat,
        now_ms=NOW,
        stale_after_ms=STALE_MS,
    )


def test_scopes_of_a_request() -> None:
    assert scopes_for("acme", "k", "gpt-4o") == (
        "team:acme",
        "key:k",
        "model:acme/gpt-4o",
        "global",
    )
    assert scopes_for("acme", None, "m") == ("team:acme", "model:acme/m", "global")


def test_without_budgets_everything_is_admitted() -> None:
    assert check(BudgetsConfig(), heartbeat=None) == Admission("gpt-4o")


@pytest.mark.parametrize(
    ("spent", "expected_warnings"),
    [(0, 0), (LIMIT * 79 // 100, 0), (LIMIT * 80 // 100, 1), (LIMIT - 1, 1)],
)
def test_hard_budget_under_its_limit_admits(spent: int, expected_warnings: int) -> None:
    admission = check(HARD_TEAM, state(spent=spent))
    assert admission.model == "gpt-4o"
    assert len(admission.warnings) == expected_warnings


def test_hard_budget_spent_refuses_with_budget_exceeded() -> None:
    frees = NOW + 90_500
    with pytest.raises(BudgetExceeded) as caught:
        check(HARD_TEAM, state(spent=LIMIT + 1, frees_at=frees))
    error = caught.value
    assert error.http_status == 429
    assert (error.error_type, error.code) == ("budget_exceeded", "budget_exceeded")
    assert (error.scope, error.window) == ("team:acme", "24h")
    assert "team:acme" in error.message
    assert "$5.00" in error.message
    assert error.retry_after_s == 91.0
    assert error.headers() == {"retry-after": "91"}


def test_spend_that_has_left_the_window_since_the_state_admits() -> None:
    assert check(HARD_TEAM, state(spent=LIMIT, frees_at=NOW - 1)).model == "gpt-4o"


def test_every_spent_hard_scope_is_named_and_retry_after_waits_for_the_last() -> None:
    budgets = config(
        'scope: "team:acme", window: 24h, limit_usd: 5',
        'scope: "key:key_1", window: 1h, limit_usd: 5',
    )
    with pytest.raises(BudgetExceeded) as caught:
        check(
            budgets,
            state(spent=LIMIT, frees_at=NOW + 10_000),
            state("key:key_1:1h", spent=LIMIT, frees_at=NOW + 60_000),
        )
    assert "team:acme" in caught.value.message
    assert "key:key_1" in caught.value.message
    assert caught.value.retry_after_s == 60.0


def test_the_key_scope_applies_only_to_requests_with_that_key() -> None:
    budgets = config('scope: "key:key_1", window: 1h, limit_usd: 5')
    spent = state("key:key_1:1h", spent=LIMIT)
    with pytest.raises(BudgetExceeded):
        check(budgets, spent)
    assert check(budgets, spent, key_id="key_2").model == "gpt-4o"
    assert check(budgets, spent, key_id=None).model == "gpt-4o"


# --- fail closed ----------------------------------------------------------------------------


def test_unknown_state_fails_hard_budgets_closed_with_503() -> None:
    with pytest.raises(ServiceUnavailable) as caught:
        check(HARD_TEAM, heartbeat=None)
    assert "team:acme (24h)" in caught.value.message
    assert "fail closed" in caught.value.message
    assert caught.value.headers() == {"retry-after": "5"}


def test_a_fresh_owner_vouches_for_a_scope_without_state() -> None:
    assert check(HARD_TEAM, heartbeat=NOW - STALE_MS).model == "gpt-4o"  # nothing spent yet


@pytest.mark.parametrize(
    ("updated_at", "heartbeat", "admitted"),
    [
        (NOW - STALE_MS, None, True),  # exactly at the bound: still fresh
        (NOW - STALE_MS - 1, None, False),
        (NOW - STALE_MS - 1, NOW - STALE_MS - 1, False),
        (NOW - 60_000, NOW - 1_000, True),  # old state, live owner: the state is an upper bound
    ],
)
def test_staleness_bound(updated_at: int, heartbeat: int | None, admitted: bool) -> None:
    stale = state(spent=1, updated_at=updated_at)
    if admitted:
        assert check(HARD_TEAM, stale, heartbeat=heartbeat).model == "gpt-4o"
    else:
        with pytest.raises(ServiceUnavailable):
            check(HARD_TEAM, stale, heartbeat=heartbeat)


def test_a_stale_state_with_a_live_owner_still_refuses_when_spent() -> None:
    with pytest.raises(BudgetExceeded):
        check(HARD_TEAM, state(spent=LIMIT, updated_at=NOW - 60_000))


def test_global_is_trusted_on_its_own_freshness_only() -> None:
    budgets = config("scope: global, window: 1h, limit_usd: 5")
    with pytest.raises(ServiceUnavailable):
        check(budgets)  # no global state: a partition heartbeat cannot vouch for global
    with pytest.raises(ServiceUnavailable):
        check(budgets, state("global:*:1h", spent=1, updated_at=NOW - STALE_MS - 1))
    assert check(budgets, state("global:*:1h", spent=1)).model == "gpt-4o"


def test_spent_beats_unknown_when_both_apply() -> None:
    budgets = config(
        "scope: global, window: 1h, limit_usd: 5", 'scope: "team:acme", window: 24h, limit_usd: 5'
    )
    with pytest.raises(BudgetExceeded):
        check(budgets, state(spent=LIMIT))


# --- soft, downgrade, config drift, unpriced -------------------------------------------------


def test_soft_budgets_admit_with_a_warning() -> None:
    budgets = config('scope: "team:acme", window: 24h, limit_usd: 5, enforcement: soft')
    spent = check(budgets, state(spent=LIMIT * 2, enforcement="soft"))
    assert spent.model == "gpt-4o"
    assert any("soft limit exceeded" in w for w in spent.warnings)
    unknown = check(budgets, heartbeat=None)
    assert unknown.model == "gpt-4o"
    assert any("unavailable" in w for w in unknown.warnings)


DOWNGRADE: Final = config(
    'scope: "model:acme/gpt-4o", window: 1h, limit_usd: 5, enforcement: downgrade, '
    "downgrade_to: gpt-4o-mini"
)


@pytest.mark.parametrize(
    "states",
    [
        [state("model:acme/gpt-4o:1h", spent=LIMIT, enforcement="downgrade")],
        [],  # unknown: run the cheaper model rather than refuse or overspend
    ],
    ids=["spent", "unknown"],
)
def test_downgrade_runs_the_cheaper_model(states: list[tuple[str, BudgetState]]) -> None:
    admission = check(DOWNGRADE, *states, heartbeat=None)
    assert (admission.model, admission.downgraded_from) == ("gpt-4o-mini", "gpt-4o")
    assert any("gpt-4o-mini instead of gpt-4o" in w for w in admission.warnings)


def test_downgrade_leaves_other_models_alone() -> None:
    admission = check(DOWNGRADE, state("model:acme/gpt-4o:1h", spent=LIMIT), model="gpt-4.1")
    assert admission == Admission("gpt-4.1")


def test_the_cheaper_model_meets_its_own_hard_budget() -> None:
    budgets = DOWNGRADE.model_copy(
        update={
            "budgets": (
                *DOWNGRADE.budgets,
                *config('scope: "model:acme/gpt-4o-mini", window: 1h, limit_usd: 1').budgets,
            )
        }
    )
    with pytest.raises(BudgetExceeded) as caught:
        check(
            budgets,
            state("model:acme/gpt-4o:1h", spent=LIMIT, enforcement="downgrade"),
            state("model:acme/gpt-4o-mini:1h", spent=LIMIT, limit=1_000_000_000),
        )
    assert caught.value.scope == "model:acme/gpt-4o-mini"


def test_a_state_computed_against_another_limit_is_rejudged_locally() -> None:
    # the processor still runs a $50 limit, this ingress already has $5
    assert check(HARD_TEAM, state(spent=LIMIT - 1, limit=LIMIT * 10)).model == "gpt-4o"
    with pytest.raises(BudgetExceeded) as caught:
        check(HARD_TEAM, state(spent=LIMIT, limit=LIMIT * 10, status="ok"))
    assert caught.value.retry_after_s is None  # the state's frees_at was for the other limit


def test_unpriced_usage_reported_exceeded_below_the_limit_is_honoured() -> None:
    with pytest.raises(BudgetExceeded):
        check(HARD_TEAM, state(spent=0, status="exceeded", frees_at=NOW + 5_000))


# --- freshness ------------------------------------------------------------------------------


def test_a_caught_up_partition_is_fresh_as_of_each_sample() -> None:
    fresh = Freshness()
    assert fresh.fresh_as_of(0) is None
    fresh.start_at(0, 10)
    fresh.observe_end(0, 10, now_ms=1_000)
    assert fresh.fresh_as_of(0) == 1_000
    fresh.observe_end(0, 10, now_ms=2_000)
    assert fresh.fresh_as_of(0) == 2_000


def test_a_lagging_partition_ages_until_processing_reaches_the_sample() -> None:
    fresh = Freshness()
    fresh.processed(0, 9)  # next offset 10
    fresh.observe_end(0, 10, now_ms=1_000)
    fresh.observe_end(0, 50, now_ms=2_000)  # 40 new records arrive
    fresh.observe_end(0, 50, now_ms=3_000)  # nothing newer; still behind
    fresh.observe_end(0, 90, now_ms=4_000)
    assert fresh.fresh_as_of(0) == 1_000
    fresh.processed(0, 30)
    assert fresh.fresh_as_of(0) == 1_000
    fresh.processed(0, 49)  # everything in the log at 3_000 is done
    assert fresh.fresh_as_of(0) == 3_000
    fresh.processed(0, 89)
    assert fresh.fresh_as_of(0) == 4_000


def test_partitions_are_independent_and_forgotten_on_revocation() -> None:
    fresh = Freshness()
    fresh.start_at(1, 0)
    fresh.observe_end(1, 0, now_ms=5)
    assert (fresh.fresh_as_of(1), fresh.fresh_as_of(2)) == (5, None)
    assert fresh.knows(1)
    fresh.forget(1)
    assert not fresh.knows(1)
    assert fresh.fresh_as_of(1) is None
