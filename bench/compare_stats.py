"""Pure arithmetic of the side-by-side benchmark (bench/compare.py): no I/O, no clock.

What it decides, and why here: the figures of RESULTS.md must be computed the same
way for every system, so the rules live in one tested place.

- `percentile_ms`: nearest-rank percentile of a sorted list (milliseconds in, out).
- `merge_loads`: one load step's figures from the JSON of its generator processes
  (bench/openloop.py runs K of them to offer high rates from more than one core).
- `step_held`: a rate step holds when errors <= 1 %, p99 <= 1 s, and the generator
  really offered >= 90 % of the nominal rate (on 2 shared cores a saturated machine
  slows the generator too; a rate that was not offered cannot be claimed as held).
- `sustained`: the highest rate held, counting from the bottom of the ladder up to
  the first step that broke (a later lucky step does not count).
- `added_latency_ms`: system minus mock-direct at the same rate, per percentile.
- `cpu_s_per_request`: CPU seconds of each process over a step / requests issued.
- `Target` / `evaluate`: the issue's targets, met / not met / not measured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

MAX_ERROR_RATIO = 0.01
MAX_P99_MS = 1000.0
MIN_OFFERED_RATIO = 0.9

Percentiles = dict[str, float]


def percentile_ms(sorted_ms: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]) of an ascending list; 0.0 when empty."""
    if not sorted_ms:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_ms)))
    return float(sorted_ms[min(rank, len(sorted_ms)) - 1])


def percentiles(sorted_ms: Sequence[float]) -> Percentiles:
    """p50/p95/p99 of an ascending list of milliseconds, rounded to 0.01 ms."""
    return {
        f"p{int(q * 100)}_ms": round(percentile_ms(sorted_ms, q), 2) for q in (0.50, 0.95, 0.99)
    }


@dataclass(frozen=True)
class LoadStep:
    """One measured window of load at one nominal rate (or one burst), merged over generators.

    issued: requests started inside the measured window (warm-up excluded);
    all_issued: every request started, warm-up included (what the CPU counters saw);
    ok / errors: outcomes of the `issued` requests (errors by kind in `error_kinds`);
    window_s: length of the measured window, seconds; throughput_rps = ok / window_s;
    latency / ttft: p50/p95/p99 in ms of the ok requests (ttft only when streaming);
    late_ms_p99: how far behind its schedule the generator started requests (ms);
    generator_cpu_s: CPU seconds of the generator processes.
    """

    rate_rps: float
    issued: int
    all_issued: int
    ok: int
    errors: int
    error_kinds: dict[str, int]
    window_s: float
    latency: Percentiles
    ttft: Percentiles | None
    late_ms_p99: float
    generator_cpu_s: float
    cpu_s_per_request: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)

    @property
    def throughput_rps(self) -> float:
        return self.ok / self.window_s if self.window_s > 0 else 0.0

    @property
    def offered_rps(self) -> float:
        return self.issued / self.window_s if self.window_s > 0 else 0.0

    @property
    def error_ratio(self) -> float:
        return self.errors / self.issued if self.issued else 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "rate_rps": self.rate_rps,
            "offered_rps": round(self.offered_rps, 1),
            "throughput_rps": round(self.throughput_rps, 1),
            "issued": self.issued,
            "ok": self.ok,
            "errors": self.errors,
            "error_ratio": round(self.error_ratio, 4),
            "error_kinds": self.error_kinds,
            "latency": self.latency,
            "ttft": self.ttft,
            "late_ms_p99": self.late_ms_p99,
            "held": step_held(self),
            "cpu_s_per_request": self.cpu_s_per_request,
            "peak_rss_mb": self.peak_rss_mb,
        }


def merge_loads(rate_rps: float, parts: Sequence[Mapping[str, Any]]) -> LoadStep:
    """Merge the JSON outputs of the generator processes of one step (bench/openloop.py)."""
    if not parts:
        raise ValueError("no generator output to merge")
    latencies = sorted(x for p in parts for x in p["latencies_ms"])
    ttfts = sorted(x for p in parts for x in p.get("ttfts_ms", []))
    streaming = any(p.get("stream") for p in parts)
    kinds: dict[str, int] = {}
    for p in parts:
        for kind, count in p["error_kinds"].items():
            kinds[kind] = kinds.get(kind, 0) + int(count)
    return LoadStep(
        rate_rps=rate_rps,
        issued=sum(int(p["issued"]) for p in parts),
        all_issued=sum(int(p["all_issued"]) for p in parts),
        ok=sum(int(p["ok"]) for p in parts),
        errors=sum(int(p["errors"]) for p in parts),
        error_kinds=kinds,
        window_s=max(float(p["window_s"]) for p in parts),
        latency=percentiles(latencies),
        ttft=percentiles(ttfts) if streaming else None,
        late_ms_p99=round(max(float(p["late_ms_p99"]) for p in parts), 2),
        generator_cpu_s=round(sum(float(p["cpu_s"]) for p in parts), 3),
    )


