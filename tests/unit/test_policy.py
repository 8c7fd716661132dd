"""Route ordering strategies (workers/router/policy.py)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal

import pytest

from workers.router.policy import Strategy, healthy_first, order_by_strategy


@dataclass(frozen=True)
class Dep:
    name: str
    weight: float = 1.0
    latency: float | None = None
    cost: Decimal | None = None


A = Dep("a", weight=1, latency=30.0, cost=Decimal("2"))
B = Dep("b", weight=3, latency=None, cost=Decimal("1"))
C = Dep("c", weight=0, latency=10.0, cost=None)


def order(strategy: Strategy, deps: list[Dep], seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    planned = order_by_strategy(
        deps,
        strategy,
        weight_of=lambda d: d.weight,
        latency_ms_of=lambda d: d.latency,
        cost_of=lambda d: d.cost,
        rand=rng.random,
    )
    return [d.name for d in planned]


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("priority", ["a", "b", "c"]),
        ("least_latency", ["b", "c", "a"]),  # never measured first, then fastest
        ("lowest_cost", ["b", "a", "c"]),  # unknown price last
    ],
)
def test_deterministic_strategies(strategy: Strategy, expected: list[str]) -> None:
    assert order(strategy, [A, B, C]) == expected


def test_weighted_splits_first_choices_in_proportion_and_zero_weight_goes_last() -> None:
    firsts = Counter(order("weighted", [A, B, C], seed)[0] for seed in range(4_000))
    assert firsts["c"] == 0
    assert 0.70 < firsts["b"] / 4_000 < 0.80  # weight 3 of 4
    assert all(order("weighted", [A, B, C], s)[-1] == "c" for s in range(50))


def test_weighted_keeps_every_deployment_as_fallback() -> None:
    assert sorted(order("weighted", [A, B, C], 7)) == ["a", "b", "c"]


def test_healthy_first_is_a_stable_partition() -> None:
    planned = healthy_first([A, B, C], available=lambda name: name != "a")
    assert [d.name for d in planned] == ["b", "c", "a"]
