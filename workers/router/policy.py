"""Route planning: which deployments to try for a request, in order. Pure.

Foundation policy: the model's deployments in configured (priority) order.
Weighted, least-latency and lowest-cost strategies plug in here later; the
executor (`fallback.py`) only ever sees the ordered plan.
"""

from __future__ import annotations

from schemas.routes import Deployment, RoutesConfig


def plan_routes(model: str, routes: RoutesConfig) -> tuple[Deployment, ...]:
    """Ordered deployments for `model`. Raises `UnknownModel` when nothing serves it."""
    return routes.resolve(model).deployments
