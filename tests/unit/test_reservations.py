"""workers/budget/reservations.py (the router's ledger, worst-case pricing) and ownership.py."""

from __future__ import annotations

import contextlib
from decimal import Decimal
from typing import Any, Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.errors import BudgetExceeded, ServiceUnavailable
from schemas.records import BudgetState, Usage
from workers.budget.config import BudgetRule, BudgetsConfig, parse_budgets
from workers.budget.ownership import Ownership
from workers.budget.reservations import (
    RESERVATION_RETRY_AFTER_S,
    ReservationLedger,
    actual_nano_usd,
    ceil_nano_usd,
    estimate_prompt_tokens,
    output_tokens_bound,
    reserved_rules,
    state_spent,
    unpriced_refusal,
    worst_case_nano_usd,
)
from workers.cost.pricing import Price, compute_cost, to_nano_usd

NOW: Final = 1_800_000_000_000
USD: Final = 1_000_000_000


def config(*lines: str) -> BudgetsConfig:
    return parse_budgets("\n".join(f"- {{{line}}}" for line in lines))


TEAM_1H: Final = config('scope: "team:acme", window: 1h, limit_usd: "1.00"')
RULE: Final = TEAM_1H.budgets[0]
KEY: Final = RULE.state_key


def spent(amount: int = 0, rule: BudgetRule = RULE) -> dict[str, int]:
    return {rule.state_key: amount}


# --- worst-case and actual cost --------------------------------------------------------


@pytest.mark.parametrize(
    ("body_bytes", "tokens"), [(0, 0), (1, 1), (3, 1), (4, 2), (299, 100), (300, 100)]
)
def test_prompt_estimate_is_bytes_over_three_rounded_up(body_bytes: int, tokens: int) -> None:
    assert estimate_prompt_tokens(b"x" * body_bytes) == tokens


def test_prompt_estimate_counts_utf8_bytes_not_characters() -> None:
    assert estimate_prompt_tokens("€€€".encode()) == 3  # 9 bytes


PRICE: Final = Price.per_million(input="1", output="2", max_output_tokens=1_000)


@pytest.mark.parametrize(
    ("request_fields", "price", "tokens"),
    [
        ({"max_tokens": 100}, PRICE, 100),
        ({"max_completion_tokens": 50, "max_tokens": 100}, PRICE, 50),
        ({"max_tokens": 5_000}, PRICE, 1_000),  # capped by the model's max output
        ({}, PRICE, 1_000),  # the catalogue's max output
        ({}, Price.per_million(input="1", output="2"), 4_096),  # the configured default
        ({}, None, 4_096),
        ({"max_tokens": 100, "n": 3}, PRICE, 300),  # every choice can run to max_tokens
        ({"max_tokens": 0}, PRICE, 1_000),  # not a usable bound: the model's max
        ({"max_tokens": "5"}, None, 4_096),
    ],
)
def test_output_bound(request_fields: dict[str, Any], price: Price | None, tokens: int) -> None:
    assert output_tokens_bound(request_fields, price) == tokens


def test_output_bound_default_is_configurable() -> None:
    assert output_tokens_bound({}, None, 256) == 256


def test_worst_case_is_input_plus_output_at_list_price_rounded_up() -> None:
    # 1 prompt token at $1/M = 1,000 nano; 1 output token at $2/M = 2,000 nano
    assert worst_case_nano_usd(PRICE, 1, 1) == 3_000
    odd = Price.per_million(input="0.0000001", output="0")  # 0.1 nano-USD per token
    assert worst_case_nano_usd(odd, 1, 0) == 1  # never short by a fraction
    assert ceil_nano_usd(Decimal("0.0000000001")) == 1
    assert ceil_nano_usd(Decimal(0)) == 0


def test_worst_case_takes_the_dearer_of_cache_write_and_reasoning_rates() -> None:
    dear = Price.per_million(input="1", output="2", cache_write="1.25", reasoning="3")
    assert worst_case_nano_usd(dear, 1_000, 1_000) == 1_250_000 + 3_000_000
    cheap = Price.per_million(input="1", output="2", cache_write="0.5", reasoning="1")
    assert worst_case_nano_usd(cheap, 1_000, 1_000) == 1_000_000 + 2_000_000


def test_worst_case_applies_batch_price_and_long_context_tier() -> None:
    price = Price.per_million(
        input="1", output="2", batch_input="0.5", batch_output="1", input_long="2"
    )
    assert worst_case_nano_usd(price, 1_000, 0, batch=True) == 500_000
    assert worst_case_nano_usd(price, 300_000, 0) == 600_000_000  # long-context rate


