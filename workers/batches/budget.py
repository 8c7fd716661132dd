"""A batch against its team's hard budgets: checked at create, then gating expansion.

At create (ingress, `BatchBudgets.admit_create`):

- the budgets of the batch's scopes (`team:<t>`, `model:<t>/<model of the first line>`,
  `global`) are judged on the budget state exactly as a single request is
  (`BudgetView.check`): a hard budget already spent answers 429 `budget_exceeded`, an
  unknown or stale one 503 (fail closed);
- the batch's estimated cost is `lines x` the worst case of its FIRST request line,
  priced at the most expensive deployment of its model (`reservations.worst_case_nano_usd`:
  prompt = body bytes / 3, output = the line's max_tokens x n, else the model's maximum,
  else 4,096). It is an upper estimate, often far above the real cost (lines rarely
  use their whole output bound), so it does not refuse the batch: when it exceeds what a
  hard budget has left, the answer carries `x-tollway-budget-warning` and the batch is
  paced and paused as below. One line stands for all: reading a 200 MB file at create
  would cost more than the estimate is worth.

In the batch worker (`BatchBudgets.pause_reason` before each expansion group), for a
team with a hard budget on one of the batch's scopes:

- expansion keeps at most `budget_lookahead_lines` request lines enqueued ahead of the
  lines that have an outcome (`lookahead_full`), so that when the budget runs out most
  of the batch is still in its file, not queued in front of the routers;
- while a hard budget is spent (or its state unknown), expansion pauses: the batch stays
  `in_progress` with `tollway.paused_reason` in its state (shown in the Batch object's
  `tollway` extras), and resumes when the rolling window frees room. The completion
  window still applies: a batch paused past it expires, its unrun lines in the error file.
- lines already enqueued when the budget runs out meet the routers' reservations
  (docs/decisions/0009) and fail alone with `budget_exceeded` (at most the lookahead).

Teams without a hard budget are not paced: expansion runs at full speed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from schemas.errors import BudgetExceeded, ServiceUnavailable, TollwayError
from schemas.routes import RoutesConfig
from schemas.settings import KafkaSettings
from workers.budget.config import BudgetsConfig, format_usd
from workers.budget.enforcement import scopes_for
from workers.budget.reservations import (
    DEFAULT_OUTPUT_TOKENS,
    estimate_prompt_tokens,
    output_tokens_bound,
    reserved_rules,
    worst_case_nano_usd,
)
from workers.budget.view import BudgetView, EnforcementSettings
from workers.cost.catalogue import Catalogue, load_catalogue, load_overrides
from workers.cost.pricing import Price
from workers.cost.settings import CostSettings

PricesOf = Callable[[str], Iterable[Price]]
"""The prices of a client-facing model's deployments (empty: unknown)."""


@dataclass(frozen=True, slots=True)
class FirstLine:
    """The first request line of an input file, enough to estimate and to pick the model."""

    model: str
    body: Mapping[str, Any]
    body_bytes: bytes


def first_line(lines: Iterable[tuple[int, bytes | object]]) -> FirstLine | None:
    """The first non-blank line that holds a request with a model (else None)."""
    for _, raw in lines:
        if not isinstance(raw, bytes) or not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        body = obj.get("body") if isinstance(obj, dict) else None
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(body, dict) or not isinstance(model, str):
            return None
        return FirstLine(model, body, orjson.dumps(body))
    return None


def estimate_nano_usd(
    first: FirstLine, lines: int, prices: Iterable[Price], default_output_tokens: int
) -> int | None:
    """`lines x` the worst case of the first line at the dearest price; None if unpriced."""
    prompt_tokens = estimate_prompt_tokens(first.body_bytes)
    worst = [
        worst_case_nano_usd(
            price,
            prompt_tokens,
            output_tokens_bound(first.body, price, default_output_tokens),
        )
        for price in prices
    ]
    return max(worst) * lines if worst else None


