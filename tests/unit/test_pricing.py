"""workers/cost/pricing.py and usage.py: what a provider call costs, exactly."""

from __future__ import annotations

from decimal import Decimal
from typing import Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.records import Attempt, Mode, Usage
from workers.cost.catalogue import load_catalogue
from workers.cost.pricing import Price, compute_cost, from_nano_usd, per_token, to_nano_usd
from workers.cost.usage import occurred_at_ms, price_attempt, usage_id

# Prices per million tokens, as in the catalogue (numbers from the reference facts).
GPT_4O_MINI: Final = Price.per_million(
    input="0.15", output="0.6", cache_read="0.075", batch_input="0.075", batch_output="0.3"
)
CLAUDE_SONNET: Final = Price.per_million(
    input="3", output="15", cache_read="0.3", cache_write="3.75", batch_input="1.5",
    batch_output="7.5",
)  # fmt: skip
O3: Final = Price.per_million(input="2", output="8", cache_read="0.5")
GEMINI_PRO: Final = Price.per_million(
    input="1.25", output="10", cache_read="0.125", batch_input="0.625", batch_output="5",
    input_long="2.5", output_long="15",
)  # fmt: skip
REASONING_APART: Final = Price.per_million(input="1", output="2", reasoning="3")
HALF_NANO: Final = Price.per_million(input="0.0005", output="0")  # 0.5 nano-USD per token


def usage(
    prompt: int = 0, completion: int = 0, cached: int = 0, reasoning: int = 0, cache_write: int = 0
) -> Usage:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": cached,
        "reasoning_tokens": reasoning,
        "cache_write_tokens": cache_write,
    }


# (name, usage, price, batch, expected nano-USD) - every expected figure worked by hand.
CASES: Final = [
    ("zero usage", usage(), GPT_4O_MINI, False, 0),
    ("zero usage, batch", usage(), GEMINI_PRO, True, 0),
    # 1000 x 0.15 + 500 x 0.6 = 150 + 300 micro-USD
    ("openai plain", usage(1000, 500), GPT_4O_MINI, False, 450_000),
    # 200 x 0.15 + 800 x 0.075 (cached) + 500 x 0.6 = 30 + 60 + 300
    ("openai cached tokens", usage(1000, 500, cached=800), GPT_4O_MINI, False, 390_000),
    ("openai all cached", usage(1000, 0, cached=1000), GPT_4O_MINI, False, 75_000),
    # the same call, streamed: the usage of the final chunk is priced like any other
    ("openai streamed usage", usage(1000, 500, cached=800), GPT_4O_MINI, False, 390_000),
    # 1000 x 3 + 6000 x 0.3 (read) + 3000 x 3.75 (write) + 1000 x 15
    (
        "anthropic cache read + write",
        usage(10_000, 1000, cached=6000, cache_write=3000),
        CLAUDE_SONNET,
        False,
        31_050_000,
    ),
    # 2000 x 3 + 2000 x 3.75 (write only) + 0 output
    ("anthropic cache write", usage(4000, 0, cache_write=2000), CLAUDE_SONNET, False, 13_500_000),
    # reasoning is part of completion, at the output rate: 100 x 2 + 1000 x 8
    ("reasoning at output rate", usage(100, 1000, reasoning=800), O3, False, 8_200_000),
    # 60 x 2 + 40 x 3
    ("reasoning priced apart", usage(0, 100, reasoning=40), REASONING_APART, False, 240_000),
    # batch: 1000 x 0.075 + 500 x 0.3
    ("openai batch", usage(1000, 500), GPT_4O_MINI, True, 225_000),
    # batch + cached: cached tokens keep the cache-read rate: 200 x 0.075 + 800 x 0.075 + 150
    ("openai batch cached", usage(1000, 500, cached=800), GPT_4O_MINI, True, 225_000),
    ("batch without a batch price", usage(100, 1000, reasoning=800), O3, True, 8_200_000),
    ("anthropic batch", usage(1000, 1000), CLAUDE_SONNET, True, 9_000_000),
    # exactly 200k is NOT long context: 200000 x 1.25 + 1000 x 10
    ("long context boundary", usage(200_000, 1000), GEMINI_PRO, False, 260_000_000),
    # above 200k the whole call takes the tier: 200001 x 2.5 + 1000 x 15
    ("long context", usage(200_001, 1000), GEMINI_PRO, False, 515_002_500),
    # long + cached: 100000 x 2.5 + 200000 x 0.125 + 1000 x 15
    ("long context cached", usage(300_000, 1000, cached=200_000), GEMINI_PRO, False, 290_000_000),
    # long + batch: the tier at the batch discount: 300000 x 1.25 + 1000 x 7.5
    ("long context batch", usage(300_000, 1000), GEMINI_PRO, True, 382_500_000),
    ("long context, no tier", usage(300_000, 0), GPT_4O_MINI, False, 45_000_000),
    # rounding half up, once per call
    ("half a nano rounds up", usage(1), HALF_NANO, False, 1),
    ("1.5 nano rounds up", usage(3), HALF_NANO, False, 2),
    ("2.5 nano rounds up", usage(5), HALF_NANO, False, 3),
    # inconsistent counts are clamped, never negative
    ("cached > prompt", usage(100, 0, cached=500), GPT_4O_MINI, False, 7_500),
    ("negative counts", usage(-5, -5, cached=-1, reasoning=-1), GPT_4O_MINI, False, 0),
    ("reasoning > completion", usage(0, 10, reasoning=50), REASONING_APART, False, 30_000),
]