usage_st = st.builds(
    lambda p, c, cached, cw, r: {
        "prompt_tokens": p,
        "completion_tokens": c,
        "cached_tokens": min(cached, p),
        "cache_write_tokens": min(cw, p - min(cached, p)),
        "reasoning_tokens": min(r, c),
    },
    st.integers(0, 300_000),
    st.integers(0, 50_000),
    st.integers(0, 300_000),
    st.integers(0, 300_000),
    st.integers(0, 50_000),
)
prices_st = st.builds(
    lambda i, o, cr, cw, r: Price.per_million(
        input=i, output=o, cache_read=cr, cache_write=cw, reasoning=r, input_long=i * 2
    ),
    *(st.decimals(0, 100, places=3) for _ in range(5)),
)


@settings(max_examples=150, deadline=None)
@given(usage=usage_st, price=prices_st, batch=st.booleans())
def test_worst_case_bounds_every_usage_within_the_token_bounds(
    usage: Usage, price: Price, batch: bool
) -> None:
    worst = worst_case_nano_usd(
        price, usage["prompt_tokens"], usage["completion_tokens"], batch=batch
    )
    assert actual_nano_usd(usage, price, batch=batch) <= worst


def test_actual_cost_is_what_the_cost_processor_bills() -> None:
    usage: Usage = {
        "prompt_tokens": 1_000,
        "completion_tokens": 500,
        "cached_tokens": 200,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
    }
    price = Price.per_million(input="1", output="2", cache_read="0.5")
    assert actual_nano_usd(usage, price) == to_nano_usd(compute_cost(usage, price)) == 1_900_000
    assert actual_nano_usd(usage, None) == 0  # unpriced: never a made-up price


def test_unpriced_refusal_names_the_model_and_the_scope() -> None:
    refusal = unpriced_refusal("secret-model", [RULE])
    assert refusal.code == "budget_exceeded"
    assert refusal.http_status == 429
    assert refusal.scope == "team:acme"
    assert "secret-model" in refusal.message
    assert "fail closed" in refusal.message


# --- which rules ---------------------------------------------------------------------------


def test_reserved_rules_are_the_hard_team_owned_ones() -> None:
    budgets = config(
        'scope: "team:acme", window: 1h, limit_usd: 1',
        'scope: "team:acme", window: 24h, limit_usd: 5, enforcement: soft',
        'scope: "key:k1", window: 1h, limit_usd: 1',
        'scope: "model:acme/gpt", window: mtd, limit_usd: 9',
        'scope: "model:acme/big", window: mtd, limit_usd: 9, enforcement: downgrade, '
        "downgrade_to: gpt",
        'scope: "team:other", window: 1h, limit_usd: 1',
        "scope: global, window: 1h, limit_usd: 100",
    )
    got = reserved_rules(budgets, "acme", "k1", "gpt")
    assert [r.state_key for r in got] == ["team:acme:1h", "key:k1:1h", "model:acme/gpt:mtd"]
    assert reserved_rules(budgets, "acme", None, "big") == (budgets.budgets[0],)
    assert reserved_rules(budgets, "nobody", None, "gpt") == ()


# --- spend from state ----------------------------------------------------------------------


def state(spent_nano: int, *, limit: int = USD, updated_at: int = NOW - 500) -> BudgetState:
    return {
        "scope_type": "team",
        "scope_id": "acme",
        "window": "1h",
        "spent_nano_usd": spent_nano,
        "limit_nano_usd": limit,
        "remaining_nano_usd": max(0, limit - spent_nano),
        "status": "exceeded" if spent_nano >= limit else "ok",
        "enforcement": "hard",
        "frees_at_ms": NOW + 60_000 if spent_nano >= limit else None,
        "watermark_ms": NOW - 1_000,
        "updated_at_ms": updated_at,
    }


def test_state_spent_reads_each_rules_state() -> None:
    got = state_spent(
        [RULE], {KEY: state(123)}, owner_updated_ms=NOW, now_ms=NOW, stale_after_ms=10_000
    )
    assert got == {KEY: 123}


def test_state_spent_is_zero_for_a_missing_state_when_the_owner_is_fresh() -> None:
    got = state_spent([RULE], {}, owner_updated_ms=NOW - 1, now_ms=NOW, stale_after_ms=10_000)
    assert got == {KEY: 0}


