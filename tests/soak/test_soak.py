"""Memory soak: the whole pipeline as OS processes under steady load, RSS of each sampled.

    stack  the chaos suite's (tests/chaos/stack.py): mock provider, 2 routers, embedded
           ClickHouse server, loader, cost, budget, batches, callbacks, ingress, each its
           own process, and the loopback webhook receiver; no fault is injected
    load   an open-loop constant arrival rate (`TOLLWAY_SOAK_RATE`, default 20 req/s)
           mixing async with callback_url, sync and streamed chat (traffic.py), and a
           small batch (`TOLLWAY_SOAK_BATCH_LINES`, 20 lines) every
           `TOLLWAY_SOAK_BATCH_EVERY_S` (60 s), for `TOLLWAY_SOAK_MINUTES` (default 30)
    sample VmRSS, VmHWM, RssFile of every process from /proc/<pid>/status every
           `TOLLWAY_SOAK_SAMPLE_S` (10 s), also the Kafka broker's JVM and this driver
           (reported for information, not judged)
    then   the chaos suite's settle and invariants (nothing lost, nothing billed twice,
           sinks idempotent, webhooks delivered), sync/streamed answers accounted
           (served.py), and each process's growth after the warm-up judged against the
           bound in memory.py

It fails when a process grows past the bound, an invariant breaks or a process exits.
`TOLLWAY_SOAK_WRITE_DOCS=1` (set by `make soak`) rewrites the soak section of
docs/reliability.md; the raw samples are kept in `<state dir>/soak/rss.json` (and, as
they are taken, in `rss-samples.jsonl`).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from deploy.stack import STATE_DIR
from schemas import topics
from tests.chaos import evidence
from tests.chaos.faults import FaultRunner
from tests.chaos.invariants import judge
from tests.chaos.load import BatchLoad
from tests.chaos.plan import SHORT
from tests.chaos.stack import ChaosStack
from tests.chaos.test_chaos import Run, gather_evidence, reset_mock_stats, settle
from tests.soak.clickhouse_probe import ClickHouseProbe
from tests.soak.memory import Bound, assess
from tests.soak.report import SoakFacts, summary, write_reliability
from tests.soak.sampler import RssSampler
from tests.soak.served import served_problems
from tests.soak.traffic import MIX, MixedLoad


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


MINUTES = _env_float("TOLLWAY_SOAK_MINUTES", 30.0)
RATE_PER_S = _env_float("TOLLWAY_SOAK_RATE", 20.0)
SAMPLE_S = _env_float("TOLLWAY_SOAK_SAMPLE_S", 10.0)
BATCH_EVERY_S = _env_float("TOLLWAY_SOAK_BATCH_EVERY_S", 60.0)
BATCH_LINES = int(_env_float("TOLLWAY_SOAK_BATCH_LINES", 20))
SETTLE_S = 600.0
"""At most; a dispatcher that fell behind on a loaded machine catches up within it."""
SOAK_DIR = STATE_DIR / "soak"
BROKER = "kafka-broker (JVM)"
DRIVER = "soak driver (this pytest)"
INFO_ONLY = frozenset({BROKER, DRIVER})
"""The broker's JVM heap grows to its -Xmx by design, and the driver keeps every id it was
given: both are reported, neither is Tollway's to bound."""

pytestmark = [pytest.mark.soak, pytest.mark.timeout(MINUTES * 60 + SETTLE_S + 600)]


def broker_pid() -> int | None:
    """The broker's pid from kafka.sh's pid file (TOLLWAY_KAFKA_DIR)."""
    pidfile = Path(os.environ["TOLLWAY_KAFKA_DIR"]) / "kafka.pid"
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def targets(chaos: ChaosStack) -> dict[str, int | None]:
    found: dict[str, int | None] = {
        c.name: c.process.pid if c.process is not None and c.alive() else None
        for c in chaos.stack.components
    }
    found[BROKER] = broker_pid()
    found[DRIVER] = os.getpid()
    return found


