"""What the chaos run does and when: the two forms and the seeded fault schedule. Pure.

A form says how long the load runs (rounds x round length), at what rate, and which
faults each round holds. `build_plan(form, seed)` turns it into a schedule: every
fault at a uniformly drawn moment of its round, away from the round's edges, so the
same seed always gives the same schedule (printed by the run, reusable through
`TOLLWAY_CHAOS_SEED`). Faults on one target are serialised by the executor
(`faults.py`); faults on different targets may overlap, as they would in production.

Fault kinds (`Fault.kind`):

    kill             SIGKILL the target process, restart it after `hold_s` seconds
    freeze           SIGSTOP the target for `hold_s` (past its poll interval), then SIGCONT
    broker_restart   deploy/kafka/kafka.sh stop, wait `hold_s`, start
    clickhouse_down  SIGKILL the embedded ClickHouse server, restart it after `hold_s`
    provider_down    SIGKILL the mock provider (connections refused), restart after `hold_s`
    provider_hang    SIGSTOP the mock provider (calls hang, then time out), SIGCONT after `hold_s`
    receiver_down    the webhook receiver answers 503 for `hold_s` (deliveries are retried)
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final, Literal

FaultKind = Literal[
    "kill",
    "freeze",
    "broker_restart",
    "clickhouse_down",
    "provider_down",
    "provider_hang",
    "receiver_down",
]

ROUTERS: Final = ("router-1", "router-2")
"""The stack runs two routers: while one is down or frozen the other takes its partitions."""
KILLED_KINDS: Final = (
    "ingress",
    "router",
    "cost-processor",
    "budget-processor",
    "loader",
    "callbacks",
    "batches-worker",
)
"""Every kind of Tollway process SIGKILLed once per round ("router": one of `ROUTERS`)."""
EDGE_S: Final = 5.0
"""No fault starts closer than this to its round's start or end (seconds)."""


@dataclass(frozen=True, slots=True)
class ChaosForm:
    """One form of the chaos run; durations in seconds, rates per second."""

    name: Literal["short", "long"]
    rounds: int
    round_s: float
    rate_per_s: float
    """Async requests submitted per second (constant arrival rate)."""
    batch_every_s: float
    batch_lines: int
    kill_down_max_s: float
    """A killed process stays down for a uniform draw in [0, this] before its restart."""
    freeze_s: float
    """Above the routers' max poll interval and session timeout (chaos stack: 10 s / 6 s)."""
    broker_restart_round: int | None
    """The round (0-based) whose broker restart happens; None: no broker restart."""
    broker_down_s: float
    clickhouse_down_round: int
    clickhouse_down_s: float
    provider_down_s: float
    provider_hang_s: float
    receiver_down_s: float
    settle_timeout_s: float
    """How long the run waits after the load for every accepted request to be accounted."""

    @property
    def load_s(self) -> float:
        return self.rounds * self.round_s


SHORT: Final = ChaosForm(
    name="short",
    rounds=1,
    round_s=65.0,
    rate_per_s=12.0,
    batch_every_s=25.0,
    batch_lines=100,
    kill_down_max_s=1.0,
    freeze_s=12.0,
    broker_restart_round=None,
    broker_down_s=0.0,
    clickhouse_down_round=0,
    clickhouse_down_s=10.0,
    provider_down_s=4.0,
    provider_hang_s=7.0,
    receiver_down_s=5.0,
    settle_timeout_s=75.0,
)
LONG: Final = ChaosForm(
    name="long",
    rounds=4,
    round_s=150.0,
    rate_per_s=15.0,
    batch_every_s=30.0,
    batch_lines=200,
    kill_down_max_s=3.0,
    freeze_s=15.0,
    broker_restart_round=1,
    broker_down_s=5.0,
    clickhouse_down_round=2,
    clickhouse_down_s=60.0,
    provider_down_s=8.0,
    provider_hang_s=12.0,
    receiver_down_s=15.0,
    settle_timeout_s=240.0,
)
FORMS: Final = {f.name: f for f in (SHORT, LONG)}


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault: start `at_s` seconds after the load started, against `target`."""

    at_s: float
    kind: FaultKind
    target: str
    hold_s: float
    round: int

    def describe(self) -> str:
        return (
            f"r{self.round} t+{self.at_s:6.1f}s {self.kind:<15} {self.target:<16} "
            f"{self.hold_s:.1f}s"
        )


def build_plan(form: ChaosForm, seed: int) -> tuple[Fault, ...]:
    """The schedule of `form` for `seed`, sorted by start time. Deterministic."""
    draw = random.Random(seed)
    faults: list[Fault] = []
    for rnd in range(form.rounds):
        start_s = rnd * form.round_s

        def moment(hold_s: float, start_s: float = start_s) -> float:
            latest = max(EDGE_S, form.round_s - EDGE_S - hold_s)
            return round(start_s + draw.uniform(EDGE_S, latest), 1)

        killed_router = draw.choice(ROUTERS)
        for kind in KILLED_KINDS:
            target = killed_router if kind == "router" else kind
            hold = round(draw.uniform(0.0, form.kill_down_max_s), 1)
            faults.append(Fault(moment(hold), "kill", target, hold, rnd))
        # The other router is frozen: a frozen router that is killed right after SIGCONT
        # never wakes up as a zombie, which is the case this fault is about.
        frozen = next(r for r in ROUTERS if r != killed_router)
        faults.append(Fault(moment(form.freeze_s), "freeze", frozen, form.freeze_s, rnd))
        faults.append(
            Fault(moment(form.provider_down_s), "provider_down", "mock-provider",
                  form.provider_down_s, rnd)
        )  # fmt: skip
        faults.append(
            Fault(moment(form.provider_hang_s), "provider_hang", "mock-provider",
                  form.provider_hang_s, rnd)
        )  # fmt: skip
        faults.append(
            Fault(moment(form.receiver_down_s), "receiver_down", "receiver",
                  form.receiver_down_s, rnd)
        )  # fmt: skip
        if rnd == form.clickhouse_down_round:
            faults.append(
                Fault(moment(form.clickhouse_down_s), "clickhouse_down", "clickhouse",
                      form.clickhouse_down_s, rnd)
            )  # fmt: skip
        if rnd == form.broker_restart_round:
            faults.append(
                Fault(moment(form.broker_down_s + 15.0), "broker_restart", "kafka",
                      form.broker_down_s, rnd)
            )  # fmt: skip
    return tuple(sorted(faults, key=lambda f: (f.at_s, f.kind, f.target)))