def test_state_spent_fails_closed_on_unknown_state() -> None:
    with pytest.raises(ServiceUnavailable):
        state_spent([RULE], {}, owner_updated_ms=None, now_ms=NOW, stale_after_ms=10_000)
    old = state(0, updated_at=NOW - 60_000)
    with pytest.raises(ServiceUnavailable):
        state_spent(
            [RULE], {KEY: old}, owner_updated_ms=NOW - 60_000, now_ms=NOW, stale_after_ms=10_000
        )


def test_state_spent_refuses_an_exceeded_budget_with_retry_after() -> None:
    with pytest.raises(BudgetExceeded) as refused:
        state_spent(
            [RULE], {KEY: state(USD)}, owner_updated_ms=NOW, now_ms=NOW, stale_after_ms=10_000
        )
    assert refused.value.scope == "team:acme"
    assert refused.value.headers() == {"retry-after": "60"}


# --- the ledger ------------------------------------------------------------------------------


def test_reserve_holds_the_worst_case_and_settle_turns_it_into_pending() -> None:
    ledger = ReservationLedger(pending_hold_ms=5_000)
    hold = ledger.try_reserve([RULE], 300_000_000, spent(), NOW)
    assert ledger.reserved_total() == 300_000_000
    assert ledger.reserved_for(KEY) == 300_000_000
    hold.settle(100_000_000, NOW + 10)
    assert ledger.reserved_total() == 0
    assert ledger.holds() == 0
    assert ledger.pending_for(KEY, NOW + 10) == 100_000_000
    assert ledger.pending_for(KEY, NOW + 10 + 4_999) == 100_000_000
    assert ledger.pending_for(KEY, NOW + 10 + 5_000) == 0  # the state shows it by now


@pytest.mark.parametrize(
    ("state_spent_nano", "pending", "held", "worst", "admitted"),
    [
        (0, 0, 0, USD, True),  # exactly the limit fits
        (0, 0, 0, USD + 1, False),
        (600_000_000, 0, 0, 400_000_000, True),
        (600_000_000, 0, 0, 400_000_001, False),
        (300_000_000, 300_000_000, 0, 400_000_000, True),
        (300_000_000, 300_000_001, 0, 400_000_000, False),
        (200_000_000, 200_000_000, 200_000_000, 400_000_000, True),
        (200_000_000, 200_000_000, 200_000_001, 400_000_000, False),
        (USD, 0, 0, 0, False),  # spent: even a free call is refused
    ],
)
def test_admission_sums_state_pending_reserved_and_worst(
    state_spent_nano: int, pending: int, held: int, worst: int, admitted: bool
) -> None:
    ledger = ReservationLedger(pending_hold_ms=5_000)
    if pending:
        ledger.try_reserve([RULE], pending, spent(), NOW).settle(pending, NOW)
    if held:
        ledger.try_reserve([RULE], held, spent(), NOW)
    if admitted:
        ledger.try_reserve([RULE], worst, spent(state_spent_nano), NOW)
        assert ledger.reserved_for(KEY) == held + worst
    else:
        with pytest.raises(BudgetExceeded) as refused:
            ledger.try_reserve([RULE], worst, spent(state_spent_nano), NOW)
        assert refused.value.code == "budget_exceeded"
        assert refused.value.scope == "team:acme"
        assert refused.value.window == "1h"
        assert ledger.reserved_for(KEY) == held  # a refusal holds nothing
        assert ledger.refused == 1


def test_refusal_due_to_calls_in_flight_says_retry_soon() -> None:
    ledger = ReservationLedger()
    ledger.try_reserve([RULE], 900_000_000, spent(), NOW)
    with pytest.raises(BudgetExceeded) as in_flight:
        ledger.try_reserve([RULE], 200_000_000, spent(), NOW)
    assert in_flight.value.retry_after_s == RESERVATION_RETRY_AFTER_S
    assert "held by calls in flight" in in_flight.value.message
    with pytest.raises(BudgetExceeded) as spent_out:
        ledger.try_reserve([RULE], 200_000_000, spent(900_000_000), NOW)
    assert spent_out.value.retry_after_s is None  # only the window frees it


def test_unknown_state_fails_closed() -> None:
    with pytest.raises(ServiceUnavailable):
        ReservationLedger().try_reserve([RULE], 1, {}, NOW)


