"""Reservations: a router holds a call's worst-case cost against its hard budgets. Pure.

Budget state (`tollway.budget-state`) trails the spend by the budget lag, so a
burst of concurrent calls could all be admitted against the same stale number.
A router therefore holds, before each provider attempt, the most that attempt
can cost against every HARD budget of the scopes its team owns (`team:`,
`key:`, `model:<team>/...`), and admits the attempt only if, for each of them:

    spent (state) + pending (settled here, maybe not in the state yet)
        + reserved (held by calls in flight here) + worst case  <=  limit

A team's requests all reach one router (`ownership.py`), so its ledger sees
all of the team's calls in flight. Guarantees and bounds (docs/decisions/0009):

* Holds never leak: `Reservation` is a context manager that releases on any
  exit (exception, timeout, task cancellation) unless it was settled.
* `settle` turns the hold into the actual cost, kept as `pending` for
  `pending_hold_ms` (default 5 s) — the time the budget state may need to show
  it. While both show it, it is counted twice: conservative on purpose.
* The worst case over-estimates on purpose: prompt tokens = UTF-8 bytes of the
  request body / 3, rounded up (every tokenizer in use averages more than 3
  bytes per token on text; the body also holds JSON syntax and parameters),
  plus the output bound (`max_completion_tokens` / `max_tokens` x `n`, else
  the catalogue's max output tokens, else a configured default) at the highest
  applicable rates (input, cache read or cache write; output or reasoning), rounded UP
  to the nano-USD. Images, audio and pathological text (one token per byte)
  can exceed it; the ledger then holds the real cost from settlement on.
* Global hard budgets are not partition-owned: they are enforced from state
  only (`enforcement.py`), so their overspend is bounded by budget lag x rate.

Spend is integer nano-USD throughout; Decimal only inside `compute_cost`.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from decimal import ROUND_CEILING, Decimal
from types import TracebackType
from typing import Any, Final

from schemas.errors import BudgetExceeded, ServiceUnavailable
from schemas.records import BudgetState, Usage
from workers.budget.config import BudgetRule, BudgetsConfig, format_usd
from workers.budget.enforcement import UNAVAILABLE_RETRY_AFTER_S, judge, scopes_for
from workers.cost.pricing import NANO_PER_USD, Price, compute_cost, to_nano_usd

BYTES_PER_PROMPT_TOKEN: Final = 3
"""Worst-case prompt estimate: one token per 3 UTF-8 bytes of the body (an over-estimate)."""
DEFAULT_OUTPUT_TOKENS: Final = 4_096
"""Output bound when the request sets none and the catalogue knows no maximum."""
DEFAULT_PENDING_HOLD_MS: Final = 5_000
RESERVATION_RETRY_AFTER_S: Final = 1.0
"""Retry-After of a refusal caused by calls in flight: they settle within their latency."""


# --- worst and actual cost ------------------------------------------------------------


def estimate_prompt_tokens(body: bytes) -> int:
    """Upper estimate of a request's prompt tokens: ceil(len(body) / 3)."""
    return math.ceil(len(body) / BYTES_PER_PROMPT_TOKEN)


def output_tokens_bound(
    request: Mapping[str, Any], price: Price | None, default_tokens: int = DEFAULT_OUTPUT_TOKENS
) -> int:
    """Most output tokens one call can bill: per choice, times `n` choices.

    Per choice: `max_completion_tokens` (or `max_tokens`), capped by the model's
    maximum when the catalogue knows it; without one, that maximum, else
    `default_tokens`.
    """
    asked = request.get("max_completion_tokens") or request.get("max_tokens")
    model_max = price.max_output_tokens if price is not None else None
    if isinstance(asked, int) and asked > 0:
        per_choice = min(asked, model_max) if model_max is not None else asked
    else:
        per_choice = model_max if model_max is not None else default_tokens
    choices = request.get("n")
    return per_choice * (choices if isinstance(choices, int) and choices > 1 else 1)


