"""One `Attempt` (a provider call) -> one priced `UsageRecord`. Pure: the clock is an argument.

Only calls that consumed tokens are usage (a connection refused or an
upstream 500 with no usage costs nothing); a call whose model has no price is
recorded with `cost_status = "unpriced"` and cost 0, never passed off as a
free call, so budgets and reports can treat it as unknown spend.

A cache hit (an attempt with outcome `cache_hit`, workers/cache/answers.py) made no
call: it is recorded with cost 0, `cost_status = "cache_hit"` and `saved_nano_usd` =
what its tokens would have cost at the cached answer's model and this request's mode
(0 when that model has no price). It is recorded even without tokens, so hit counts
in analytics are complete.
"""

from __future__ import annotations

from schemas.records import Attempt, CostStatus, Usage, UsageRecord
from workers.cost.catalogue import Catalogue
from workers.cost.pricing import compute_cost, to_nano_usd


def usage_id(attempt: Attempt) -> str:
    """The idempotency key of the call downstream: `<request_id>:<attempt_id>`."""
    return f"{attempt['request_id']}:{attempt['attempt_id']}"


def consumed_tokens(attempt: Attempt) -> bool:
    return attempt["prompt_tokens"] > 0 or attempt["completion_tokens"] > 0


def occurred_at_ms(attempt: Attempt) -> int:
    """Event time of the call: when it finished (start + latency)."""
    return attempt["started_at_ms"] + max(0, round(attempt["latency_ms"]))


def price_attempt(
    attempt: Attempt, catalogue: Catalogue, *, priced_at_ms: int
) -> UsageRecord | None:
    """The usage record of `attempt`, or None when the call consumed no tokens."""
    cache_hit = attempt["outcome"] == "cache_hit"
    if not cache_hit and not consumed_tokens(attempt):
        return None
    price = catalogue.lookup(attempt["provider"], attempt["model"])
    cost_nano_usd = 0
    if price is not None:
        tokens: Usage = {
            "prompt_tokens": attempt["prompt_tokens"],
            "completion_tokens": attempt["completion_tokens"],
            "cached_tokens": attempt["cached_tokens"],
            "reasoning_tokens": attempt["reasoning_tokens"],
            "cache_write_tokens": attempt["cache_write_tokens"],
        }
        cost_nano_usd = to_nano_usd(compute_cost(tokens, price, batch=attempt["mode"] == "batch"))
    return {
        "usage_id": usage_id(attempt),
        "request_id": attempt["request_id"],
        "attempt_id": attempt["attempt_id"],
        "team_id": attempt["team_id"],
        "key_id": attempt["key_id"],
        "mode": attempt["mode"],
        # attempt.v2 does not carry the client-facing model name; the upstream name is
        # the closest fact until it does (same name on every built-in route).
        "requested_model": attempt["model"],
        "model": attempt["model"],
        "provider": attempt["provider"],
        "deployment": attempt["deployment"],
        "prompt_tokens": attempt["prompt_tokens"],
        "completion_tokens": attempt["completion_tokens"],
        "cached_tokens": attempt["cached_tokens"],
        "cache_write_tokens": attempt["cache_write_tokens"],
        "reasoning_tokens": attempt["reasoning_tokens"],
        "cost_nano_usd": 0 if cache_hit else cost_nano_usd,
        "saved_nano_usd": cost_nano_usd if cache_hit else 0,
        "cost_status": _status(cache_hit=cache_hit, priced=price is not None),
        "pricing_version": catalogue.version,
        "occurred_at_ms": occurred_at_ms(attempt),
        "priced_at_ms": priced_at_ms,
    }


def _status(*, cache_hit: bool, priced: bool) -> CostStatus:
    if cache_hit:
        return "cache_hit"
    return "priced" if priced else "unpriced"