def test_every_rule_must_have_room_and_holds_count_against_each() -> None:
    two = config(
        'scope: "team:acme", window: 1h, limit_usd: "1.00"',
        'scope: "key:k1", window: 24h, limit_usd: "0.50"',
    )
    team, key = two.budgets
    ledger = ReservationLedger()
    both = {team.state_key: 0, key.state_key: 0}
    ledger.try_reserve([team, key], 400_000_000, both, NOW)
    with pytest.raises(BudgetExceeded) as refused:
        ledger.try_reserve([team, key], 200_000_000, both, NOW)
    assert refused.value.scope == "key:k1"
    assert ledger.reserved_for(team.state_key) == 400_000_000
    assert ledger.reserved_total() == 400_000_000  # one hold, counted once


def test_release_and_context_manager_never_leak_a_hold() -> None:
    ledger = ReservationLedger()
    with ledger.try_reserve([RULE], 100, spent(), NOW) as hold:
        assert hold.open
    assert not hold.open
    assert ledger.reserved_total() == 0
    with pytest.raises(RuntimeError), ledger.try_reserve([RULE], 100, spent(), NOW):
        raise RuntimeError("the provider call failed")
    assert ledger.reserved_total() == 0
    assert ledger.pending_for(KEY, NOW) == 0  # released: no spend recorded


def test_settle_and_release_are_idempotent_and_the_first_wins() -> None:
    ledger = ReservationLedger()
    hold = ledger.try_reserve([RULE], 500, spent(), NOW)
    hold.settle(300, NOW)
    hold.settle(300, NOW)
    hold.release()
    assert ledger.pending_for(KEY, NOW) == 300
    other = ledger.try_reserve([RULE], 500, spent(), NOW)
    other.release()
    other.settle(999, NOW)
    assert ledger.pending_for(KEY, NOW) == 300
    assert ledger.reserved_total() == 0


@settings(max_examples=100, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["reserve", "settle", "release"]),
            st.integers(0, 400_000_000),
            st.integers(0, 100),
        ),
        max_size=60,
    )
)
def test_random_interleavings_never_admit_past_the_limit_and_leave_nothing_held(
    ops: list[tuple[str, int, int]],
) -> None:
    """Whatever the order of reserves and settlements (actual <= worst), the spend that the
    ledger admitted never exceeds the limit, and closing every hold leaves 0 reserved."""
    ledger = ReservationLedger(pending_hold_ms=10**9)  # the state never catches up here
    open_holds: list[Any] = []
    settled = 0
    for op, amount, pick in ops:
        if op == "reserve":
            with contextlib.suppress(BudgetExceeded):  # refused: nothing held
                open_holds.append(ledger.try_reserve([RULE], amount, spent(), NOW))
        elif open_holds:
            hold = open_holds.pop(pick % len(open_holds))
            if op == "settle":
                actual = hold.amount_nano_usd * pick // 100
                hold.settle(actual, NOW)
                settled += actual
            else:
                hold.release()
        assert settled + ledger.reserved_total() <= RULE.limit_nano_usd
    for hold in open_holds:
        hold.release()
    assert ledger.reserved_total() == 0
    assert ledger.holds() == 0
    assert ledger.pending_for(KEY, NOW) == settled


# --- ownership -------------------------------------------------------------------------------


OWNED: Final = config(
    'scope: "team:acme", window: 1h, limit_usd: 1',
    'scope: "team:soft", window: 1h, limit_usd: 1, enforcement: soft',
    'scope: "key:k9", window: 1h, limit_usd: 1',
    'scope: "model:beta/gpt", window: 1h, limit_usd: 1',
    "scope: global, window: 1h, limit_usd: 1",
)


@pytest.mark.parametrize(
    ("team", "key", "owned"),
    [
        ("acme", None, True),  # team hard budget
        ("beta", None, True),  # a model-within-team hard budget
        ("gamma", "k9", True),  # its key has a hard budget
        ("gamma", "k1", False),  # only global applies: not partition-owned
        ("soft", None, False),  # soft budgets never refuse: no ownership needed
    ],
)
def test_ownership_keys_owned_teams_by_team(team: str, key: str | None, owned: bool) -> None:
    ownership = Ownership(OWNED)
    assert ownership.owned(team, key) is owned
    assert ownership.partition_key(team, key, "req_1") == (team if owned else "req_1").encode()


def test_ownership_without_budgets_keys_by_request_id() -> None:
    assert Ownership(BudgetsConfig()).partition_key("acme", "k9", "req_1") == b"req_1"
