"""Side-by-side benchmark: the mock provider directly, Tollway's whole stack, LiteLLM's proxy.

One command (`make bench-compare`, or `python bench/compare.py [--quick]`):
  1. creates or reuses the LiteLLM venv at the pinned version (bench/litellm_proxy.py);
  2. starts the mock provider once (50 ms latency): the lean raw-asyncio server
     (workers/providers/mock/fast_server.py) for non-streaming chat, the regular aiohttp
     mock (`tollway mock-provider`) for streaming; every system calls the same two;
  3. measures, each system alone on the machine (the mock aside): the mock directly,
     then Tollway (deploy.stack.Stack: Kafka, ingress, router, ClickHouse, loader,
     cost and budget processors, batches worker, callbacks), then `tollway-core` (Kafka,
     ingress and router only: the request path without the accounting pipeline; sync
     ladder only), then LiteLLM's proxy (2 workers, no DB, no Redis);
  4. writes bench/out/compare.json and bench/RESULTS.md (bench/compare_render.py).

Load is open loop at a constant arrival rate (bench/openloop.py), stepped up a
ladder (10, 25, 50, then x2 per step) until a step breaks: errors > 1 %, p99 > 1 s,
or < 90 % of the rate offered (bench/compare_stats.py). Scenarios:
  sync       chat completions; mock, Tollway, LiteLLM
  stream     `stream: true`, time to first SSE data (TTFT); mock, Tollway, LiteLLM
  cost-lag   Tollway: sync requests at 50/s; client got the answer -> its priced usage
             row is visible in ClickHouse (polled every 100 ms)
  batch      Tollway: N-line JSONL through the Files and Batches API (upload -> all lines
             enqueued -> completed), against the same 50 ms mock (no provider limits)
  async      Tollway: POST /v1/async/chat/completions (202) up a rate ladder (single),
             then a burst of N requests from 256 connections, then the bulk endpoint
             (POST /v1/async/bulk/chat/completions: --bulk-api-n requests in calls of
             1,000 from 4 connections, bench/bulk_accept.py; the issue's bulk target)
  budget-lag Tollway: bench/budget_lag.py as a subprocess on this bench's Kafka (its
             bench/out/budget_lag.json); full runs only
  breakdown  Tollway: the whole stack once more with trace span files; sync load at 10
             and 100 req/s, each request split into its steps (ingress, Kafka hops,
             router, provider call), plus the raw Kafka hop and a loopback round trip
             (bench/latency_breakdown.py): the added-latency target's profile
LiteLLM has no async acceptance endpoint and its batches API forwards to a provider's
batch API: those rows say n/a.

Ports and paths (environment, TOLLWAY_BENCH_COMPARE_ prefix): KAFKA_PORT 28192,
KAFKA_CONTROLLER_PORT 28193, KAFKA_DIR .tollway/kafka-compare, INGRESS_PORT 28200,
MOCK_PORT 28280 (aiohttp mock), FAST_MOCK_PORT 28281, CLICKHOUSE_PORT 28223,
LITELLM_PORT 28400 (all below Linux's ephemeral range, 32768-60999: the load
generator's thousands of client sockets once held a port above it);
TOLLWAY_BENCH_LITELLM_VENV (.tollway/bench-litellm). Loopback only; the run stops at
once if one of the HTTP ports is taken.

    python bench/compare.py [--quick] [--systems mock,tollway,tollway-core,litellm]
        [--scenarios sync,stream,cost-lag,batch,async,budget-lag,breakdown] [--batch-n 50000]

The bulk endpoint alone, on Kafka and one ingress only: `python bench/bulk_accept.py --start`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]

import bulk_accept  # noqa: E402
import httpx  # noqa: E402
import latency_breakdown  # noqa: E402
import litellm_proxy  # noqa: E402
import openloop  # noqa: E402
import proctree  # noqa: E402
from compare_render import render  # noqa: E402
from compare_stats import (  # noqa: E402
    LoadStep,
    batch_phases,
    cpu_s_per_request,
    merge_loads,
    step_held,
)


def _env(name: str, default: str) -> str:
    return os.environ.get(f"TOLLWAY_BENCH_COMPARE_{name}", default)


KAFKA_PORT = int(_env("KAFKA_PORT", "28192"))
KAFKA_CONTROLLER_PORT = int(_env("KAFKA_CONTROLLER_PORT", "28193"))
KAFKA_DIR = Path(_env("KAFKA_DIR", str(REPO / ".tollway" / "kafka-compare")))
INGRESS_PORT = int(_env("INGRESS_PORT", "28200"))
MOCK_PORT = int(_env("MOCK_PORT", "28280"))
FAST_MOCK_PORT = int(_env("FAST_MOCK_PORT", "28281"))
CLICKHOUSE_PORT = int(_env("CLICKHOUSE_PORT", "28223"))
LITELLM_PORT = int(_env("LITELLM_PORT", "28400"))
STATE = REPO / ".tollway"
LOGS = STATE / "logs" / "compare"
MODEL = "gpt-4o-mini"  # non-streaming: the fast mock
STREAM_MODEL = "bench-stream"  # streaming: the aiohttp mock
CHAT_PATH = "/v1/chat/completions"
FINAL_BATCH = {"completed", "failed", "expired", "cancelled"}
REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")

os.environ.update(
    {
        "TOLLWAY_KAFKA_PORT": str(KAFKA_PORT),
        "TOLLWAY_KAFKA_CONTROLLER_PORT": str(KAFKA_CONTROLLER_PORT),
        "TOLLWAY_KAFKA_DIR": str(KAFKA_DIR),
    }
)

from deploy import stack as stack_module  # noqa: E402  (reads the Kafka env above)

SYNC_LADDER = (10, 25, 50, 100, 200, 400, 800, 1600, 3200)
"""Requests/s per step: from a rate every gateway holds here (LiteLLM's proxy spends tens of
ms of CPU per request on these 2 cores) up to more than the mock alone can be offered."""
STREAM_LADDER = (10, 25, 50, 100, 200, 400, 800)
DEFAULT_SYSTEMS = {
    False: ("mock", "tollway", "tollway-core", "litellm"),
    True: ("mock", "tollway", "litellm"),  # --quick: no core run
}
MOCK_CAP_RPS = {"sync": 1600.0, "stream": 400.0}
"""The mock alone is measured up to these rates only (time: no gateway here came near them;
a gateway step above them shows its latency without an `added` figure)."""


@dataclass(frozen=True)
class Plan:
    """What one invocation measures; `quick` shrinks every figure to a smoke run (< 3 min)."""

    quick: bool
    systems: tuple[str, ...]
    scenarios: tuple[str, ...]
    step_s: float
    warmup_s: float
    sync_rates: tuple[float, ...]
    stream_rates: tuple[float, ...]
    async_rates: tuple[float, ...]
    async_step_s: float
    bulk_n: int
    bulk_api_n: int
    batch_n: int
    cost_lag_s: float
    settle_s: float
    profile: bool
    profile_s: float
    mock_latency_ms: int
    routers: int


def _rates(text: str, default: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(r) for r in text.split(",")) if text else tuple(default)


def make_plan(args: argparse.Namespace) -> Plan:
    quick = bool(args.quick)
    return Plan(
        quick=quick,
        systems=tuple(args.systems.split(",")) if args.systems else DEFAULT_SYSTEMS[quick],
        scenarios=tuple(args.scenarios.split(",")),
        step_s=args.step_s or (2.5 if quick else 5.0),
        warmup_s=0.5 if quick else 1.0,
        sync_rates=_rates(args.sync_rates, (25, 100) if quick else SYNC_LADDER),
        stream_rates=(10,) if quick else STREAM_LADDER,
        async_rates=(250,) if quick else (100, 250, 500, 1000, 2000, 4000, 8000),
        async_step_s=2.5 if quick else 4.0,
        bulk_n=args.bulk_n or (2_000 if quick else 10_000),
        bulk_api_n=args.bulk_api_n or (5_000 if quick else 50_000),
        batch_n=args.batch_n or (2_000 if quick else 50_000),
        cost_lag_s=5.0 if quick else 20.0,
        settle_s=4.0 if quick else 15.0,
        profile=not quick and not args.no_profile,
        profile_s=8.0,
        mock_latency_ms=args.mock_latency_ms,
        routers=args.routers,
    )


# --- measurement -----------------------------------------------------------------------


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            out[name] = proctree.tree_cpu_s(pid)
        except (OSError, IndexError, ValueError):
            continue  # the process is gone: its row is simply missing
    return out


def one_step(
    url: str, pids: dict[str, int], *, mode: str, model: str, rate_rps: float,
    duration_s: float, warmup_s: float,
) -> LoadStep:  # fmt: skip
    """One open-loop step with the CPU of every process in `pids` (trees) per request."""
    before = cpu_snapshot(pids)
    parts = openloop.run_load(
        url, mode=mode, model=model, rate_rps=rate_rps, duration_s=duration_s, warmup_s=warmup_s
    )
    after = cpu_snapshot(pids)
    step = merge_loads(rate_rps, parts)
    step.cpu_s_per_request.update(cpu_s_per_request(before, after, step.all_issued))
    step.cpu_s_per_request["loadgen"] = round(step.generator_cpu_s / max(1, step.all_issued), 5)
    return step


def climb(
    label: str, url: str, pids: dict[str, int], rates: Sequence[float], *, mode: str,
    model: str, duration_s: float, warmup_s: float, idle_cores: float | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """The rate ladder: one step per rate until one breaks (that step is kept, marked).

    An open loop leaves a broken system with a backlog (requests the client gave up on
    are still served): with `idle_cores` given, wait until the processes are back near
    their idle CPU (`drain_s`) and answer single requests fast again (`recover_s`)
    before returning, so the next scenario starts clean.
    """
    steps: list[dict[str, Any]] = []
    for rate in rates:
        step = one_step(
            url, pids, mode=mode, model=model, rate_rps=rate,
            duration_s=duration_s, warmup_s=warmup_s,
        )  # fmt: skip
        steps.append(step.to_json())
        print(
            f"  {label} {mode} {rate:>6.0f}/s: ok {step.ok}/{step.issued} "
            f"p50 {step.latency['p50_ms']:.1f} p99 {step.latency['p99_ms']:.1f} ms"
            + (f" ttft p50 {step.ttft['p50_ms']:.1f}" if step.ttft else "")
            + ("" if step_held(step) else "  <- broke"),
            file=sys.stderr,
            flush=True,
        )
        if not step_held(step):
            if idle_cores is not None:
                steps[-1]["drain_s"] = drain(pids, idle_cores)
                steps[-1]["recover_s"] = wait_responsive(url, model)
            break
        time.sleep(1.0)
    return steps


def drain(pids: dict[str, int], idle_cores: float, timeout_s: float = 180.0) -> float:
    """Seconds until the processes use <= idle + 0.25 cores over one second (or the timeout)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        busy = sum(idle_cpu(pids, 1.0).values())
        if busy <= idle_cores + 0.25:
            break
    return round(time.monotonic() - start, 1)