@pytest.mark.parametrize(
    ("tokens", "price", "batch", "expected_nano_usd"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_cost_table(tokens: Usage, price: Price, batch: bool, expected_nano_usd: int) -> None:
    cost = compute_cost(tokens, price, batch=batch)
    assert isinstance(cost, Decimal)
    assert to_nano_usd(cost) == expected_nano_usd


def test_prices_are_normalised_once_to_exact_per_token_decimals() -> None:
    assert GPT_4O_MINI.input == Decimal("0.00000015")
    assert GEMINI_PRO.output_long == Decimal("0.000015")
    assert per_token("3.75") == Decimal("0.00000375")
    assert Price.per_million(input="1", output="2").cache_read is None


@pytest.mark.parametrize("bad", ["-1", "NaN", "Infinity"])
def test_a_price_must_be_finite_and_not_negative(bad: str) -> None:
    with pytest.raises(ValueError, match="finite, non-negative"):
        per_token(bad)


@pytest.mark.parametrize(
    ("usd", "nano"),
    [
        (Decimal(0), 0),
        (Decimal("0.0000000004999"), 0),
        (Decimal("0.0000000005"), 1),  # half up, not to even
        (Decimal("0.0000000025"), 3),
        (Decimal("0.0000000035"), 4),
        (Decimal("0.00045"), 450_000),
        (Decimal("1"), 1_000_000_000),
        (Decimal("123456.7890123456"), 123_456_789_012_346),
    ],
)
def test_to_nano_usd_rounds_half_up(usd: Decimal, nano: int) -> None:
    assert to_nano_usd(usd) == nano
    assert isinstance(to_nano_usd(usd), int)


def test_nano_usd_round_trips() -> None:
    assert from_nano_usd(450_000) == Decimal("0.00045")
    assert to_nano_usd(from_nano_usd(987_654_321)) == 987_654_321


# --- properties -------------------------------------------------------------------------

_rates = st.decimals(min_value=0, max_value=100, places=3, allow_nan=False, allow_infinity=False)
_fractions = st.decimals(min_value=0, max_value=1, places=2)


@st.composite
def prices(draw: st.DrawFn) -> Price:
    """Any price with the shape real ones have: discounts are <= 1x, tiers >= 1x."""
    base_in, base_out = draw(_rates), draw(_rates)
    batch_in = base_in * draw(_fractions)
    return Price.per_million(
        input=base_in,
        output=base_out,
        cache_read=draw(st.none() | st.just(batch_in * draw(_fractions))),
        cache_write=draw(st.none() | _rates),
        reasoning=draw(st.none() | _rates),
        batch_input=draw(st.none() | st.just(batch_in)),
        batch_output=draw(st.none() | st.just(base_out * draw(_fractions))),
        input_long=draw(st.none() | st.just(base_in * (1 + draw(_fractions)))),
        output_long=draw(st.none() | st.just(base_out * (1 + draw(_fractions)))),
    )


@st.composite
def usages(draw: st.DrawFn) -> Usage:
    prompt = draw(st.integers(0, 1_000_000))
    cached = draw(st.integers(0, prompt))
    completion = draw(st.integers(0, 200_000))
    return usage(
        prompt,
        completion,
        cached=cached,
        cache_write=draw(st.integers(0, prompt - cached)),
        reasoning=draw(st.integers(0, completion)),
    )


_more = st.integers(1, 300_000)


@given(usages(), prices(), st.booleans())
def test_never_negative(tokens: Usage, price: Price, batch: bool) -> None:
    assert compute_cost(tokens, price, batch=batch) >= 0


@given(usages(), prices(), st.booleans(), _more)
def test_monotone_in_prompt_tokens(tokens: Usage, price: Price, batch: bool, k: int) -> None:
    more = {**tokens, "prompt_tokens": tokens["prompt_tokens"] + k}
    assert compute_cost(more, price, batch=batch) >= compute_cost(tokens, price, batch=batch)  # type: ignore[arg-type]  # a Usage with one field changed


@given(usages(), prices(), st.booleans(), _more)
def test_monotone_in_completion_tokens(tokens: Usage, price: Price, batch: bool, k: int) -> None:
    more = {**tokens, "completion_tokens": tokens["completion_tokens"] + k}
    assert compute_cost(more, price, batch=batch) >= compute_cost(tokens, price, batch=batch)  # type: ignore[arg-type]  # as above


@given(usages(), prices(), st.booleans(), _more, st.sampled_from(["cached", "cache_write"]))
def test_monotone_in_cached_and_cache_write_tokens(
    tokens: Usage, price: Price, batch: bool, k: int, kind: str
) -> None:
    """More cache reads (or writes) on top of the same prompt never cost less."""
    field = "cached_tokens" if kind == "cached" else "cache_write_tokens"
    more = {**tokens, "prompt_tokens": tokens["prompt_tokens"] + k, field: tokens[field] + k}  # type: ignore[literal-required]  # field is one of two names
    assert compute_cost(more, price, batch=batch) >= compute_cost(tokens, price, batch=batch)  # type: ignore[arg-type]  # as above


@given(usages(), prices(), st.booleans(), _more)
def test_monotone_in_reasoning_tokens(tokens: Usage, price: Price, batch: bool, k: int) -> None:
    more = {
        **tokens,
        "completion_tokens": tokens["completion_tokens"] + k,
        "reasoning_tokens": tokens["reasoning_tokens"] + k,
    }
    assert compute_cost(more, price, batch=batch) >= compute_cost(tokens, price, batch=batch)  # type: ignore[arg-type]  # as above


@given(usages(), prices(), st.booleans())
def test_cached_tokens_never_cost_more_than_uncached(
    tokens: Usage, price: Price, batch: bool
) -> None:
    uncached = {**tokens, "cached_tokens": 0}
    assert compute_cost(tokens, price, batch=batch) <= compute_cost(uncached, price, batch=batch)  # type: ignore[arg-type]  # as above


@given(usages(), prices())
def test_batch_never_costs_more_than_standard(tokens: Usage, price: Price) -> None:
    assert compute_cost(tokens, price, batch=True) <= compute_cost(tokens, price, batch=False)


@given(usages(), prices(), st.booleans())
def test_cost_is_exact_at_nano_usd_after_one_rounding(
    tokens: Usage, price: Price, batch: bool
) -> None:
    cost = compute_cost(tokens, price, batch=batch)
    assert abs(Decimal(to_nano_usd(cost)) - cost * 1_000_000_000) <= Decimal("0.5")


# --- attempt -> usage record --------------------------------------------------------------


def attempt(
    model: str = "mock-fast", mode: Mode = "sync", prompt: int = 1000, completion: int = 500
) -> Attempt:
    return {
        "request_id": "req_1",
        "attempt_id": "exec1.2",
        "attempt": 2,
        "team_id": "acme",
        "key_id": "key_9",
        "mode": mode,
        "deployment": "mock",
        "provider": "openai",
        "model": model,
        "started_at_ms": 1_000_000,
        "latency_ms": 12.6,
        "outcome": "ok",
        "http_status": 200,
        "error_type": None,
        "error_code": None,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "router_id": "r1",
    }


CATALOGUE: Final = load_catalogue()


def test_an_attempt_becomes_a_priced_usage_record() -> None:
    record = price_attempt(attempt(), CATALOGUE, priced_at_ms=2_000_000)
    assert record is not None
    assert record["usage_id"] == "req_1:exec1.2" == usage_id(attempt())
    assert record["cost_nano_usd"] == 2_000_000  # mock-*: 1000 x $1/M + 500 x $2/M
    assert record["cost_status"] == "priced"
    assert record["pricing_version"] == CATALOGUE.version
    assert record["occurred_at_ms"] == 1_000_013 == occurred_at_ms(attempt())
    assert record["priced_at_ms"] == 2_000_000
    assert (record["team_id"], record["key_id"], record["model"]) == ("acme", "key_9", "mock-fast")


def test_batch_mode_attempts_use_batch_prices() -> None:
    record = price_attempt(attempt(mode="batch"), CATALOGUE, priced_at_ms=0)
    assert record is not None
    assert record["cost_nano_usd"] == 1_000_000  # 1000 x $0.5/M + 500 x $1/M


def test_a_model_without_a_price_is_unpriced_never_free() -> None:
    record = price_attempt(attempt(model="no-such-model"), CATALOGUE, priced_at_ms=0)
    assert record is not None
    assert record["cost_status"] == "unpriced"
    assert record["cost_nano_usd"] == 0


@pytest.mark.parametrize(("prompt", "completion"), [(0, 0), (-1, 0)])
def test_a_call_without_tokens_is_not_usage(prompt: int, completion: int) -> None:
    assert (
        price_attempt(attempt(prompt=prompt, completion=completion), CATALOGUE, priced_at_ms=0)
        is None
    )


def test_output_only_calls_are_usage() -> None:
    assert price_attempt(attempt(prompt=0, completion=3), CATALOGUE, priced_at_ms=0) is not None