def step_held(step: LoadStep) -> bool:
    """Errors <= 1 %, p99 <= 1 s, and >= 90 % of the nominal rate actually offered."""
    return (
        step.issued > 0
        and step.error_ratio <= MAX_ERROR_RATIO
        and step.latency["p99_ms"] <= MAX_P99_MS
        and step.offered_rps >= MIN_OFFERED_RATIO * step.rate_rps
    )


def sustained(steps: Sequence[LoadStep]) -> LoadStep | None:
    """The highest step held before the first one that broke (steps in ascending rate)."""
    best: LoadStep | None = None
    for step in steps:
        if not step_held(step):
            break
        best = step
    return best


def ladder(start_rps: float, cap_rps: float, factor: float = 2.0) -> list[float]:
    """Rates start, start*factor, ... up to cap (inclusive when hit exactly)."""
    if start_rps <= 0 or factor <= 1:
        raise ValueError("the ladder needs start > 0 and factor > 1")
    rates: list[float] = []
    rate = start_rps
    while rate <= cap_rps + 1e-9:
        rates.append(rate)
        rate *= factor
    return rates


def at_rate(steps: Sequence[LoadStep], rate_rps: float) -> LoadStep | None:
    return next((s for s in steps if math.isclose(s.rate_rps, rate_rps)), None)


def added_latency_ms(system: Percentiles | None, direct: Percentiles | None) -> Percentiles | None:
    """System minus the mock measured directly, per percentile (None when either is missing)."""
    if system is None or direct is None:
        return None
    return {key: round(system[key] - direct[key], 2) for key in system if key in direct}


def cpu_s_per_request(
    before_s: Mapping[str, float], after_s: Mapping[str, float], requests: int
) -> dict[str, float]:
    """CPU seconds per request of every process present before and after (4 decimals)."""
    n = max(1, requests)
    return {
        name: round((after_s[name] - before_s[name]) / n, 5) for name in before_s if name in after_s
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator rounded to 2 decimals; None when undefined."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, 2)


Verdict = Literal["met", "not met", "not measured"]


@dataclass(frozen=True)
class Target:
    """One acceptance target of issue 9: `measured` compared with `goal` by `direction`.

    `lower_bound`: the true value is above `measured` (e.g. a ratio whose denominator
    only has an upper bound because the other system held no step): enough to say
    "met" when the bound already reaches the goal, not enough to say "not met".
    """

    name: str
    goal: float
    direction: Literal[">=", "<="]
    unit: str
    measured: float | None
    lower_bound: bool = False

    @property
    def verdict(self) -> Verdict:
        if self.measured is None:
            return "not measured"
        if self.direction == ">=":
            if self.measured >= self.goal:
                return "met"
            return "not measured" if self.lower_bound else "not met"
        if self.lower_bound:
            return "not met" if self.measured > self.goal else "not measured"
        return "met" if self.measured <= self.goal else "not met"


def evaluate(targets: Sequence[Target]) -> list[dict[str, Any]]:
    return [
        {
            "target": t.name,
            "goal": f"{t.direction} {t.goal:g} {t.unit}".strip(),
            "measured": t.measured
            if t.measured is None or not t.lower_bound
            else f"> {t.measured:g}",
            "verdict": t.verdict,
        }
        for t in targets
    ]


def batch_phases(progress: Sequence[tuple[float, int]], n: int) -> dict[str, float | None]:
    """Where a batch's time goes, from its polled progress (s since the upload began,
    lines finished): the first line finished, the steady rate between 10 % and 90 % of
    the lines, and the tail from the last line counted to the batch's final poll."""

    def first_at(lines: float) -> float | None:
        return next((t for t, done in progress if done >= lines), None)

    first, p10, p90, last = first_at(1), first_at(n * 0.1), first_at(n * 0.9), first_at(n)
    steady = (
        round(0.8 * n / (p90 - p10)) if p10 is not None and p90 is not None and p90 > p10 else None
    )
    return {
        "first_line_s": first,
        "steady_lines_per_s": steady,
        "all_lines_counted_s": last,
        "final_after_last_line_s": round(progress[-1][0] - last, 2) if last and progress else None,
    }