def wait_responsive(url: str, model: str, timeout_s: float = 120.0) -> float:
    """Seconds until 3 sequential requests in a row are answered 200 within 500 ms.

    Idle CPU alone does not prove a broken gateway has recovered (a worker may still
    hold a queue of requests whose clients gave up): the next scenario starts only
    once single requests are fast again, or after `timeout_s` (then it says so).
    """
    body = openloop.request_body(model, "sync")
    start = time.monotonic()
    good = 0
    with httpx.Client(timeout=10.0, headers=openloop.HEADERS) as client:
        while good < 3 and time.monotonic() - start < timeout_s:
            t0 = time.monotonic()
            try:
                ok = client.post(url, content=body).status_code == 200
            except httpx.HTTPError:
                ok = False
            good = good + 1 if ok and time.monotonic() - t0 < 0.5 else 0
            time.sleep(0.2)
    return round(time.monotonic() - start, 1)


def peak_rss(pids: dict[str, int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            out.update(proctree.tree_peak_rss_mb(pid, name))
        except OSError:
            continue
    return out


def warm(url: str, mode: str, model: str, duration_s: float = 2.0) -> None:
    """Unmeasured load at 20/s: connections opened, lazy imports and JIT (Kafka's JVM) done.

    20/s because every system must take it without a backlog (LiteLLM's proxy spends
    tens of ms of CPU per request here)."""
    openloop.run_load(url, mode=mode, model=model, rate_rps=20, duration_s=duration_s, warmup_s=0)


def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """CPU cores each process tree uses with no load at all (timers, polling, heartbeats)."""
    before = cpu_snapshot(pids)
    time.sleep(seconds)
    after = cpu_snapshot(pids)
    return {name: round((after[name] - before[name]) / seconds, 3) for name in after}


# --- the mock ---------------------------------------------------------------------------


class Mocks:
    """Both mock servers, started once for the whole run."""

    def __init__(self, latency_ms: int) -> None:
        self.latency_ms = latency_ms
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        latency = str(self.latency_ms)
        specs = {
            "mock-fast": (["workers.providers.mock.fast_server", "--latency-ms", latency],
                          FAST_MOCK_PORT),
            "mock-aiohttp": (["deploy.cli", "mock-provider", "--latency-ms", latency], MOCK_PORT),
        }  # fmt: skip
        for name, (argv, port) in specs.items():
            with (LOGS / f"{name}.log").open("ab") as log:
                self.processes[name] = subprocess.Popen(
                    [sys.executable, "-m", *argv, "--port", str(port)],
                    cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            wait_http(f"http://127.0.0.1:{port}/healthz", name)

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.processes.items()}

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def wait_http(url: str, name: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not answer {url}; see {LOGS}")


def mock_url(stream: bool) -> str:
    """The mock's OpenAI base URL (what a gateway is configured with)."""
    return f"http://127.0.0.1:{MOCK_PORT if stream else FAST_MOCK_PORT}/v1"


def mock_chat_url(stream: bool) -> str:
    """The mock's chat completions endpoint (what the load generator calls directly)."""
    return f"http://127.0.0.1:{MOCK_PORT if stream else FAST_MOCK_PORT}{CHAT_PATH}"


# --- systems ----------------------------------------------------------------------------


def run_mock(plan: Plan, mocks: Mocks) -> dict[str, Any]:
    """The reference: the mock called directly at every ladder rate up to MOCK_CAP_RPS."""
    out: dict[str, Any] = {"load_avg_at_start": os.getloadavg()}
    if "sync" in plan.scenarios:
        warm(mock_chat_url(False), "sync", MODEL)
        out["sync"] = climb(
            "mock", mock_chat_url(False), {"mock-fast": mocks.pids()["mock-fast"]},
            [r for r in plan.sync_rates if r <= MOCK_CAP_RPS["sync"]], mode="sync",
            model=MODEL, duration_s=plan.step_s, warmup_s=plan.warmup_s, idle_cores=0.0,
        )  # fmt: skip
    if "stream" in plan.scenarios:
        warm(mock_chat_url(True), "stream", STREAM_MODEL)
        out["stream"] = climb(
            "mock", mock_chat_url(True), {"mock-aiohttp": mocks.pids()["mock-aiohttp"]},
            [r for r in plan.stream_rates if r <= MOCK_CAP_RPS["stream"]], mode="stream",
            model=STREAM_MODEL, duration_s=plan.step_s, warmup_s=plan.warmup_s, idle_cores=0.0,
        )  # fmt: skip
    return out


CORE = ("ingress", "router-")
"""`tollway-core`: only what a sync or streaming request passes through (with Kafka)."""


class Tollway:
    """The whole local stack of this checkout on the bench's own Kafka and ports.

    core=True starts only the ingress and the routers (no cost or budget processors,
    loader, ClickHouse, batches or callbacks): the request path alone, to separate its
    cost from the accounting pipeline's.
    """

    def __init__(self, plan: Plan, core: bool = False) -> None:
        self.plan = plan
        self.core = core
        self.stack: Any = None
        self.url = f"http://127.0.0.1:{INGRESS_PORT}"

    def routes_file(self) -> Path:
        path = STATE / "compare-routes.yaml"
        path.write_text(
            "models:\n"
            f"  {MODEL}:\n"
            f'    deployments: [{{name: bench-mock, base_url: "{mock_url(False)}"}}]\n'
            f"  {STREAM_MODEL}:\n"
            f'    deployments: [{{name: bench-mock-stream, base_url: "{mock_url(True)}"}}]\n'
        )
        return path

    def start(self) -> None:
        stack_module.kafka("reset")
        bootstrap = stack_module.start_kafka()
        self.stack = stack_module.Stack(
            ingress_port=INGRESS_PORT,
            clickhouse_port=CLICKHOUSE_PORT,
            clickhouse_data=STATE / "clickhouse-compare",
            routers=self.plan.routers,
            use_mock=False,
            extra_env={
                "TOLLWAY_ROUTES_FILE": str(self.routes_file()),
                "TOLLWAY_MOCK_URL": mock_url(False),
                "TOLLWAY_BATCHES_STORE_DIR": str(STATE / "files-compare"),
                "TOLLWAY_LOG_LEVEL": "WARNING",
                # no virtual keys: the load generator sends a fixed dummy token (key auth
                # costs ~13 us CPU per request, measured: small next to the request path)
                "TOLLWAY_AUTH": "open",
            },
            log_dir=LOGS,
        )
        parts = self.stack.plan(bootstrap)
        if self.core:
            parts = [c for c in parts if c.name.startswith(CORE)]
        self.stack.components = parts
        for component in parts:
            component.start(LOGS)
        deadline = time.monotonic() + 120.0
        for component in parts:
            self.stack.wait_healthy(component, deadline)

    def pids(self) -> dict[str, int]:
        pids = {c.name: c.process.pid for c in self.stack.components if c.process is not None}
        pids["kafka"] = int((KAFKA_DIR / "kafka.pid").read_text().strip())
        return pids

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()
        stack_module.kafka("stop")


def ladders(label: str, chat: str, pids: dict[str, int], plan: Plan) -> dict[str, Any]:
    """Warm-up, idle CPU, then the sync and streaming ladders of one gateway at `chat`."""
    out: dict[str, Any] = {}
    warm(chat, "sync", MODEL, plan.settle_s)  # after start-up: JIT, lazy imports, caches
    out["idle_cores"] = idle_cpu(pids, plan.settle_s / 2)
    idle = sum(out["idle_cores"].values())
    if "sync" in plan.scenarios:
        out["sync"] = climb(
            label, chat, pids, plan.sync_rates, mode="sync", model=MODEL,
            duration_s=plan.step_s, warmup_s=plan.warmup_s, idle_cores=idle,
        )  # fmt: skip
        out["peak_rss_mb_after_sync"] = peak_rss(pids)
    if "stream" in plan.scenarios:
        warm(chat, "stream", STREAM_MODEL)
        out["stream"] = climb(
            label, chat, pids, plan.stream_rates, mode="stream", model=STREAM_MODEL,
            duration_s=plan.step_s, warmup_s=plan.warmup_s, idle_cores=idle,
        )  # fmt: skip
    return out


ROUTERS_DEFAULT: Final = min(4, os.cpu_count() or 1)
"""One router process per core, as a deployment would run them: a router is one Python
event loop, so one process uses one core at most. Measured on 2 cores (20,000-line batch,
the same minute): 615 lines/s with one router, 1,116 with two."""

BREAKDOWN_RATES: Final = (10.0, 100.0)
"""Sync rates of the latency breakdown: nearly idle, and the issue's 100 req/s."""


def run_breakdown(plan: Plan) -> dict[str, Any]:
    """The added-latency profile (bench/latency_breakdown.py): the whole stack again with
    span files, sync load at `BREAKDOWN_RATES`, each traced request split into its steps;
    then the raw Kafka hop on the same broker and a loopback round trip."""
    spans_dir = STATE / "compare-spans"
    shutil.rmtree(spans_dir, ignore_errors=True)
    spans_dir.mkdir(parents=True)
    tracing = {
        "TOLLWAY_OTEL_EXPORTER": f"jsonl:{spans_dir}/{{service}}-{{pid}}.jsonl",
        "OTEL_BSP_SCHEDULE_DELAY": "500",
    }
    saved = {name: os.environ.get(name) for name in tracing}
    os.environ.update(tracing)  # the stack passes its environment to every process
    system = Tollway(plan)
    out: dict[str, Any] = {"rates": {}}
    try:
        system.start()
        chat = system.url + CHAT_PATH
        warm(chat, "sync", MODEL, plan.settle_s / 3)
        for rate in BREAKDOWN_RATES:
            start_ns = time.time_ns() + int(plan.warmup_s * 1e9)
            step = merge_loads(rate, openloop.run_load(
                chat, mode="sync", model=MODEL, rate_rps=rate, duration_s=plan.step_s,
                warmup_s=plan.warmup_s,
            ))  # fmt: skip
            window = (start_ns, time.time_ns())
            time.sleep(1.5)  # span export runs every 0.5 s
            requests = latency_breakdown.requests_from(latency_breakdown.read_spans(spans_dir))
            out["rates"][str(int(rate))] = {
                "client_latency": step.latency,
                **latency_breakdown.summarize(requests, plan.mock_latency_ms, window),
            }
            print(f"  breakdown {rate:.0f}/s: {out['rates'][str(int(rate))]['requests']} "
                  "traced requests", file=sys.stderr, flush=True)  # fmt: skip
        bootstrap = f"127.0.0.1:{KAFKA_PORT}"
        out["kafka_hop"] = asyncio.run(latency_breakdown.kafka_hop(bootstrap))
    finally:
        system.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    out["loopback_rtt"] = latency_breakdown.loopback_rtt()
    return out


def run_tollway(plan: Plan, core: bool = False) -> dict[str, Any]:
    system = Tollway(plan, core)
    label = "tollway-core" if core else "tollway"
    out: dict[str, Any] = {"load_avg_at_start": os.getloadavg()}
    try:
        t0 = time.monotonic()
        system.start()
        out["start_s"] = round(time.monotonic() - t0, 1)
        pids = system.pids()
        if core:  # the request path alone: its sync ladder is the figure wanted
            core_plan = replace(plan, scenarios=("sync",), settle_s=min(plan.settle_s, 6.0))
            out.update(ladders(label, system.url + CHAT_PATH, pids, core_plan))
            return out
        out.update(ladders(label, system.url + CHAT_PATH, pids, plan))
        if plan.profile:
            held = [s["rate_rps"] for s in out.get("sync", []) if s["held"]]
            rate = min(100.0, max(held)) if held else plan.sync_rates[0]
            out["profile"] = profile(system.url + CHAT_PATH, pids, rate, plan)
        if "cost-lag" in plan.scenarios:
            out["cost_lag"] = asyncio.run(cost_lag(system.url, plan.cost_lag_s))
            print(f"  tollway cost lag: {out['cost_lag']}", file=sys.stderr, flush=True)
        if "batch" in plan.scenarios:
            before = cpu_snapshot(pids)
            out["batch"] = run_batch(system.url, plan.batch_n)
            # The batch target's profile: which process spends the CPU, per line.
            out["batch"]["cpu_s_per_line"] = cpu_s_per_request(
                before, cpu_snapshot(pids), plan.batch_n
            )
            print(f"  tollway batch: {out['batch']}", file=sys.stderr, flush=True)
        if "async" in plan.scenarios:
            # Last: accepted requests keep the router busy after each step; the stack stops next.
            async_url = system.url + "/v1/async/chat/completions"
            out["async_single"] = climb(
                "tollway", async_url, pids, plan.async_rates, mode="async", model=MODEL,
                duration_s=plan.async_step_s, warmup_s=plan.warmup_s,
            )  # fmt: skip
            out["async_bulk"] = bulk(async_url, pids, plan.bulk_n)
            print(f"  tollway async bulk: {out['async_bulk']}", file=sys.stderr, flush=True)
            out["async_bulk_api"] = bulk_accept.measure(system.url, pids, plan.bulk_api_n)
            print(f"  tollway bulk API: {out['async_bulk_api']}", file=sys.stderr, flush=True)
        out["peak_rss_mb_end"] = peak_rss(pids)
    finally:
        system.stop()
    return out


def profile(url: str, pids: dict[str, int], rate: float, plan: Plan) -> dict[str, Any]:
    """One more sync step at `rate` with py-spy on every Python process: top self time each.

    py-spy samples 100 times a second without pausing the process (--nonblocking); its
    samples of a process approximate that process's CPU time. Not a Tollway dependency:
    without `py-spy` in the venv this says so and the run goes on.
    """
    from profile_summary import render as render_profile
    from profile_summary import summarize

    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        return {"status": "not run: py-spy is not installed in the venv (pip install py-spy)"}
    raw_dir = STATE / "compare-profiles"
    out_dir = BENCH / "out" / "compare-profiles"
    raw_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    record_s = int(plan.profile_s + plan.warmup_s + 2)
    spies: dict[str, subprocess.Popen[bytes]] = {}
    for name, pid in pids.items():
        if name == "kafka":
            continue  # the JVM: its CPU per request is measured, not profiled
        argv = [str(py_spy), "record", "--pid", str(pid), "--duration", str(record_s),
                "--rate", "100", "--format", "raw", "--nonblocking",
                "--output", str(raw_dir / f"{name}.raw")]  # fmt: skip
        spies[name] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    step = one_step(url, pids, mode="sync", model=MODEL, rate_rps=rate,
                    duration_s=plan.profile_s, warmup_s=plan.warmup_s)  # fmt: skip
    processes: dict[str, Any] = {}
    for name, spy in spies.items():
        try:
            spy.wait(record_s + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
        raw = raw_dir / f"{name}.raw"
        if not raw.exists():
            processes[name] = {"samples": 0, "self": []}
            continue
        summary = summarize(raw.read_text().splitlines(), top=25)
        (out_dir / f"{name}.txt").write_text(render_profile(name, summary))
        self_rows = summary["self"]
        assert isinstance(self_rows, list)
        processes[name] = {"samples": summary["samples"], "self": self_rows[:6]}
    print(f"  tollway profile at {rate:.0f}/s: {out_dir}", file=sys.stderr, flush=True)
    return {"status": "ok", "rate_rps": rate, "step": step.to_json(), "processes": processes}


def bulk(url: str, pids: dict[str, int], n: int) -> dict[str, Any]:
    """N async requests from 256 keep-alive connections (2 generator processes), closed loop."""
    before = cpu_snapshot(pids)
    parts = openloop.run_load(url, mode="async", model=MODEL, burst=n, concurrency=256)
    after = cpu_snapshot(pids)
    step = merge_loads(0.0, parts)
    return {
        "requests": step.issued,
        "accepted": step.ok,
        "errors": step.errors,
        "error_kinds": step.error_kinds,
        "window_s": round(step.window_s, 3),
        "accepted_per_s": round(step.throughput_rps, 1),
        "latency": step.latency,
        "cpu_s_per_request": cpu_s_per_request(before, after, step.issued),
    }


async def cost_lag(base_url: str, duration_s: float, rate_rps: float = 50.0) -> dict[str, Any]:
    """Sync requests at `rate_rps`; lag = answer received -> usage row visible in ClickHouse."""
    import aiohttp

    answered: dict[str, float] = {}
    lags_ms: dict[str, float] = {}
    errors = 0
    ch_url = f"http://127.0.0.1:{CLICKHOUSE_PORT}/"

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        try:
            async with session.post(
                base_url + CHAT_PATH, data=openloop.request_body(MODEL, "sync")
            ) as r:
                await r.read()
                rid = r.headers.get("x-tollway-request-id", "")
                if r.status == 200 and REQUEST_ID.match(rid):
                    answered[rid] = time.monotonic()
                else:
                    errors += 1
        except aiohttp.ClientError:
            errors += 1

    async def poll(session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        while not stop.is_set() or len(lags_ms) < len(answered):
            pending = [rid for rid in answered if rid not in lags_ms]
            if pending:
                ids = ",".join(f"'{rid}'" for rid in pending[:2000])
                sql = f"SELECT DISTINCT request_id FROM tollway.usage WHERE request_id IN ({ids})"
                async with session.post(ch_url, data=sql.encode()) as r:
                    text = await r.text()
                now = time.monotonic()
                if r.status == 200:
                    for rid in text.split():
                        if rid in answered and rid not in lags_ms:
                            lags_ms[rid] = (now - answered[rid]) * 1000
            await asyncio.sleep(0.1)

    stop = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(headers=openloop.HEADERS, timeout=timeout) as session:
        poller = asyncio.create_task(poll(session, stop))
        tasks: list[asyncio.Task[None]] = []
        start = time.monotonic()
        i = 0
        while time.monotonic() - start < duration_s:
            delay = start + i / rate_rps - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session)))
            i += 1
        await asyncio.gather(*tasks)
        stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(poller, 60)
    from compare_stats import percentiles

    lags = sorted(lags_ms.values())
    return {
        "rate_rps": rate_rps,
        "requests": i,
        "answered": len(answered),
        "errors": errors,
        "rows_seen": len(lags),
        **percentiles(lags),
        "max_ms": round(lags[-1], 1) if lags else None,
        "poll_interval_ms": 100,
    }


def run_batch(base_url: str, n: int) -> dict[str, Any]:
    """Upload an n-line batch, create it, poll until final: enqueue rate and end-to-end rate."""
    lines = b"".join(
        json.dumps({
            "custom_id": f"line-{i}", "method": "POST", "url": CHAT_PATH,
            "body": {"model": MODEL, "max_tokens": 16,
                     "messages": [{"role": "user", "content": f"batch line {i}"}]},
        }).encode() + b"\n"
        for i in range(n)
    )  # fmt: skip
    with httpx.Client(base_url=base_url, timeout=120.0) as client:
        t0 = time.monotonic()
        up = client.post(
            "/v1/files", data={"purpose": "batch"},
            files={"file": ("bench.jsonl", lines, "application/jsonl")},
        )  # fmt: skip
        up.raise_for_status()
        uploaded = time.monotonic()
        created = client.post(
            "/v1/batches",
            json={"input_file_id": up.json()["id"], "endpoint": CHAT_PATH,
                  "completion_window": "24h"},
        )  # fmt: skip
        created.raise_for_status()
        batch_id = created.json()["id"]
        enqueued_at: float | None = None
        deadline = time.monotonic() + max(300.0, n / 50)
        state: dict[str, Any] = created.json()
        progress: list[tuple[float, int]] = []  # (s since upload start, lines completed)
        while time.monotonic() < deadline:
            state = client.get(f"/v1/batches/{batch_id}").json()
            now = time.monotonic()
            counts_now = state.get("request_counts", {})
            done_lines = int(counts_now.get("completed", 0)) + int(counts_now.get("failed", 0))
            progress.append((now - t0, done_lines))
            if enqueued_at is None and state.get("tollway", {}).get("enqueued", 0) >= n:
                enqueued_at = now
            if state["status"] in FINAL_BATCH:
                break
            time.sleep(0.25)
        done = time.monotonic()
    counts = state.get("request_counts", {})
    final = state["status"] in FINAL_BATCH
    return {
        "lines": n,
        "bytes": len(lines),
        "status": state["status"],
        "request_counts": counts,
        "upload_s": round(uploaded - t0, 3),
        "enqueue_lines_per_s": round(n / (enqueued_at - t0)) if enqueued_at else None,
        "end_to_end_s": round(done - t0, 2) if final else None,
        "end_to_end_rps": round(int(counts.get("completed", 0)) / (done - t0)) if final else None,
        "poll_interval_s": 0.25,
        **batch_phases(progress, n),
    }


def run_litellm(plan: Plan, venv: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"load_avg_at_start": os.getloadavg()}
    config = STATE / "compare-litellm.yaml"
    config.write_text(
        litellm_proxy.config_yaml({MODEL: mock_url(False), STREAM_MODEL: mock_url(True)})
    )
    proxy = litellm_proxy.LiteLLMProxy(venv, config, LITELLM_PORT, LOGS / "litellm.log")
    try:
        t0 = time.monotonic()
        proxy.start()
        out["start_s"] = round(time.monotonic() - t0, 1)
        pids = {"litellm": proxy.pid}
        out["processes"] = sorted(proctree.tree_peak_rss_mb(proxy.pid, "litellm"))
        out.update(ladders("litellm", proxy.url + CHAT_PATH, pids, plan))
        out["peak_rss_mb_end"] = peak_rss(pids)
    finally:
        proxy.stop()
    return out


def run_bulk_alone(n: int) -> dict[str, Any]:
    """The bulk endpoint's acceptance on Kafka and one ingress only (bench/bulk_accept.py
    --start, a subprocess on this bench's broker): what the ingress accepts per second
    when no router executes the requests on the same two cores (in production they run
    on other machines). The in-stack figure above is reported beside it."""
    out_file = BENCH / "out" / "bulk_accept.json"
    started = time.time()
    try:
        done = subprocess.run(
            [sys.executable, str(BENCH / "bulk_accept.py"), "--start", "--n", str(n),
             "--out-json", str(out_file)],
            capture_output=True, text=True, timeout=300, cwd=REPO, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"status": "not run: bench/bulk_accept.py took more than 300 s"}
    if done.returncode != 0 or not out_file.exists() or out_file.stat().st_mtime < started:
        return {
            "status": f"bench/bulk_accept.py failed (exit {done.returncode})",
            "stderr_tail": done.stderr[-1500:],
        }
    return {"status": "ok", **json.loads(out_file.read_text())}


def run_budget_lag() -> dict[str, Any]:
    """bench/budget_lag.py (budget enforcement's own bench) as a subprocess on this bench's
    Kafka (started for it, stopped after); its figures from bench/out/budget_lag.json."""
    script = BENCH / "budget_lag.py"
    out_file = BENCH / "out" / "budget_lag.json"
    if not script.exists():
        return {"status": "not run: bench/budget_lag.py does not exist in this checkout"}
    env = {**os.environ, "TOLLWAY_KAFKA_BOOTSTRAP": f"127.0.0.1:{KAFKA_PORT}"}
    started = time.time()
    stack_module.kafka("reset")
    try:
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=420,
            cwd=REPO, env=env, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"status": "not run: bench/budget_lag.py took more than 420 s"}
    finally:
        stack_module.kafka("stop")
    if done.returncode != 0 or not out_file.exists() or out_file.stat().st_mtime < started:
        return {
            "status": f"bench/budget_lag.py failed (exit {done.returncode})",
            "stderr_tail": done.stderr[-1500:],
        }
    figures = json.loads(out_file.read_text())
    return {"status": "ok", "summary": done.stdout.strip().splitlines()[-3:], "figures": figures}


# --- main -------------------------------------------------------------------------------


def check_ports_free(ports: dict[str, int]) -> None:
    """Fail fast, naming the variable to change, when a port of this bench is taken."""
    import socket

    for name, port in ports.items():
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sys.exit(f"port {port} is taken: set TOLLWAY_BENCH_COMPARE_{name} to a free one")


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "kernel": platform.release(),
            "python": platform.python_version()}  # fmt: skip