def ceil_nano_usd(usd: Decimal) -> int:
    """USD -> integer nano-USD, rounded UP (a hold must never be short by a fraction)."""
    return int((usd * NANO_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def worst_case_nano_usd(
    price: Price, prompt_tokens: int, output_tokens: int, *, batch: bool = False
) -> int:
    """The most one call with these token bounds can cost under `price`, rounded up.

    `compute_cost` is linear per token class, so the worst case is the most
    expensive way to bill the prompt (all fresh input, all cache reads or all
    cache writes: catalogue data does not promise which rate is highest) plus
    the most expensive way to bill the output (all plain or all reasoning).
    """
    worst = max(
        compute_cost(
            {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": output_tokens,
                "cached_tokens": cached,
                "cache_write_tokens": cache_write,
                "reasoning_tokens": reasoning,
            },
            price,
            batch=batch,
        )
        for cached, cache_write in ((0, 0), (prompt_tokens, 0), (0, prompt_tokens))
        for reasoning in (0, output_tokens)
    )
    return ceil_nano_usd(worst)


def actual_nano_usd(usage: Usage, price: Price | None, *, batch: bool = False) -> int:
    """What the cost processor will bill for this call (`usage.price_attempt`): 0 unpriced."""
    if price is None:
        return 0
    return to_nano_usd(compute_cost(usage, price, batch=batch))


def unpriced_refusal(model: str, rules: Sequence[BudgetRule]) -> BudgetExceeded:
    """A call of a model without a price, against hard budgets that fail closed."""
    first = rules[0]
    names = ", ".join(f"{r.scope} ({r.window})" for r in rules)
    return BudgetExceeded(
        f"Budget exceeded: the model {model} has no price in the catalogue, and the hard "
        f"budgets of {names} fail closed on unpriced models.",
        scope=first.scope,
        window=first.window,
    )


# --- which budgets, and what the state says -------------------------------------------


def reserved_rules(
    config: BudgetsConfig, team_id: str, key_id: str | None, model: str
) -> tuple[BudgetRule, ...]:
    """The HARD rules of the team-owned scopes a request spends against (not `global`)."""
    return tuple(
        rule
        for scope in scopes_for(team_id, key_id, model)
        if scope != "global"
        for rule in config.rules_for(scope)
        if rule.enforcement == "hard"
    )


def state_spent(
    rules: Sequence[BudgetRule],
    states: Mapping[str, BudgetState],
    *,
    owner_updated_ms: int | None,
    now_ms: int,
    stale_after_ms: int,
) -> dict[str, int]:
    """Spend per rule (by `state_key`) as the budget states show it.

    Judged exactly as admission judges (`enforcement.judge`): a state that says
    exceeded refuses (429, Retry-After when the spend ages out), an unknown or
    stale one fails closed (503).
    """
    spent: dict[str, int] = {}
    for rule in rules:
        j = judge(
            rule,
            states.get(rule.state_key),
            owner_updated_ms=owner_updated_ms,
            now_ms=now_ms,
            stale_after_ms=stale_after_ms,
        )
        if j.verdict == "unknown":
            raise ServiceUnavailable(
                f"Budget state unavailable for {rule.scope} ({rule.window}): hard budgets "
                "fail closed. Retry shortly.",
                retry_after_s=UNAVAILABLE_RETRY_AFTER_S,
            )
        if j.verdict == "exceeded":
            retry = None if j.frees_at_ms is None else max(1.0, (j.frees_at_ms - now_ms) / 1000)
            raise BudgetExceeded(
                f"Budget exceeded: {rule.scope} has spent "
                f"{format_usd(j.spent_nano_usd or 0)} of its "
                f"{format_usd(rule.limit_nano_usd)} {rule.window} budget.",
                retry_after_s=None if retry is None else float(math.ceil(retry)),
                scope=rule.scope,
                window=rule.window,
            )
        spent[rule.state_key] = j.spent_nano_usd or 0
    return spent


# --- the ledger -------------------------------------------------------------------------


class Reservation:
    """One attempt's hold. Settle it with the actual cost, or let it be released.

    Use as a context manager (`with ledger.try_reserve(...) as hold:`): leaving
    the block without `settle` — an exception, a timeout, a cancelled task —
    releases the hold. `settle` and `release` are idempotent; the first wins.
    """

    __slots__ = ("_closed", "_ledger", "amount_nano_usd", "hold_id", "rules")

    def __init__(
        self,
        ledger: ReservationLedger,
        hold_id: int,
        rules: tuple[BudgetRule, ...],
        amount_nano_usd: int,
    ) -> None:
        self._ledger = ledger
        self.hold_id = hold_id
        self.rules = rules
        self.amount_nano_usd = amount_nano_usd
        self._closed = False

    @property
    def open(self) -> bool:
        return not self._closed

    def settle(self, actual_nano_usd: int, now_ms: int) -> None:
        """The call cost `actual_nano_usd`: release the hold, keep the cost as pending."""
        if self._closed:
            return
        self._closed = True
        self._ledger._close(self, max(0, actual_nano_usd), now_ms)

    def release(self) -> None:
        """The call billed nothing (failed without usage, cancelled): drop the hold."""
        if self._closed:
            return
        self._closed = True
        self._ledger._close(self, None, 0)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class ReservationLedger:
    """Holds and recent settlements per budget (`state_key`) of one router process.

    Not thread-safe: one event loop calls it, and `try_reserve` checks and holds
    in one synchronous step, so concurrent tasks cannot both take the last room.
    """

    def __init__(self, *, pending_hold_ms: int = DEFAULT_PENDING_HOLD_MS) -> None:
        self.pending_hold_ms = pending_hold_ms
        self._reserved: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        self._expiry: list[tuple[int, int, tuple[str, ...], int]] = []  # heap
        self._holds: dict[int, Reservation] = {}
        self._next_id = 0
        self.refused = 0

    def try_reserve(
        self,
        rules: Sequence[BudgetRule],
        worst_nano_usd: int,
        state_spent_by_key: Mapping[str, int],
        now_ms: int,
    ) -> Reservation:
        """Hold `worst_nano_usd` against every rule, or raise `BudgetExceeded` (429).

        A rule missing from `state_spent_by_key` is unknown spend: 503, fail closed.
        """
        self._expire(now_ms)
        worst = max(0, worst_nano_usd)
        for rule in rules:
            key = rule.state_key
            spent = state_spent_by_key.get(key)
            if spent is None:
                raise ServiceUnavailable(
                    f"Budget state unavailable for {rule.scope} ({rule.window}): hard budgets "
                    "fail closed. Retry shortly.",
                    retry_after_s=UNAVAILABLE_RETRY_AFTER_S,
                )
            committed = spent + self._pending.get(key, 0)
            held = self._reserved.get(key, 0)
            limit = rule.limit_nano_usd
            if committed >= limit or committed + held + worst > limit:
                self.refused += 1
                raise self._refusal(rule, committed, held, worst)
        hold_id = self._next_id
        self._next_id += 1
        reservation = Reservation(self, hold_id, tuple(rules), worst)
        for rule in rules:
            self._reserved[rule.state_key] = self._reserved.get(rule.state_key, 0) + worst
        self._holds[hold_id] = reservation
        return reservation

    @staticmethod
    def _refusal(rule: BudgetRule, committed: int, held: int, worst: int) -> BudgetExceeded:
        in_flight = committed + worst <= rule.limit_nano_usd
        return BudgetExceeded(
            f"Budget exceeded: {rule.scope} has spent {format_usd(committed)} of its "
            f"{format_usd(rule.limit_nano_usd)} {rule.window} budget, "
            f"{format_usd(held)} is held by calls in flight, and this call may cost up to "
            f"{format_usd(worst)}.",
            # Room held by calls in flight comes back as they settle; spent room only as
            # the spend ages out of the window (the budget state's frees_at says when).
            retry_after_s=RESERVATION_RETRY_AFTER_S if in_flight else None,
            scope=rule.scope,
            window=rule.window,
        )

    def _close(self, reservation: Reservation, actual_nano_usd: int | None, now_ms: int) -> None:
        if self._holds.pop(reservation.hold_id, None) is None:
            return
        keys = tuple(rule.state_key for rule in reservation.rules)
        for key in keys:
            left = self._reserved.get(key, 0) - reservation.amount_nano_usd
            if left > 0:
                self._reserved[key] = left
            else:
                self._reserved.pop(key, None)
        if actual_nano_usd:
            for key in keys:
                self._pending[key] = self._pending.get(key, 0) + actual_nano_usd
            heapq.heappush(
                self._expiry,
                (now_ms + self.pending_hold_ms, reservation.hold_id, keys, actual_nano_usd),
            )

    def _expire(self, now_ms: int) -> None:
        while self._expiry and self._expiry[0][0] <= now_ms:
            _, _, keys, amount = heapq.heappop(self._expiry)
            for key in keys:
                left = self._pending.get(key, 0) - amount
                if left > 0:
                    self._pending[key] = left
                else:
                    self._pending.pop(key, None)

    def reserved_total(self) -> int:
        """Nano-USD held by calls in flight (each hold once, whatever its number of budgets)."""
        return sum(r.amount_nano_usd for r in self._holds.values())

    def holds(self) -> int:
        """Reservations currently open."""
        return len(self._holds)

    def reserved_for(self, state_key: str) -> int:
        return self._reserved.get(state_key, 0)

    def pending_for(self, state_key: str, now_ms: int) -> int:
        self._expire(now_ms)
        return self._pending.get(state_key, 0)
