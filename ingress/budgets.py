"""Budget enforcement at admission: the ingress's view of tollway.budget-state.

The view itself lives in `workers/budget/view.py` (the routers read the same
one for their reservations); this module keeps the ingress's import path.
"""

from __future__ import annotations

from workers.budget.view import DEFAULT_STALE_AFTER_S, BudgetView, EnforcementSettings

__all__ = ["DEFAULT_STALE_AFTER_S", "BudgetView", "EnforcementSettings"]
