"""Budgets configuration: which scope may spend how much over which window.

Loaded once from YAML (`TOLLWAY_BUDGETS_FILE`) and frozen. The same file is read
by the budget processor (limits and thresholds in `tollway.budget-state`) and
by enforcement (ingress, routers), which decides on its own copy of the limits.

    # a plain list ...
    - {scope: "team:acme", window: 24h, limit_usd: "50.00", enforcement: hard}
    - {scope: "key:key_123", window: 1h, limit_usd: "2", enforcement: soft}
    - {scope: "model:acme/gpt-4o", window: mtd, limit_usd: "300",
       enforcement: downgrade, downgrade_to: gpt-4o-mini}
    - {scope: global, window: 30d, limit_usd: "10000", enforcement: hard}

    # ... or a mapping with policy settings
    unpriced: fail_closed      # or: ignore
    budgets: [ ... ]

Scopes: `team:<id>`, `key:<id>`, `model:<team>/<model>` (the model as the
client asked for it), `global`. `limit_usd` is a Decimal: write it quoted to be
exact (an unquoted YAML number is read through its shortest float repr, which
is exact for any amount with up to 15 significant digits).

`unpriced` decides what a call the catalogue could not price does to a scope:
`fail_closed` (default) marks every budget of the scope `exceeded` while that
call is inside the window (unknown spend must not pass a hard limit);
`ignore` counts it as $0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.records import Enforcement, ScopeType
from workers.budget.windows import Window

NANO_PER_USD: Final = Decimal(1_000_000_000)
THRESHOLDS_PCT: Final = (50, 80, 100)
"""Crossings that produce a `tollway.budget-events` record."""
WARN_PCT: Final = 80
GLOBAL_SCOPE_ID: Final = "*"

_SCOPE = re.compile(r"^(?:global|team:[^:/\s]+|key:[^:\s]+|model:[^:/\s]+/[^:\s]+)$")


def scope_string(scope_type: ScopeType, scope_id: str) -> str:
    """The config spelling of a scope: `team:acme`, `global` (and `global:partition-3`)."""
    if scope_type == "global" and scope_id == GLOBAL_SCOPE_ID:
        return "global"
    return f"{scope_type}:{scope_id}"


def format_usd(nano_usd: int) -> str:
    """`$5.00`, `$0.000123`: cents at least, every significant nano-USD digit at most."""
    amount = Decimal(nano_usd).scaleb(-9)
    text = f"{amount:.9f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"${whole}.{frac.ljust(2, '0')}"


def state_key(scope_type: ScopeType, scope_id: str, window: str) -> str:
    """Key of a `tollway.budget-state` record: `<scope_type>:<scope_id>:<window>`."""
    return f"{scope_type}:{scope_id}:{window}"


class BudgetRule(BaseModel):
    """One limit on one scope over one window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: Annotated[str, Field(pattern=_SCOPE.pattern)]
    window: Window
    limit_usd: Annotated[Decimal, Field(gt=0, allow_inf_nan=False)]
    enforcement: Enforcement = "hard"
    downgrade_to: Annotated[str, Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _downgrade_needs_a_target(self) -> BudgetRule:
        if (self.enforcement == "downgrade") != (self.downgrade_to is not None):
            raise ValueError("downgrade_to is required with enforcement=downgrade, and only then")
        if (self.limit_usd * NANO_PER_USD) != (self.limit_usd * NANO_PER_USD).to_integral_value():
            raise ValueError("limit_usd has more precision than a nano-USD")
        return self

    @property
    def scope_type(self) -> ScopeType:
        return self.scope.split(":", 1)[0]  # type: ignore[return-value]  # pattern-checked

    @property
    def scope_id(self) -> str:
        return GLOBAL_SCOPE_ID if self.scope == "global" else self.scope.split(":", 1)[1]

    @property
    def limit_nano_usd(self) -> int:
        return int(self.limit_usd * NANO_PER_USD)

    @property
    def state_key(self) -> str:
        return state_key(self.scope_type, self.scope_id, self.window)


class BudgetsConfig(BaseModel):
    """Every budget, looked up by (scope, window)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    budgets: tuple[BudgetRule, ...] = ()
    unpriced: Literal["fail_closed", "ignore"] = "fail_closed"

    @model_validator(mode="before")
    @classmethod
    def _accept_a_plain_list(cls, data: Any) -> Any:
        return {"budgets": data} if isinstance(data, list) else data

    @model_validator(mode="after")
    def _one_rule_per_scope_and_window(self) -> BudgetsConfig:
        seen: set[tuple[str, str]] = set()
        for rule in self.budgets:
            if (rule.scope, rule.window) in seen:
                raise ValueError(f"two budgets for {rule.scope} over {rule.window}")
            seen.add((rule.scope, rule.window))
        return self

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; the lookup indexes are rebuilt (pydantic would copy them stale)."""
        copy = super().model_copy(update=update, deep=deep)
        for name in ("_index", "_by_scope", "scopes"):
            copy.__dict__.pop(name, None)
        return copy

    def rules_for(self, scope: str) -> tuple[BudgetRule, ...]:
        """The rules of one scope (`team:acme`, `global`, ...), in file order."""
        return self._by_scope.get(scope, ())

    @cached_property
    def _by_scope(self) -> Mapping[str, tuple[BudgetRule, ...]]:
        by_scope: dict[str, list[BudgetRule]] = {}
        for rule in self.budgets:
            by_scope.setdefault(rule.scope, []).append(rule)
        return {scope: tuple(rules) for scope, rules in by_scope.items()}

    def rule(self, scope: str, window: str) -> BudgetRule | None:
        return self._index.get((scope, window))

    @cached_property
    def _index(self) -> Mapping[tuple[str, str], BudgetRule]:
        return {(r.scope, r.window): r for r in self.budgets}

    @cached_property
    def scopes(self) -> frozenset[str]:
        """Every scope that has at least one budget."""
        return frozenset(rule.scope for rule in self.budgets)


class BudgetsConfigError(ValueError):
    """The budgets file is invalid; the message names each bad entry."""


def parse_budgets(text: str, source: str = "budgets") -> BudgetsConfig:
    try:
        raw = yaml.safe_load(text)
        return BudgetsConfig.model_validate(raw if raw is not None else [])
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise BudgetsConfigError(f"{source}: {problems}") from exc
    except yaml.YAMLError as exc:
        raise BudgetsConfigError(f"{source}: not valid YAML ({exc})") from exc


def load_budgets(path: Path | None) -> BudgetsConfig:
    """The budgets in `path`, or no budgets at all when `path` is None."""
    if path is None:
        return BudgetsConfig()
    return parse_budgets(path.read_text("utf-8"), str(path))
