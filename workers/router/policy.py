"""Route planning: which deployments to try for a request, in order. Pure.

Strategies (per model group, `RoutesConfig`):

    priority       configured order
    weighted       a weighted random order (weights from the config), so traffic
                   splits in proportion and the rest of the order is the fallback
    least_latency  fastest EWMA latency first (deployments never measured go first,
                   so each gets measured)
    lowest_cost    cheapest price hint first (unknown prices last)

Deployments whose circuit breaker is open are moved to the end rather than
dropped: when everything is unhealthy, trying is better than failing outright.
The executor (`fallback.py`) only ever sees the ordered plan.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Literal, Protocol, TypeVar

Strategy = Literal["priority", "weighted", "least_latency", "lowest_cost"]


class Routable(Protocol):
    @property
    def name(self) -> str: ...


D = TypeVar("D", bound=Routable)


def order_by_strategy(
    deployments: Sequence[D],
    strategy: Strategy,
    *,
    weight_of: Callable[[D], float] = lambda _: 1.0,
    latency_ms_of: Callable[[D], float | None] = lambda _: None,
    cost_of: Callable[[D], Decimal | None] = lambda _: None,
    rand: Callable[[], float],
) -> list[D]:
    """`deployments` ordered by `strategy`; `rand` returns floats in [0, 1)."""
    if strategy == "priority":
        return list(deployments)
    if strategy == "weighted":
        # Efraimidis-Spirakis: key = u^(1/w); sorting by key descending draws a weighted
        # order without replacement. Zero weight goes last.
        def key(d: D) -> float:
            w = weight_of(d)
            return -math.inf if w <= 0 else math.log(max(rand(), 1e-300)) / w

        return sorted(deployments, key=key, reverse=True)
    if strategy == "least_latency":
        return sorted(deployments, key=lambda d: _unknown_first(latency_ms_of(d)))
    return sorted(deployments, key=lambda d: _unknown_last(cost_of(d)))


def healthy_first(deployments: Sequence[D], available: Callable[[str], bool]) -> tuple[D, ...]:
    """Stable partition: available deployments, then the ones with an open breaker."""
    up = [d for d in deployments if available(d.name)]
    down = [d for d in deployments if not available(d.name)]
    return (*up, *down)


def _unknown_first(value: float | None) -> tuple[int, float]:
    return (0, 0.0) if value is None else (1, value)


def _unknown_last(value: Decimal | None) -> tuple[int, Decimal]:
    return (1, Decimal(0)) if value is None else (0, value)
