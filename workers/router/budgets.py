"""The router's side of budget enforcement: a reservation around each provider attempt.

`AttemptBudgets.guard(envelope, request, call)` wraps the executor's attempt
function. Before an attempt against a deployment it:

1. judges the request's budgets on the budget state (`BudgetView.check`:
   hard exceeded -> 429, unknown/stale -> 503; `global` is enforced here, from
   state only);
2. prices the attempt's worst case for THAT deployment with the catalogue the
   cost processor uses (`TOLLWAY_COST_CATALOGUE_FILE` and
   `TOLLWAY_COST_PRICE_OVERRIDES_FILE`; an override wins over the built-in
   price) and holds it in the `ReservationLedger` against each hard budget of
   the team's scopes (or refuses: 429 `budget_exceeded`, no provider call);
3. settles the hold to the attempt's actual cost (its usage, priced the same
   way) when the call returns, or releases it on any exception or cancellation.

Requests of teams without a hard budget pass straight through (`guard`
returns `call` itself); a router without budgets has no `AttemptBudgets` at all.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from schemas.records import RequestEnvelope
from schemas.routes import Deployment
from schemas.settings import KafkaSettings
from workers.budget.config import BudgetRule
from workers.budget.reservations import (
    DEFAULT_OUTPUT_TOKENS,
    ReservationLedger,
    actual_nano_usd,
    estimate_prompt_tokens,
    output_tokens_bound,
    reserved_rules,
    unpriced_refusal,
    worst_case_nano_usd,
)
from workers.budget.view import BudgetView, EnforcementSettings
from workers.cost.catalogue import Catalogue, load_catalogue, load_overrides
from workers.cost.settings import CostSettings
from workers.providers.base import ProviderReply
from workers.router.settings import RouterSettings

log = logging.getLogger("tollway.router.budgets")

Call = Callable[[Deployment], Awaitable[ProviderReply]]

_RULES_CACHE_MAX: Final = 100_000


class AttemptBudgets:
    """Budget checks and reservations for one router process (one ledger for all its calls)."""

    def __init__(
        self,
        view: BudgetView,
        catalogue: Catalogue,
        *,
        ledger: ReservationLedger | None = None,
        default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    ) -> None:
        self.view = view
        self.catalogue = catalogue
        self.ledger = ledger or ReservationLedger()
        self.default_output_tokens = default_output_tokens
        self._rules: dict[tuple[str, str | None, str], tuple[BudgetRule, ...]] = {}
        self._any_hard_global = any(
            r.scope == "global" and r.enforcement == "hard" for r in view.config.budgets
        )

    def rules(self, team_id: str, key_id: str | None, model: str) -> tuple[BudgetRule, ...]:
        """The hard budgets an attempt of this request is reserved against (memoised)."""
        memo_key = (team_id, key_id, model)
        found = self._rules.get(memo_key)
        if found is None:
            found = reserved_rules(self.view.config, team_id, key_id, model)
            if len(self._rules) < _RULES_CACHE_MAX:
                self._rules[memo_key] = found
        return found

    def guard(self, envelope: RequestEnvelope, request: dict[str, Any], call: Call) -> Call:
        """`call` with a budget check and a reservation around every attempt."""
        team_id, key_id, model = envelope["team_id"], envelope["key_id"], envelope["model"]
        rules = self.rules(team_id, key_id, model)
        if not rules and not self._any_hard_global:
            return call
        batch = envelope["mode"] == "batch"
        prompt_tokens = estimate_prompt_tokens(envelope["body"])

        async def guarded(route: Deployment) -> ProviderReply:
            now_ms = self.view.clock_ms()
            self.view.check(team_id, key_id, model, now_ms)  # 429 / 503 from state
            if not rules:
                return await call(route)  # only `global` is hard: enforced from state
            price = self.catalogue.lookup(route.provider, route.model or model)
            if price is None:
                if self.view.config.unpriced == "fail_closed":
                    raise unpriced_refusal(route.model or model, rules)
                worst = 0
            else:
                output_tokens = output_tokens_bound(request, price, self.default_output_tokens)
                worst = worst_case_nano_usd(price, prompt_tokens, output_tokens, batch=batch)
            spent = self.view.spent_nano_usd(rules, team_id, now_ms)
            with self.ledger.try_reserve(rules, worst, spent, now_ms) as hold:
                reply = await call(route)
                hold.settle(actual_nano_usd(reply.usage, price, batch=batch), self.view.clock_ms())
            return reply

        return guarded

    async def start(self, ready_timeout_s: float) -> None:
        """Start the view and wait until it has caught up (until then hard budgets fail closed)."""
        await self.view.start()
        if not await self.view.wait_ready(ready_timeout_s):
            log.warning(
                "budget view not ready after %.0fs: hard budgets fail closed until it is",
                ready_timeout_s,
            )

    async def stop(self) -> None:
        held = self.ledger.reserved_total()
        log.info("budget reservations at stop: %d open, %d nano-USD", self.ledger.holds(), held)
        await self.view.stop()


def build_budgets(
    kafka: KafkaSettings,
    settings: RouterSettings,
    enforcement: EnforcementSettings | None = None,
    cost: CostSettings | None = None,
) -> AttemptBudgets | None:
    """The router's budgets from the environment (`TOLLWAY_BUDGETS_FILE`, the cost
    processor's catalogue settings); None when no budget is configured."""
    enforcement = enforcement or EnforcementSettings()
    config = enforcement.load()
    if not config.budgets:
        return None
    cost = cost or CostSettings()
    catalogue = load_catalogue(cost.catalogue_file, load_overrides(cost.price_overrides_file))
    view = BudgetView(kafka, config, stale_after_s=enforcement.stale_after_s)
    log.info(
        "budgets: %d (%d hard), catalogue %s", len(config.budgets),
        sum(r.enforcement == "hard" for r in config.budgets), catalogue.version,
    )  # fmt: skip
    return AttemptBudgets(
        view,
        catalogue,
        ledger=ReservationLedger(pending_hold_ms=settings.budget_pending_hold_ms),
        default_output_tokens=settings.budget_default_output_tokens,
    )