class BatchBudgets:
    """Budget checks for batches over the budget-state view (ingress and batch workers)."""

    def __init__(
        self,
        view: BudgetView,
        prices_of: PricesOf,
        *,
        default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    ) -> None:
        self.view = view
        self.config: BudgetsConfig = view.config
        self.prices_of = prices_of
        self.default_output_tokens = default_output_tokens

    def paced(self, team_id: str, model: str | None) -> bool:
        """Whether the batch spends against any hard budget (then expansion is paced)."""
        return any(
            rule.enforcement == "hard"
            for scope in scopes_for(team_id, None, model or "")
            for rule in self.config.rules_for(scope)
        )

    def admit_create(self, team_id: str, first: FirstLine | None, lines: int) -> str | None:
        """Refuse (429/503, raised) or admit a new batch; returns a warning or None."""
        model = "" if first is None else first.model
        now_ms = self.view.clock_ms()
        self.view.check(team_id, None, model, now_ms)  # raises when a hard budget is spent
        if first is None or not self.paced(team_id, model):
            return None
        rules = reserved_rules(self.config, team_id, None, model)
        estimate = estimate_nano_usd(
            first, lines, self.prices_of(model), self.default_output_tokens
        )
        if estimate is None or not rules:
            return None
        spent = self.view.spent_nano_usd(rules, team_id, now_ms)
        short = [r for r in rules if estimate > r.limit_nano_usd - spent[r.state_key]]
        if not short:
            return None
        rule = short[0]
        left = rule.limit_nano_usd - spent[rule.state_key]
        return (
            f"estimated worst-case cost {format_usd(estimate)} exceeds the {format_usd(left)} "
            f"left in {rule.scope}'s {rule.window} budget: the batch pauses when it runs out"
        )

    def pause_reason(self, team_id: str, model: str | None, now_ms: int) -> str | None:
        """Why expansion must wait now, or None. Stable while the cause lasts (no amounts),
        so a long pause is recorded once: `budget_exceeded: team:acme 1h` or
        `budget_unavailable` (a hard budget's state is unknown or stale: fail closed)."""
        try:
            self.view.check(team_id, None, model or "", now_ms)
        except BudgetExceeded as exc:
            return f"budget_exceeded: {exc.scope} {exc.window}"
        except ServiceUnavailable:
            return "budget_unavailable"
        return None


def lookahead_full(scanned: int, finished: int, lookahead_lines: int) -> bool:
    """Whether `lookahead_lines` lines are already enqueued without an outcome."""
    return scanned - finished >= lookahead_lines


def route_prices(routes: RoutesConfig, catalogue: Catalogue) -> PricesOf:
    """`prices_of(model)`: the catalogue prices of the model's deployments (known ones)."""

    def prices_of(model: str) -> list[Price]:
        try:
            route = routes.resolve(model)
        except TollwayError:
            return []
        found = (catalogue.lookup(d.provider, d.model or model) for d in route.deployments)
        return [price for price in found if price is not None]

    return prices_of


def batch_budgets_for(
    view: BudgetView | None, routes: RoutesConfig, cost: CostSettings | None = None
) -> BatchBudgets | None:
    """Batch checks over an existing budget view (the ingress's), priced with the cost
    processor's catalogue settings; None without a view (no budgets configured)."""
    if view is None or not view.config.budgets:
        return None
    cost = cost or CostSettings()
    catalogue = load_catalogue(cost.catalogue_file, load_overrides(cost.price_overrides_file))
    return BatchBudgets(view, route_prices(routes, catalogue))


def build_batch_budgets(
    kafka: KafkaSettings, routes: RoutesConfig, enforcement: EnforcementSettings | None = None
) -> BatchBudgets | None:
    """A batch worker's budgets from the environment (`TOLLWAY_BUDGETS_FILE`); None
    without budgets (then nothing is checked or paced). The caller starts `.view`."""
    enforcement = enforcement or EnforcementSettings()
    config = enforcement.load()
    if not config.budgets:
        return None
    view = BudgetView(kafka, config, stale_after_s=enforcement.stale_after_s)
    return batch_budgets_for(view, routes)
