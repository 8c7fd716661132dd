"""Chaos: the whole pipeline as OS processes, killed, frozen and starved under steady load.

    load   async requests at a constant rate, each with a webhook (callback_url to a
           loopback receiver), and a batch (Files + Batches API) every few seconds
    faults every kind of process SIGKILLed at a seeded random moment and restarted
           (ingress, a router, cost, budget, loader, callbacks, batches); a router
           frozen (SIGSTOP) past its poll interval; the embedded ClickHouse down; the
           mock provider down, then hung; the webhook receiver failing; in the long form
           also the Kafka broker restarted (deploy/kafka/kafka.sh stop/start)
    then   everything restarted, the pipeline given `settle_timeout_s` to catch up, and
           the invariants of invariants.py checked: losses = 0, double-billed = 0, sinks
           idempotent, money equal to the catalogue price of the calls, every webhook
           delivered under its stable id; duplicate provider calls reported

Forms (plan.py): `short` (default; `make test`): one round of 65 s, one kill per process
kind, ClickHouse down 10 s, no broker restart. `long` (`make chaos`): four rounds of
150 s, a broker restart, ClickHouse down 60 s; it rewrites the results section of
docs/reliability.md. `TOLLWAY_CHAOS_SEED=<n>` repeats a run's schedule.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass

import httpx
import pytest

from schemas import topics
from schemas.records import Attempt
from tests.chaos import evidence
from tests.chaos.duplicates import Mark, breakdown
from tests.chaos.faults import FaultRunner
from tests.chaos.invariants import (
    BatchOutcome,
    Evidence,
    Verdict,
    WebhookSeen,
    consumed_tokens,
    judge,
)
from tests.chaos.load import AsyncLoad, BatchLoad
from tests.chaos.plan import FORMS, ChaosForm, Fault, build_plan
from tests.chaos.report import RunFacts, process_of, summary, write_reliability
from tests.chaos.stack import ChaosStack
from workers.callbacks.events import message_id
from workers.cost.catalogue import Catalogue, load_catalogue
from workers.cost.usage import price_attempt

pytestmark = pytest.mark.chaos


def chosen_form() -> ChaosForm:
    name = os.environ.get("TOLLWAY_CHAOS_FORM", "short")
    assert name in FORMS, f"TOLLWAY_CHAOS_FORM must be one of {sorted(FORMS)}, not {name!r}"
    return FORMS[name]


def chosen_seed() -> int:
    given = os.environ.get("TOLLWAY_CHAOS_SEED")
    return int(given) if given else random.SystemRandom().randrange(1_000_000)


@dataclass
class Run:
    chaos: ChaosStack
    bootstrap: str
    form: ChaosForm
    starts: evidence.Offsets
    load: AsyncLoad
    batches: BatchLoad
    faults: FaultRunner


async def settle(run: Run, deadline: float) -> tuple[dict[str, str], list[BatchOutcome]]:
    """Wait (until `deadline`) for every accepted request's outcome to reach every sink."""
    url = run.chaos.url
    polled = await evidence.poll_until_final(url, run.load.accepted, deadline)
    batches = await evidence.batch_outcomes(url, run.batches.accepted, deadline)
    assert run.chaos.clickhouse is not None
    ch = run.chaos.clickhouse
    wanted_rows = set(run.load.accepted) | {i for b in batches for i in b.request_ids}
    wanted_hooks = set(run.load.accepted) | {b.batch_id for b in batches}
    while time.monotonic() < deadline:
        attempts = await evidence.attempts_since(run.bootstrap, run.starts)
        billed = {a["attempt_id"] for a in attempts if consumed_tokens(a)}
        usage = await asyncio.to_thread(ch.usage_rows)
        priced = {attempt_id for rows in usage.values() for attempt_id, _ in rows}
        stored = set(await asyncio.to_thread(ch.requests))  # an IN list would pass 256 KiB
        hooked = {d.subject_id for d in run.chaos.receiver.deliveries}
        state = await evidence.budget_spent(run.bootstrap)
        expected, _ = evidence.expected_budget_nano_usd(
            await evidence.all_usage(run.bootstrap), time.time_ns() // 1_000_000
        )
        if (
            billed <= priced
            and stored >= wanted_rows
            and hooked >= wanted_hooks
            and state is not None
            and state["spent_nano_usd"] == expected
        ):
            break
        await asyncio.sleep(2.0)
    return polled, batches


