"""The soak's summary: printed by every run, and written into docs/reliability.md between
the soak markers (the chaos run owns its own markers; the rest of the page is left as it
is). The text is built by pure functions; only `write_reliability` touches the file."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.soak.memory import Bound, ProcessMemory, table_markdown, table_text

START = "<!-- soak-results:start -->"
END = "<!-- soak-results:end -->"
RELIABILITY_MD = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"


@dataclass(frozen=True, slots=True)
class SoakFacts:
    day: str
    """UTC date of the run, YYYY-MM-DD."""
    duration_s: float
    """The load's length (the settle time and the checks come after it)."""
    rate_per_s: float
    mix: str
    batches: str
    sample_every_s: float
    submitted: Mapping[str, int]
    """Kind (async, sync, stream) -> requests started."""
    nominal: int
    """Requests the rate asked for; more than `submitted` when the generator was starved."""
    late_s_max: float
    outcomes: Mapping[str, int]
    requests_accepted: int
    """Async 202s plus batch lines, as the chaos verdict counts them."""
    served: int
    """Sync and streamed requests answered 200 in full."""
    correctness_problems: Sequence[str]
    exits: Sequence[str]
    memory: Sequence[ProcessMemory]
    bound: Bound

    @property
    def memory_over(self) -> list[ProcessMemory]:
        return [p for p in self.memory if p.judged and not p.ok]

    @property
    def passed(self) -> bool:
        return not self.memory_over and not self.correctness_problems and not self.exits


def verdict_line(facts: SoakFacts) -> str:
    if facts.passed:
        return "PASSED: every process within the bound, no loss, no double billing, no exit"
    parts = [f"{p.name} over the bound" for p in facts.memory_over]
    parts += [f"{len(facts.correctness_problems)} correctness problem(s)"] * bool(
        facts.correctness_problems
    )
    parts += [f"{len(facts.exits)} process exit(s)"] * bool(facts.exits)
    return "FAILED: " + ", ".join(parts)


def bound_line(bound: Bound, duration_s: float) -> str:
    return (
        f"bound after a {bound.warmup_s(duration_s):.0f} s warm-up: growth (median of the last "
        f"{bound.level_window_s:.0f} s - median of the first {bound.level_window_s:.0f} s after "
        f"the warm-up) < max({bound.growth_mb:g} MB, {100 * bound.growth_fraction:g} %), "
        f"least-squares slope < {bound.slope_mb_per_h:g} MB/h (judged when the window is >= "
        f"{bound.min_slope_window_s:.0f} s)"
    )


def summary(facts: SoakFacts) -> str:
    total = sum(facts.submitted.values())
    lines = [
        f"memory soak {facts.day}: {facts.duration_s / 60:g} min of load at "
        f"{facts.rate_per_s:g} req/s ({facts.mix}) + {facts.batches}; RSS every "
        f"{facts.sample_every_s:g} s from /proc/<pid>/status",
        "submitted: "
        + ", ".join(f"{k} {n}" for k, n in sorted(facts.submitted.items()))
        + f" (total {total} of the nominal {facts.nominal}; latest start "
        f"{facts.late_s_max:.1f} s behind schedule)",
        "answers: " + ", ".join(f"{k}: {n}" for k, n in sorted(facts.outcomes.items())),
        f"accepted (async + batch lines) {facts.requests_accepted}; served in full (sync + "
        f"stream) {facts.served}",
        "correctness: "
        + ("; ".join(facts.correctness_problems) or "no loss, no double billing, sinks idempotent"),
        "process exits: " + (", ".join(facts.exits) or "none"),
        bound_line(facts.bound, facts.duration_s),
        "",
        table_text(facts.memory),
        "",
        verdict_line(facts),
    ]
    return "\n".join(lines)


def section(facts: SoakFacts) -> str:
    """The text between the soak markers (markers included)."""
    return "\n".join(
        [
            START,
            f"Last soak: {facts.day}, `make soak`, {facts.duration_s / 60:g} min at "
            f"{facts.rate_per_s:g} req/s. **{verdict_line(facts)}.**",
            "",
            "MB are MiB (2^20 bytes). start, warm, end, growth and slope are of the memory a "
            "process holds, VmRSS minus its file-backed pages (RssFile); start = first sample, "
            "warm = median of the minute after the warm-up, end = median of the last minute; "
            "peak = largest VmHWM (all of VmRSS); file-backed = RssFile at the first and the "
            "last sample, reported, not judged (tests/soak/memory.py).",
            "",
            table_markdown(facts.memory),
            "",
            "```text",
            summary(facts),
            "```",
            END,
        ]
    )


def replace_section(text: str, new_section: str) -> str:
    """`text` with the part between the soak markers replaced by `new_section`."""
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.DOTALL)
    assert pattern.search(text), "no soak results markers"
    return pattern.sub(lambda _: new_section, text)


def write_reliability(facts: SoakFacts, path: Path = RELIABILITY_MD) -> None:
    path.write_text(replace_section(path.read_text("utf-8"), section(facts)), "utf-8")