def tollway_version() -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, < 3 minutes")
    parser.add_argument(
        "--systems", default="", help="default mock,tollway,tollway-core,litellm (quick: no core)"
    )
    parser.add_argument(
        "--scenarios", default="sync,stream,cost-lag,batch,async,budget-lag,breakdown"
    )
    parser.add_argument("--step-s", type=float, default=0.0, help="measured seconds per step")
    parser.add_argument("--sync-rates", default="", help="sync ladder, e.g. 25,50,100")
    parser.add_argument("--batch-n", type=int, default=0, help="batch lines (50,000; quick 2,000)")
    parser.add_argument("--bulk-n", type=int, default=0, help="bulk async requests")
    parser.add_argument(
        "--bulk-api-n", type=int, default=0, help="requests via the bulk endpoint (50,000)"
    )
    parser.add_argument("--mock-latency-ms", type=int, default=50)
    parser.add_argument(
        "--routers",
        type=int,
        default=ROUTERS_DEFAULT,
        help="router processes (default: one per core, at most 4)",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument("--out-json", type=Path, default=BENCH / "out" / "compare.json")
    parser.add_argument("--out-md", type=Path, default=BENCH / "RESULTS.md")
    args = parser.parse_args()
    plan = make_plan(args)
    check_ports_free(
        {
            "INGRESS_PORT": INGRESS_PORT,
            "MOCK_PORT": MOCK_PORT,
            "FAST_MOCK_PORT": FAST_MOCK_PORT,
            "CLICKHOUSE_PORT": CLICKHOUSE_PORT,
            "LITELLM_PORT": LITELLM_PORT,
        }
    )  # fmt: skip  (Kafka's: kafka.sh reset stops this bench's own broker if one is left)
    started = time.monotonic()
    report: dict[str, Any] = {
        "command": " ".join(["python bench/compare.py", *sys.argv[1:]]),
        "machine": machine(),
        "load_avg_at_start": os.getloadavg(),
        "plan": dict(plan.__dict__),
        "versions": {"tollway": tollway_version()},
        "systems": {},
    }
    venv: Path | None = None
    if "litellm" in plan.systems:
        venv, version = litellm_proxy.ensure_venv()
        report["versions"]["litellm"] = version
    mocks = Mocks(plan.mock_latency_ms)
    try:
        mocks.start()
        if "mock" in plan.systems:
            print("mock directly", file=sys.stderr, flush=True)
            report["systems"]["mock"] = run_mock(plan, mocks)
        if "tollway" in plan.systems:
            print("tollway", file=sys.stderr, flush=True)
            report["systems"]["tollway"] = run_tollway(plan)
        if "tollway-core" in plan.systems and "sync" in plan.scenarios:
            print("tollway-core", file=sys.stderr, flush=True)
            report["systems"]["tollway-core"] = run_tollway(plan, core=True)
        if "tollway" in plan.systems and "breakdown" in plan.scenarios:
            print("tollway latency breakdown (traced)", file=sys.stderr, flush=True)
            report["latency_breakdown"] = run_breakdown(plan)
        if "litellm" in plan.systems and venv is not None:
            print("litellm", file=sys.stderr, flush=True)
            report["systems"]["litellm"] = run_litellm(plan, venv)
    finally:
        mocks.stop()
    if "tollway" in plan.systems and "async" in plan.scenarios:
        print("bulk acceptance alone (bench/bulk_accept.py --start)", file=sys.stderr, flush=True)
        report["bulk_alone"] = run_bulk_alone(plan.bulk_api_n)
    if "tollway" in plan.systems and "budget-lag" in plan.scenarios and not plan.quick:
        print("budget lag (bench/budget_lag.py)", file=sys.stderr, flush=True)
        report["budget_lag"] = run_budget_lag()
    report["load_avg_at_end"] = os.getloadavg()
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    args.out_md.write_text(render(report))
    print(f"wrote {args.out_md} and {args.out_json} in {report['elapsed_s']} s", file=sys.stderr)


if __name__ == "__main__":
    main()
