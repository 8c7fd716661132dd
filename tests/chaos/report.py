"""The chaos run's summary: printed by every run, written to docs/reliability.md by the
long one (between the results markers; the rest of the page is left as it is)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from tests.chaos.invariants import WEBHOOK_MISMATCH, Verdict
from tests.chaos.plan import ChaosForm, Fault

START = "<!-- chaos-results:start -->"
END = "<!-- chaos-results:end -->"
RELIABILITY_MD = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"


@dataclass(frozen=True, slots=True)
class RunFacts:
    form: ChaosForm
    seed: int
    plan: Sequence[Fault]
    submitted: int
    outcomes: Mapping[str, int]
    """Answers to the async submissions by status code or transport error."""
    batches_refused: Mapping[str, int]
    unplanned_exits: Sequence[str]
    processes: Mapping[int, str]
    """pid -> `<component>#<start>` (router ids carry the pid)."""
    timings_s: Mapping[str, float]
    duplicate_causes: Sequence[str] = ()
    """One line per cause of duplicate calls (tests/chaos/duplicates.py)."""
    duplicate_inherent_calls: int | None = None
    """Duplicate calls at-least-once allows: the result published, its commit lost."""


def usd(nano: int | None) -> str:
    return "n/a" if nano is None else f"${Decimal(nano) / Decimal(1_000_000_000)}"


def process_of(router_id: str, processes: Mapping[int, str]) -> str:
    """`host-pid-suffix` -> the component start that had that pid."""
    parts = router_id.rsplit("-", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return processes.get(int(parts[1]), router_id)
    return router_id


def summary(facts: RunFacts, v: Verdict) -> str:
    kills = Counter(f.target.split("-")[0] if f.target.startswith("router") else f.target
                    for f in facts.plan if f.kind == "kill")  # fmt: skip
    others = Counter(f.kind for f in facts.plan if f.kind != "kill")
    dup_pct = 100 * v.duplicate_rate
    outcomes = ", ".join(f"{k}: {n}" for k, n in sorted(facts.outcomes.items()))
    lines = [
        f"form {facts.form.name}, seed {facts.seed} (TOLLWAY_CHAOS_SEED={facts.seed} repeats it)",
        f"rounds {facts.form.rounds} x {facts.form.round_s:.0f} s of load at "
        f"{facts.form.rate_per_s:g} async req/s + a {facts.form.batch_lines}-line batch every "
        f"{facts.form.batch_every_s:g} s",
        f"kills (SIGKILL + restart): {sum(kills.values())} - "
        + ", ".join(f"{k} {n}" for k, n in sorted(kills.items())),
        "other faults: " + ", ".join(f"{k} {n}" for k, n in sorted(others.items())),
        f"unplanned exits (restarted by the watchdog): {len(facts.unplanned_exits)}"
        + (f" - {', '.join(facts.unplanned_exits)}" if facts.unplanned_exits else ""),
        f"async submitted {facts.submitted}; answers: {outcomes}",
        f"batches refused at submission: {dict(facts.batches_refused) or 0}",
        f"requests accepted: {v.requests_accepted} ({v.async_accepted} async, "
        f"{v.batch_lines_accepted} lines in {v.batches_accepted} batches); async final: "
        f"{v.succeeded} succeeded, {v.failed} failed",
        f"losses: {v.lost}",
        f"double-billed: {v.double_billed_count}",
        f"inconsistencies: {sum(len(x) for x in v.inconsistent.values())}",
        f"provider calls (attempts): {v.provider_calls}, billed {v.billed_calls}; "
        f"duplicate calls {v.duplicate_calls} ({dup_pct:.3f} %), of them billed "
        f"{v.duplicate_billed_calls}; duplicate executions {v.duplicate_executions}; "
        f"duplicate results on tollway.results {v.duplicate_results}",
        "duplicate calls by the process that made them: "
        + (
            ", ".join(
                f"{process_of(r, facts.processes)} {n}"
                for r, n in v.duplicate_calls_by_router.most_common()
            )
            or "none"
        ),
        "duplicate calls by cause (tests/chaos/duplicates.py):"
        + ("\n" + "\n".join(facts.duplicate_causes) if facts.duplicate_causes else " none"),
        f"webhooks whose status differs from the request's final state: "
        f"{len(v.inconsistent.get(WEBHOOK_MISMATCH, []))}",
        f"priced usage {usd(v.billed_nano_usd)} = catalogue price of the calls "
        f"{usd(v.expected_nano_usd)}; budget team:default:24h {usd(v.budget_spent_nano_usd)} "
        f"vs unique usage {usd(v.budget_expected_nano_usd)}; usage records re-priced on the "
        f"topic (absorbed by the sinks): {v.usage_topic_duplicates}",
        "ClickHouse count()/uniqExact: "
        + ", ".join(f"{t} {c.rows}/{c.unique_keys}" for t, c in v.ch_counts.items())
        + (
            f"; attempts count()/uniqExact(request_id, attempt) "
            f"{v.ch_attempts_by_number.rows}/{v.ch_attempts_by_number.unique_keys}"
            if v.ch_attempts_by_number
            else ""
        ),
        f"webhooks: {v.webhook_deliveries} deliveries, {v.webhook_redeliveries} repeated (same id)",
        "provider answers with no attempt record (calls cut by the mock's kill/hang, or "
        f"whose router died before publishing): {v.unrecorded_provider_answers}",
        "timings: " + ", ".join(f"{k} {s:.0f} s" for k, s in facts.timings_s.items()),
    ]
    return "\n".join(lines)


def write_reliability(facts: RunFacts, v: Verdict, path: Path = RELIABILITY_MD) -> None:
    """Rewrite the results section of docs/reliability.md with this run's summary."""
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    problems = v.problems()
    verdict = "all invariants held" if not problems else "VIOLATED: " + "; ".join(problems)
    section = "\n".join(
        [
            START,
            f"Last long run: {day}, `make chaos` (TOLLWAY_CHAOS_FORM=long, a fresh broker), "
            f"{verdict}.",
            "",
            "| | |",
            "|---|---|",
            f"| rounds | {facts.form.rounds} x {facts.form.round_s:.0f} s |",
            f"| kills | {sum(1 for f in facts.plan if f.kind == 'kill')} |",
            f"| requests accepted | {v.requests_accepted} |",
            f"| losses | {v.lost} |",
            f"| double-billed | {v.double_billed_count} |",
            f"| duplicate provider calls | {v.duplicate_calls} ({100 * v.duplicate_rate:.3f} %) |",
            *(
                [
                    f"| of them published, commit lost (at-least-once) | "
                    f"{facts.duplicate_inherent_calls} |"
                ]
                if facts.duplicate_inherent_calls is not None
                else []
            ),
            f"| webhook status mismatches | {len(v.inconsistent.get(WEBHOOK_MISMATCH, []))} |",
            "",
            "```text",
            summary(facts, v),
            "```",
            END,
        ]
    )
    text = path.read_text("utf-8")
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.DOTALL)
    assert pattern.search(text), f"{path} has no results markers"
    path.write_text(pattern.sub(lambda _: section, text), "utf-8")
