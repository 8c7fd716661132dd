"""What one provider call cost: a pure function of its token counts and a price.

Prices are stored per million tokens (`catalogue.json`) and normalised ONCE, at
load, into a `Price` holding Decimal USD per token; `compute_cost` then only
multiplies and adds Decimals, exactly. Rounding happens once, at the wire, in
`to_nano_usd`.

How tokens are charged (the `Usage` conventions of `schemas.records`: cached and
cache-write tokens are included in `prompt_tokens`, reasoning tokens in
`completion_tokens`):

=====================================  ==============================================
tokens                                 rate
=====================================  ==============================================
cached (prompt-cache reads)            `cache_read`, else the input rate
cache writes (Anthropic creation)      `cache_write`, else the input rate
the rest of the prompt                 input rate
reasoning                              `reasoning` if priced apart, else output rate
the rest of the completion             output rate
=====================================  ==============================================

The input/output rates are the long-context tier (`input_long`/`output_long`)
for the WHOLE call when `prompt_tokens > 200,000` and the price has a tier (as
the providers bill it), and the batch rates when `batch=True` and the price has
them. A long-context batch call gets the tier rate scaled by the batch discount
(`input_long * batch_input / input`): the reference data has no separate
batch-long-context price, and the providers' batch discount applies to every tier.

Inconsistent counts from an adapter (negative numbers, more cached than prompt
tokens) are clamped, never charged below zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Final

from schemas.records import Usage

LONG_CONTEXT_THRESHOLD_TOKENS: Final = 200_000
"""A call whose prompt is LONGER than this is billed at the long-context tier."""

NANO_PER_USD: Final = Decimal(1_000_000_000)
_ZERO: Final = Decimal(0)


@dataclass(frozen=True, slots=True)
class Price:
    """USD per token for one model; `None` means "no special rate": use the base one."""

    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    reasoning: Decimal | None = None
    batch_input: Decimal | None = None
    batch_output: Decimal | None = None
    input_long: Decimal | None = None
    output_long: Decimal | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None

    @classmethod
    def per_million(
        cls,
        *,
        input: Decimal | str,  # noqa: A002  # the catalogue's field name
        output: Decimal | str,
        cache_read: Decimal | str | None = None,
        cache_write: Decimal | str | None = None,
        reasoning: Decimal | str | None = None,
        batch_input: Decimal | str | None = None,
        batch_output: Decimal | str | None = None,
        input_long: Decimal | str | None = None,
        output_long: Decimal | str | None = None,
        max_input_tokens: int | None = None,
        max_output_tokens: int | None = None,
    ) -> Price:
        """Build from USD-per-million-token rates (the catalogue's unit), normalised once."""
        return cls(
            input=per_token(input),
            output=per_token(output),
            cache_read=_opt(cache_read),
            cache_write=_opt(cache_write),
            reasoning=_opt(reasoning),
            batch_input=_opt(batch_input),
            batch_output=_opt(batch_output),
            input_long=_opt(input_long),
            output_long=_opt(output_long),
            max_input_tokens=max_input_tokens,
            max_output_tokens=max_output_tokens,
        )


def per_token(per_million_usd: Decimal | str) -> Decimal:
    """USD per million tokens -> USD per token, exactly (a shift of the exponent)."""
    value = Decimal(per_million_usd)
    if not value.is_finite() or value < 0:
        raise ValueError(f"a price must be a finite, non-negative number: {per_million_usd}")
    return value.scaleb(-6)


def _opt(per_million_usd: Decimal | str | None) -> Decimal | None:
    return None if per_million_usd is None else per_token(per_million_usd)


def _batch_rate(rate: Decimal, batch: Decimal | None, base: Decimal) -> Decimal:
    """`rate` with the batch discount `batch / base` applied (unchanged without one)."""
    if batch is None:
        return rate
    if base in (rate, _ZERO):
        return batch
    return rate * batch / base


def compute_cost(usage: Usage, price: Price, *, batch: bool = False) -> Decimal:
    """Exact USD cost of one provider call (see the module docstring for the rules)."""
    prompt = max(0, usage["prompt_tokens"])
    completion = max(0, usage["completion_tokens"])
    cached = min(max(0, usage["cached_tokens"]), prompt)
    cache_write = min(max(0, usage["cache_write_tokens"]), prompt - cached)
    reasoning = min(max(0, usage["reasoning_tokens"]), completion)
    fresh_prompt = prompt - cached - cache_write

    long_context = prompt > LONG_CONTEXT_THRESHOLD_TOKENS
    input_rate = price.input_long if long_context and price.input_long is not None else price.input
    output_rate = (
        price.output_long if long_context and price.output_long is not None else price.output
    )
    reasoning_rate = price.reasoning if price.reasoning is not None else output_rate
    if batch:
        input_rate = _batch_rate(input_rate, price.batch_input, price.input)
        output_rate = _batch_rate(output_rate, price.batch_output, price.output)
        reasoning_rate = _batch_rate(reasoning_rate, price.batch_output, price.output)
    cache_read_rate = price.cache_read if price.cache_read is not None else input_rate
    cache_write_rate = price.cache_write if price.cache_write is not None else input_rate

    return (
        fresh_prompt * input_rate
        + cached * cache_read_rate
        + cache_write * cache_write_rate
        + (completion - reasoning) * output_rate
        + reasoning * reasoning_rate
    )


def to_nano_usd(usd: Decimal) -> int:
    """USD -> integer nano-USD (1e-9 USD), rounding half up (0.5 nano-USD goes up).

    Each usage record is rounded once, so a sum of N records is within N/2
    nano-USD of the exact sum: a billion calls drift by at most half a dollar.
    Half-up (rather than banker's rounding) never under-charges a half.
    """
    return int((usd * NANO_PER_USD).to_integral_value(rounding=ROUND_HALF_UP))


def from_nano_usd(nano_usd: int) -> Decimal:
    """Integer nano-USD -> USD, exactly."""
    return Decimal(nano_usd).scaleb(-9)


__all__ = [
    "LONG_CONTEXT_THRESHOLD_TOKENS",
    "NANO_PER_USD",
    "Price",
    "compute_cost",
    "from_nano_usd",
    "per_token",
    "to_nano_usd",
]