async def gather_evidence(
    run: Run, polled: dict[str, str], batches: list[BatchOutcome]
) -> Evidence:
    ch = run.chaos.clickhouse
    assert ch is not None
    catalogue = load_catalogue()
    usage = await evidence.all_usage(run.bootstrap)
    expected, repeats = evidence.expected_budget_nano_usd(usage, time.time_ns() // 1_000_000)
    state = await evidence.budget_spent(run.bootstrap)
    all_attempts = await evidence.attempts_since(run.bootstrap, None)
    return Evidence(
        accepted=run.load.accepted,
        polled=polled,
        results=await evidence.results_since(run.bootstrap, run.starts),
        run_attempts=await evidence.attempts_since(run.bootstrap, run.starts),
        all_attempt_ids=frozenset(a["attempt_id"] for a in all_attempts),
        batches=batches,
        ch_requests=await asyncio.to_thread(ch.requests),
        ch_attempt_rows=await asyncio.to_thread(ch.attempt_rows),
        ch_usage_rows=await asyncio.to_thread(ch.usage_rows),
        ch_counts=await asyncio.to_thread(ch.counts),
        ch_attempts_by_number=await asyncio.to_thread(ch.attempts_by_number),
        webhooks=[
            WebhookSeen(d.subject_id, d.webhook_id, d.event_type, d.status, d.verified)
            for d in run.chaos.receiver.deliveries
        ],
        webhook_id_of=message_id,
        price_nano_usd=lambda a: priced_nano_usd(a, catalogue),
        budget_spent_nano_usd=None if state is None else state["spent_nano_usd"],
        budget_expected_nano_usd=expected,
        usage_topic_duplicates=repeats,
        mock_answered=await run.faults.mock_answered_total(),
    )


def priced_nano_usd(attempt: Attempt, catalogue: Catalogue) -> int:
    usage = price_attempt(attempt, catalogue, priced_at_ms=0)
    return 0 if usage is None else usage["cost_nano_usd"]


async def exercise(
    run: Run, plan: tuple[Fault, ...], seed: int
) -> tuple[dict[str, str], list[BatchOutcome]]:
    """Load and faults together, then the settle time, with the watchdog on throughout.
    A failure anywhere cancels the rest (TaskGroup) and always stops the watchdog before
    the stack is stopped, so nothing restarts what the teardown ends."""
    stop_watchdog = asyncio.Event()
    watchdog = asyncio.create_task(run.faults.watchdog(stop_watchdog))
    timings = run.chaos.timings_s
    try:
        t_load = time.monotonic()
        async with asyncio.TaskGroup() as group:
            group.create_task(run.load.run(run.form.load_s, f"chaos {seed}"))
            group.create_task(run.batches.run(run.form.load_s, run.form.batch_every_s))
            group.create_task(run.faults.run(plan))
        timings["load_and_faults"] = round(time.monotonic() - t_load, 1)
        t_settle = time.monotonic()
        settled = await settle(run, time.monotonic() + run.form.settle_timeout_s)
        timings["settle"] = round(time.monotonic() - t_settle, 1)
        return settled
    finally:
        stop_watchdog.set()
        await watchdog
        await run.faults.quiesce()


async def reset_mock_stats(chaos: ChaosStack) -> None:
    async with httpx.AsyncClient(timeout=5.0) as client:
        await client.delete(f"http://127.0.0.1:{chaos.stack.mock_port}/stats")


async def test_nothing_accepted_is_lost_and_nothing_is_billed_twice_under_chaos(
    kafka_bootstrap: str,
) -> None:
    form, seed = chosen_form(), chosen_seed()
    plan = build_plan(form, seed)
    print(f"\nchaos form {form.name}, seed {seed}; plan:", flush=True)
    for fault in plan:
        print("  " + fault.describe(), flush=True)
    chaos = ChaosStack(kafka_bootstrap)
    verdict: Verdict | None = None
    t0 = time.monotonic()
    try:
        await chaos.start()
        starts = await evidence.snapshot(
            kafka_bootstrap,
            [topics.RESULTS, topics.ATTEMPTS, topics.REQUESTS_INTERACTIVE, topics.REQUESTS_BATCH],
        )
        await reset_mock_stats(chaos)
        run = Run(
            chaos=chaos,
            bootstrap=kafka_bootstrap,
            form=form,
            starts=starts,
            load=AsyncLoad(chaos.url, chaos.receiver.url, form.rate_per_s),
            batches=BatchLoad(chaos.url, form.batch_lines),
            faults=FaultRunner(chaos.stack, chaos.receiver),
        )
        polled, batches = await exercise(run, plan, seed)
        gathered = await gather_evidence(run, polled, batches)
        verdict = judge(gathered)
        load_start_ms = time.time_ns() // 1_000_000 - int(
            (time.monotonic() - run.faults.started) * 1000
        )
        causes = breakdown(
            gathered.results,
            gathered.run_attempts,
            lambda router_id: process_of(router_id, run.faults.processes),
            [Mark(load_start_ms + int(e.at_s * 1000), e.what) for e in run.faults.events],
            frozenset(await evidence.republished_requests(kafka_bootstrap, run.starts)),
        )
        chaos.timings_s["total_before_stop"] = round(time.monotonic() - t0, 1)
        facts = RunFacts(
            form=form,
            seed=seed,
            plan=plan,
            submitted=run.load.submitted,
            outcomes=dict(run.load.outcomes),
            batches_refused=dict(run.batches.refused),
            processes=run.faults.processes,
            unplanned_exits=[f"{u.name} at t+{u.at_s:.0f}s" for u in run.faults.unplanned],
            timings_s=chaos.timings_s,
            duplicate_causes=tuple(causes.lines()),
            duplicate_inherent_calls=causes.inherent_calls,
        )
        print("\n" + summary(facts, verdict), flush=True)
        for event in run.faults.events:
            print(f"  t+{event.at_s:6.1f}s {event.what}", flush=True)
        for exit_ in run.faults.unplanned:
            print(f"UNPLANNED EXIT {exit_.name} (rc {exit_.returncode}):\n{exit_.log_tail}")
        if form.name == "long":
            write_reliability(facts, verdict)
    finally:
        await chaos.stop()
    assert verdict is not None
    problems = verdict.problems()
    assert not problems, f"seed {seed}:\n" + "\n".join(problems)
    assert verdict.requests_accepted > 0.5 * run.load.submitted, "too little was accepted"