def mix_text() -> str:
    shares = {k: MIX.count(k) * 100 // len(MIX) for k in dict.fromkeys(MIX)}
    return ", ".join(f"{share} % {kind}" for kind, share in shares.items())


def keep_samples(sampler: RssSampler, probe: ClickHouseProbe, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = {
        name: [[s.at_s, s.rss_kb, s.hwm_kb, s.file_kb] for s in samples]
        for name, samples in sampler.series.items()
    }
    kept = {
        "pids": sampler.pids,
        "at_s_rss_kb_hwm_kb_file_kb": raw,
        "clickhouse_internals": probe.samples,
        "clickhouse_probe_errors": probe.errors,
    }
    path.write_text(json.dumps(kept), "utf-8")


async def test_no_process_grows_beyond_the_bound_under_steady_load(kafka_bootstrap: str) -> None:
    duration_s = MINUTES * 60
    chaos = ChaosStack(kafka_bootstrap, workdir=SOAK_DIR)
    facts: SoakFacts | None = None
    answered = 0
    try:
        await chaos.start()
        starts = await evidence.snapshot(kafka_bootstrap, [topics.RESULTS, topics.ATTEMPTS])
        await reset_mock_stats(chaos)
        load = MixedLoad(chaos.url, chaos.receiver.url, RATE_PER_S)
        batches = BatchLoad(chaos.url, BATCH_LINES)
        SOAK_DIR.mkdir(parents=True, exist_ok=True)
        samples_log = SOAK_DIR / "rss-samples.jsonl"
        samples_log.unlink(missing_ok=True)
        sampler = RssSampler(lambda: targets(chaos), SAMPLE_S, log_path=samples_log)
        assert chaos.clickhouse is not None
        probe = ClickHouseProbe(chaos.clickhouse.client, started=sampler.started)
        for component in chaos.stack.components:  # each is one process, nothing forked
            assert component.process is not None
        print(f"\nsoak: {MINUTES:g} min at {RATE_PER_S:g} req/s; pids {targets(chaos)}")
        stop_sampling = asyncio.Event()
        sampling = asyncio.gather(sampler.run(stop_sampling), probe.run(stop_sampling))
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(load.run(duration_s, "soak"))
                group.create_task(batches.run(duration_s, BATCH_EVERY_S))
        finally:
            stop_sampling.set()
            await sampling
        keep_samples(sampler, probe, SOAK_DIR / "rss.json")
        t_settle = time.monotonic()
        run = Run(
            chaos=chaos,
            bootstrap=kafka_bootstrap,
            form=SHORT,  # settle() and gather_evidence() do not read the form
            starts=starts,
            load=load.asyncs,
            batches=batches,
            faults=FaultRunner(chaos.stack, chaos.receiver),  # no fault: its mock counters
        )
        polled, batch_outcomes = await settle(run, time.monotonic() + SETTLE_S)
        found = await gather_evidence(run, polled, batch_outcomes)
        verdict = judge(found)
        result_ids = {r["request_id"] for r in found.results}
        served = served_problems(load.served, result_ids, found.ch_requests)
        problems = verdict.problems() + [
            f"{what}: {len(ids)}, e.g. {ids[:5]}" for what, ids in served.items()
        ]
        bound = Bound()
        facts = SoakFacts(
            day=datetime.now(UTC).strftime("%Y-%m-%d"),
            duration_s=duration_s,
            rate_per_s=RATE_PER_S,
            mix=mix_text(),
            batches=f"a {BATCH_LINES}-line batch every {BATCH_EVERY_S:g} s",
            sample_every_s=SAMPLE_S,
            submitted=dict(load.submitted),
            nominal=load.nominal,
            late_s_max=load.late_s_max,
            outcomes=load.all_outcomes(),
            requests_accepted=verdict.requests_accepted,
            served=len(load.served),
            correctness_problems=problems,
            exits=sampler.exits,
            memory=[
                assess(name, samples, duration_s, bound, judged=name not in INFO_ONLY)
                for name, samples in sampler.series.items()
            ],
            bound=bound,
        )
        answered = len(load.asyncs.accepted) + len(load.served)
        print("\n" + summary(facts), flush=True)
        print(f"clickhouse internals: {probe.first_last()}; errors: {probe.errors}", flush=True)
        print(f"settle and checks took {time.monotonic() - t_settle:.0f} s", flush=True)
        if os.environ.get("TOLLWAY_SOAK_WRITE_DOCS") == "1":
            write_reliability(facts)
    finally:
        await chaos.stop()
    assert facts is not None
    assert facts.passed, summary(facts)
    assert answered > 0.9 * sum(facts.submitted.values()), "too little was accepted or served"
