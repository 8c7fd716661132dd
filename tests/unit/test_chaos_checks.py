"""The chaos suite's pure parts: the seeded fault schedule and the invariants' verdict.

The chaos run itself (tests/chaos) needs the whole stack; these prove, without it, that
its schedule is what the forms promise and that each invariant catches what it names.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, cast

import pytest

from schemas.records import Attempt, Result
from tests.chaos.invariants import (
    BatchOutcome,
    Evidence,
    TableCounts,
    WebhookSeen,
    judge,
)
from tests.chaos.plan import EDGE_S, KILLED_KINDS, LONG, ROUTERS, SHORT, ChaosForm, build_plan
from tests.chaos.report import END, START, RunFacts, process_of, write_reliability


@pytest.mark.parametrize("form", [SHORT, LONG], ids=lambda f: f.name)
def test_every_round_kills_every_kind_once_away_from_its_edges(form: ChaosForm) -> None:
    plan = build_plan(form, seed=7)
    assert plan == build_plan(form, seed=7)
    assert plan != build_plan(form, seed=8)
    assert [f.at_s for f in plan] == sorted(f.at_s for f in plan)
    for rnd in range(form.rounds):
        mine = [f for f in plan if f.round == rnd]
        kills = [f.target for f in mine if f.kind == "kill"]
        kinds = ["router" if k in ROUTERS else k for k in kills]
        assert sorted(kinds) == sorted(KILLED_KINDS)
        frozen = [f.target for f in mine if f.kind == "freeze"]
        assert len(frozen) == 1
        assert frozen[0] in ROUTERS
        assert frozen[0] not in kills, "the frozen router must wake up, not be killed"
        for fault in mine:
            assert rnd * form.round_s + EDGE_S <= fault.at_s
            assert fault.at_s + fault.hold_s <= (rnd + 1) * form.round_s
    kinds_in_plan = Counter(f.kind for f in plan)
    assert kinds_in_plan["clickhouse_down"] == 1
    assert kinds_in_plan["broker_restart"] == (1 if form.broker_restart_round is not None else 0)
    assert kinds_in_plan["provider_down"] == kinds_in_plan["provider_hang"] == form.rounds


def test_the_long_form_holds_clickhouse_down_a_minute_and_restarts_the_broker() -> None:
    plan = build_plan(LONG, seed=1)
    assert [f.hold_s for f in plan if f.kind == "clickhouse_down"] == [60.0]
    assert [f.target for f in plan if f.kind == "broker_restart"] == ["kafka"]
    assert LONG.load_s == 600.0
    assert SHORT.load_s <= 90.0


# --- the verdict --------------------------------------------------------------------------


def result(request_id: str, execution_id: str, status: str = "succeeded") -> Result:
    value = {"request_id": request_id, "execution_id": execution_id, "status": status}
    return cast(Result, value)  # only the fields the verdict reads


def attempt(request_id: str, execution_id: str, n: int = 1, tokens: int = 10) -> Attempt:
    value = {
        "request_id": request_id,
        "attempt_id": f"{execution_id}.{n}",
        "attempt": n,
        "outcome": "ok" if tokens else "error",
        "prompt_tokens": tokens,
        "completion_tokens": tokens,
        "router_id": f"vm-{execution_id}-abc",
    }
    return cast(Attempt, value)


def webhook_id(key: str) -> str:
    return "msg_" + key


def clean_evidence() -> dict[str, Any]:
    """Two async requests and a one-line batch, each run once and stored once."""
    line = "breq_b1_1"
    return {
        "accepted": ["req_a", "req_b"],
        "polled": {"req_a": "succeeded", "req_b": "failed"},
        "results": [
            result("req_a", "ea"),
            result("req_b", "eb", "failed"),
            result(line, "el"),
        ],
        "run_attempts": [
            attempt("req_a", "ea"),
            attempt("req_b", "eb", tokens=0),
            attempt(line, "el"),
        ],
        "all_attempt_ids": frozenset({"ea.1", "eb.1", "el.1"}),
        "batches": [BatchOutcome("batch_b1", ("c1",), (line,), "completed", ("c1",))],
        "ch_requests": {"req_a": ["ea"], "req_b": ["eb"], line: ["el"]},
        "ch_attempt_rows": {"ea.1": 1, "eb.1": 1, "el.1": 1},
        "ch_usage_rows": {"req_a:ea.1": [("ea.1", 300)], f"{line}:el.1": [("el.1", 150)]},
        "ch_counts": {"requests": TableCounts(3, 3), "usage": TableCounts(2, 2)},
        "ch_attempts_by_number": TableCounts(3, 3),
        "webhooks": [
            WebhookSeen(
                "req_a", webhook_id("request:req_a"), "request.succeeded", "succeeded", True
            ),
            WebhookSeen("req_b", webhook_id("request:req_b"), "request.failed", "failed", True),
            WebhookSeen(
                "batch_b1",
                webhook_id("batch:batch_b1:completed"),
                "batch.completed",
                "completed",
                True,
            ),
        ],
        "webhook_id_of": webhook_id,
        "price_nano_usd": lambda a: 300 if a["request_id"] == "req_a" else 150,
        "budget_spent_nano_usd": 450,
        "budget_expected_nano_usd": 450,
    }


def test_a_clean_run_has_no_problem_and_counts_what_was_accepted() -> None:
    verdict = judge(Evidence(**clean_evidence()))
    assert verdict.problems() == []
    assert (verdict.async_accepted, verdict.batch_lines_accepted) == (2, 1)
    assert (verdict.succeeded, verdict.failed) == (1, 1)
    assert (verdict.provider_calls, verdict.billed_calls) == (3, 2)
    assert verdict.billed_nano_usd == verdict.expected_nano_usd == 450
    assert verdict.duplicate_calls == 0


def test_a_reexecution_is_a_duplicate_not_a_problem_when_the_sinks_keep_the_first() -> None:
    ev = clean_evidence()
    ev["results"].append(result("req_a", "ea2"))
    ev["run_attempts"].append(attempt("req_a", "ea2"))
    ev["all_attempt_ids"] |= {"ea2.1"}
    ev["ch_attempt_rows"]["ea2.1"] = 1
    ev["ch_usage_rows"]["req_a:ea2.1"] = [("ea2.1", 300)]
    ev["webhooks"].append(ev["webhooks"][0])
    verdict = judge(Evidence(**ev))
    assert verdict.problems() == []
    assert (verdict.duplicate_calls, verdict.duplicate_billed_calls) == (1, 1)
    assert verdict.duplicate_calls_by_router == {"vm-ea2-abc": 1}
    assert (verdict.duplicate_executions, verdict.duplicate_results) == (1, 1)
    assert verdict.webhook_redeliveries == 1


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda ev: ev["polled"].update(req_a="queued"), "LOST async: no final state"),
        (lambda ev: ev["results"].pop(0), "LOST async: no result on tollway.results"),
        (lambda ev: ev["ch_requests"].pop("req_b"), "LOST async: no row in ClickHouse"),
        (lambda ev: ev["ch_requests"].update(req_a=["ea", "ea"]), "DOUBLE-BILLED async: several"),
        (lambda ev: ev["ch_requests"].update(req_a=["late"]), "INCONSISTENT async: ClickHouse row"),
        (lambda ev: ev["polled"].update(req_a="failed"), "INCONSISTENT async: poll disagrees"),
        (
            lambda ev: ev.update(
                batches=[BatchOutcome("batch_b1", ("c1",), ("breq_b1_1",), "in_progress", ())]
            ),
            "LOST batch: not completed",
        ),
        (
            lambda ev: ev.update(
                batches=[
                    BatchOutcome("batch_b1", ("c1",), ("breq_b1_1",), "completed", ("c1", "c1"))
                ]
            ),
            "DOUBLE-BILLED batch line: more than once",
        ),
        (lambda ev: ev["ch_attempt_rows"].pop("eb.1"), "LOST attempt: not in ClickHouse"),
        (lambda ev: ev["ch_usage_rows"].pop("req_a:ea.1"), "LOST call that consumed tokens"),
        (
            lambda ev: ev["ch_usage_rows"]["req_a:ea.1"].append(("ea.1", 300)),
            "DOUBLE-BILLED call: more than one usage row",
        ),
        (
            lambda ev: ev["ch_usage_rows"].update(ghost=[("zz.1", 5)]),
            "DOUBLE-BILLED usage row without a provider call",
        ),
        (
            lambda ev: ev["ch_counts"].update(usage=TableCounts(3, 2)),
            "ClickHouse usage: count() 3 != uniqExact 2",
        ),
        (lambda ev: ev.update(price_nano_usd=lambda a: 1), "priced usage 450 nano-USD != "),
        (lambda ev: ev.update(budget_spent_nano_usd=900), "budget team:default:24h states 900"),
        (lambda ev: ev["webhooks"].pop(1), "LOST webhook: never delivered: 1, e.g. ['req_b']"),
        (
            lambda ev: ev["webhooks"].append(
                WebhookSeen("req_a", "msg_other", "request.succeeded", "succeeded", True)
            ),
            "INCONSISTENT webhook: id not the event's stable id",
        ),
        (
            lambda ev: ev["webhooks"].append(
                WebhookSeen("req_a", "msg_request:req_a", "request.succeeded", "succeeded", False)
            ),
            "INCONSISTENT webhook: signature did not verify",
        ),
        (
            lambda ev: ev["webhooks"].append(
                WebhookSeen("req_a", "msg_request:req_a", "request.failed", "failed", True)
            ),
            "INCONSISTENT webhook: status differs",
        ),
    ],
)
def test_each_invariant_catches_what_it_names(damage: Any, expected: str) -> None:
    ev = clean_evidence()
    damage(ev)
    problems = judge(Evidence(**ev)).problems()
    assert any(p.startswith(expected) for p in problems), problems


# --- the summary -------------------------------------------------------------------------


def test_a_router_id_names_the_process_start_that_made_the_call() -> None:
    processes = {123: "router-1#2"}
    assert process_of("my-host-123-abcdef", processes) == "router-1#2"
    assert process_of("vm-999-abcdef", processes) == "vm-999-abcdef"


def test_the_long_run_rewrites_only_the_results_section(tmp_path: Path) -> None:
    page = tmp_path / "reliability.md"
    page.write_text(f"# Reliability\nintro\n\n{START}\nold results\n{END}\n\nfooter\n", "utf-8")
    verdict = judge(Evidence(**clean_evidence()))
    facts = RunFacts(
        form=LONG,
        seed=42,
        plan=build_plan(LONG, 42),
        submitted=3,
        outcomes={"202": 2, "ConnectError": 1},
        batches_refused={},
        unplanned_exits=[],
        processes={},
        timings_s={"settle": 3.0},
    )
    write_reliability(facts, verdict, page)
    text = page.read_text("utf-8")
    assert text.startswith("# Reliability\nintro\n\n")
    assert text.endswith(f"{END}\n\nfooter\n")
    assert "old results" not in text
    assert "all invariants held" in text
    assert "| kills | 28 |" in text
    assert "seed 42" in text
