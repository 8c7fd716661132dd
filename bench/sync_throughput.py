"""Benchmark: sync chat completions through ingress -> Kafka -> router -> mock provider.

Every phase runs against the mock provider directly and then through the whole
gateway, in alternation, `--rounds` times in ONE invocation; the report gives
the median over rounds of each figure (the machine is shared and noisy: compare
figures of one invocation, and ratios, rather than absolute numbers).

Phases (`--phases`, default all three):
  throughput  closed loop at `--concurrency` (100): sustained requests/s, latency
              p50/p95/p99, CPU ms per request of every process (from /proc/<pid>/stat
              before and after each run; the load generator's own, start-up excluded).
  rate        open loop at `--rate-rps` (100 req/s): latency p50/p99 at a known
              offered load; added latency = gateway minus direct, per round.
  stream      open loop at `--stream-rate-rps` (20 req/s) with `stream: true`: time to
              the first SSE chunk (TTFT) p50/p99; added TTFT = gateway minus direct.

Before the phases, `--idle-s` (5 s) without load measures each process's idle CPU
(cores): at low rates it dominates the CPU per request.

The mock: `--mock fast` (default) is `workers/providers/mock/fast_server.py`, a lean
raw-asyncio server of the non-streaming chat endpoint, used by BOTH the direct and
the gateway runs of `throughput` and `rate`; `--mock aiohttp` uses the regular mock
(`server.py`) there instead. The `stream` phase always uses the regular mock (the
fast one does not stream), for direct and gateway alike, through the model name
`bench-stream` of the bench's routes file.

`--profile` adds one gateway throughput run with py-spy attached to every Python
process (install it into the venv: `pip install py-spy`; it is not a dependency);
the top self/inclusive functions per process go to bench/out/profiles/*.txt.
`--native` adds C frames (uvloop, aiohttp's parser, fastavro) and pauses the process
per sample. `--tree DIR` measures the Tollway processes of another checkout (e.g. a
`git archive` of an older commit) with this bench, load generator and mock, for
before/after comparisons.

Not a test: it prints JSON and writes bench/out/sync_throughput.json (`--out`).
Loopback only. Its own Kafka on TOLLWAY_BENCH_KAFKA_PORT (39092) and
TOLLWAY_BENCH_KAFKA_CONTROLLER_PORT (39093), data in .tollway/kafka-bench; the
ingress, the two mocks and ClickHouse on free ports unless TOLLWAY_BENCH_INGRESS_PORT,
TOLLWAY_BENCH_MOCK_PORT (aiohttp mock), TOLLWAY_BENCH_FAST_MOCK_PORT and
TOLLWAY_BENCH_CLICKHOUSE_PORT name them; ClickHouse data in .tollway/clickhouse-bench.

    python bench/sync_throughput.py [--phases throughput,rate,stream] [--rounds 3]
        [--duration-s 10] [--concurrency 100] [--rate-rps 100] [--stream-rate-rps 20]
        [--routers 1] [--mock fast|aiohttp] [--core-only] [--profile] [--tree DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _port(name: str, default: int | None) -> int:
    """TOLLWAY_BENCH_<name>, else `default`, else a free loopback port: fixed ports in
    Linux's ephemeral range (32768-60999) are often held by other processes' outgoing
    connections on a busy machine."""
    value = os.environ.get(f"TOLLWAY_BENCH_{name}")
    if value:
        return int(value)
    if default is not None:
        return default
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


KAFKA_PORT = _port("KAFKA_PORT", 39092)
INGRESS_PORT = _port("INGRESS_PORT", None)
MOCK_PORT = _port("MOCK_PORT", None)
FAST_MOCK_PORT = _port("FAST_MOCK_PORT", None)
CLICKHOUSE_PORT = _port("CLICKHOUSE_PORT", None)
STREAM_MODEL = "bench-stream"
MODEL = "gpt-4o-mini"

# --- process accounting --------------------------------------------------------------


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def loadgen(url: str, *, duration_s: float, **options: Any) -> dict[str, Any]:
    argv = [sys.executable, str(BENCH / "loadgen.py"), url, "--duration-s", str(duration_s)]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not None and value is not False:
            argv += [flag, str(value)]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure(url: str, pids: dict[str, int], *, duration_s: float, **options: Any) -> dict[str, Any]:
    """One load run; CPU of every process in `pids` (and the load generator) per request."""
    before = {name: cpu_s(pid) for name, pid in pids.items()}
    stats = loadgen(url, duration_s=duration_s, **options)
    after = {name: cpu_s(pid) for name, pid in pids.items()}
    requests = max(1, int(stats["all_requests"]))  # CPU was spent on warm-up requests too
    cpu_ms = {name: round((after[name] - before[name]) / requests * 1000, 3) for name in pids}
    cpu_ms["loadgen"] = round(float(stats["cpu_s"]) / requests * 1000, 3)
    return {"load": stats, "cpu_ms_per_request": cpu_ms}


# --- the processes under test ----------------------------------------------------------


class Bench:
    """Kafka, the mocks and the Tollway processes of `tree`, on the bench's own ports."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tree = Path(args.tree).resolve()
        os.environ.update(
            {
                "TOLLWAY_KAFKA_PORT": str(KAFKA_PORT),
                "TOLLWAY_KAFKA_CONTROLLER_PORT": str(_port("KAFKA_CONTROLLER_PORT", 39093)),
                "TOLLWAY_KAFKA_DIR": str(REPO / ".tollway" / "kafka-bench"),
                "TOLLWAY_STATE_DIR": str(REPO / ".tollway"),
            }
        )
        sys.path.insert(0, str(self.tree))
        import deploy.stack as stack_module  # the tree's own orchestration

        self.stack_module: Any = stack_module
        self.state_dir = REPO / ".tollway"
        self.log_dir = self.state_dir / "logs" / "bench"
        self.mocks: dict[str, subprocess.Popen[bytes]] = {}
        self.stack: Any = None

    @property
    def fast(self) -> bool:
        return bool(self.args.mock == "fast")

    def chat_mock_url(self) -> str:
        port = FAST_MOCK_PORT if self.fast else MOCK_PORT
        return f"http://127.0.0.1:{port}/v1"

    def _routes_file(self) -> Path:
        path = self.state_dir / "bench-routes.yaml"
        path.write_text(
            "models:\n"
            f"  {MODEL}:\n"
            f'    deployments: [{{name: bench-mock, base_url: "{self.chat_mock_url()}"}}]\n'
            f"  {STREAM_MODEL}:\n"
            "    deployments: [{name: bench-mock-stream, "
            f'base_url: "http://127.0.0.1:{MOCK_PORT}/v1"}}]\n'
        )
        return path

    def _start_mock(self, name: str, argv: list[str], port: int) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        self.mocks[name] = subprocess.Popen(
            [sys.executable, "-m", *argv, "--port", str(port)],
            cwd=REPO,  # the bench's own mock, whatever tree is measured
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_http(f"http://127.0.0.1:{port}/healthz", name)

    def _wait_http(self, url: str, name: str) -> None:
        import httpx

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"{name} did not become healthy; see {self.log_dir}")

    def start(self) -> None:
        latency = str(self.args.mock_latency_ms)
        self._start_mock(
            "mock-aiohttp", ["deploy.cli", "mock-provider", "--latency-ms", latency], MOCK_PORT
        )
        if self.fast:
            self._start_mock(
                "mock-fast",
                ["workers.providers.mock.fast_server", "--latency-ms", latency],
                FAST_MOCK_PORT,
            )
        bootstrap = self._start_kafka()
        self.stack = self.stack_module.Stack(
            ingress_port=INGRESS_PORT,
            clickhouse_port=CLICKHOUSE_PORT,
            clickhouse_data=self.state_dir / "clickhouse-bench",
            routers=self.args.routers,
            use_mock=False,
            extra_env={
                "TOLLWAY_ROUTES_FILE": str(self._routes_file()),
                "TOLLWAY_MOCK_URL": self.chat_mock_url(),
                "TOLLWAY_BATCHES_STORE_DIR": str(self.state_dir / "files-bench"),
                "TOLLWAY_AUTH": "open",  # loadgen sends a dummy token (key auth: ~13 us CPU)
            },
            log_dir=self.log_dir,
        )
        parts = self.stack.plan(bootstrap)
        if self.args.core_only:
            parts = [c for c in parts if c.name == "ingress" or c.name.startswith("router-")]
        self.stack.components = parts
        for component in parts:
            component.start(self.log_dir)
        deadline = time.monotonic() + 90
        for component in parts:
            self.stack.wait_healthy(component, deadline)

    def _start_kafka(self) -> str:
        """Reset and start the bench broker. Its ports lie in Linux's ephemeral range, so
        another process's outgoing connection may hold one for a while: retry."""
        sm = self.stack_module
        for attempt in range(1, 6):
            sm.kafka("reset")
            try:
                bootstrap: str = sm.start_kafka()
            except sm.StackError:
                if attempt == 5:
                    raise
                print(f"Kafka did not start (attempt {attempt}); retrying", file=sys.stderr)
                time.sleep(5.0)
            else:
                return bootstrap
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()
        self.stack_module.kafka("stop")
        for process in self.mocks.values():
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()

    def pids(self) -> dict[str, int]:
        pids = {c.name: c.process.pid for c in self.stack.components if c.process is not None}
        kafka_dir = Path(os.environ["TOLLWAY_KAFKA_DIR"])
        pids["kafka"] = int((kafka_dir / "kafka.pid").read_text().strip())
        for name, process in self.mocks.items():
            pids[name] = process.pid
        return pids

    def mock_pid(self) -> dict[str, int]:
        name = "mock-fast" if self.fast else "mock-aiohttp"
        return {name: self.mocks[name].pid}


# --- phases ---------------------------------------------------------------------------


def run_phase(bench: Bench, phase: str, gateway_url: str) -> dict[str, dict[str, Any]]:
    a = bench.args
    direct_url = bench.chat_mock_url() + "/chat/completions"
    options: dict[str, Any] = {"model": MODEL}
    direct_pids = bench.mock_pid()
    if phase == "throughput":
        options["concurrency"] = a.concurrency
    elif phase == "rate":
        options["rate_rps"] = a.rate_rps
    else:
        direct_url = f"http://127.0.0.1:{MOCK_PORT}/v1/chat/completions"
        direct_pids = {"mock-aiohttp": bench.mocks["mock-aiohttp"].pid}
        options.update(rate_rps=a.stream_rate_rps, stream=True, model=STREAM_MODEL)
    direct = measure(direct_url, direct_pids, duration_s=a.duration_s, **options)
    gateway = measure(gateway_url, bench.pids(), duration_s=a.duration_s, **options)
    return {"direct": direct, "gateway": gateway}


def idle_cpu_cores(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """CPU each process burns with no load (cores): polls, heartbeats, timers. At a low
    request rate this, divided by the rate, dominates the CPU per request."""
    time.sleep(2.0)  # let consumers finish the warm-up's records first
    before = {name: cpu_s(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    return {name: round((cpu_s(pid) - before[name]) / seconds, 3) for name, pid in pids.items()}


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else 0.0


def summarize_phase(phase: str, runs: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Medians over rounds; added latency is computed per round, then its median taken."""

    def med(side: str, key: str) -> float:
        return median([float(r[side]["load"][key]) for r in runs])

    def added(key: str) -> float:
        return median(
            [float(r["gateway"]["load"][key]) - float(r["direct"]["load"][key]) for r in runs]
        )

    keys = ["throughput_rps", "p50_ms", "p95_ms", "p99_ms"]
    if phase == "stream":
        keys += ["ttft_p50_ms", "ttft_p99_ms"]
    out: dict[str, Any] = {
        "direct": {k: med("direct", k) for k in keys},
        "gateway": {k: med("gateway", k) for k in keys},
        "added_ms": {k: added(k) for k in keys if k != "throughput_rps"},
        "errors": {
            side: sum(int(r[side]["load"]["errors"]) for r in runs)
            for side in ("direct", "gateway")
        },
    }
    names = runs[0]["gateway"]["cpu_ms_per_request"].keys()
    out["gateway_cpu_ms_per_request"] = {
        n: median([r["gateway"]["cpu_ms_per_request"][n] for r in runs]) for n in names
    }
    out["direct_cpu_ms_per_request"] = {
        n: median([r["direct"]["cpu_ms_per_request"][n] for r in runs])
        for n in runs[0]["direct"]["cpu_ms_per_request"]
    }
    if phase == "throughput":
        out["throughput_ratio_gateway_to_direct"] = round(
            out["gateway"]["throughput_rps"] / max(1.0, out["direct"]["throughput_rps"]), 3
        )
    return out


def profile(bench: Bench, gateway_url: str, out_dir: Path) -> dict[str, Any]:
    """One gateway throughput run with py-spy on every Python process; summaries per process."""
    sys.path.insert(0, str(BENCH))
    from profile_summary import render, summarize

    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        return {"error": "py-spy is not installed in the venv (pip install py-spy)"}
    raw_dir = bench.state_dir / "bench-profiles"
    raw_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    a = bench.args
    record_s = int(a.duration_s + 2)
    mode = ["--native"] if a.native else ["--nonblocking"]
    spies: dict[str, subprocess.Popen[bytes]] = {}
    for name, pid in bench.pids().items():
        if name == "kafka":
            continue  # the JVM: its CPU per request is measured, not profiled here
        spies[name] = subprocess.Popen(
            [str(py_spy), "record", "--pid", str(pid), "--duration", str(record_s),
             "--rate", "200", "--format", "raw", *mode,
             "--output", str(raw_dir / f"{name}.raw")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    time.sleep(1.0)
    run = measure(gateway_url, bench.pids(), duration_s=a.duration_s, concurrency=a.concurrency)
    summaries: dict[str, Any] = {"run_under_profiler": run}
    for name, spy in spies.items():
        spy.wait(record_s + 30)
        raw = raw_dir / f"{name}.raw"
        if not raw.exists():
            summaries[name] = {"error": "py-spy wrote nothing"}
            continue
        summary = summarize(raw.read_text().splitlines(), top=25)
        (out_dir / f"{name}.txt").write_text(render(name, summary))
        top = summary["self"]
        assert isinstance(top, list)
        summaries[name] = {"samples": summary["samples"], "self": top[:10]}
    return summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--phases", default="throughput,rate,stream")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rate-rps", type=float, default=100.0)
    parser.add_argument("--stream-rate-rps", type=float, default=20.0)
    parser.add_argument("--routers", type=int, default=1)
    parser.add_argument("--mock-latency-ms", type=int, default=50)
    parser.add_argument("--mock", choices=["fast", "aiohttp"], default="fast")
    parser.add_argument("--idle-s", type=float, default=5.0, help="idle CPU window, before load")
    parser.add_argument("--core-only", action="store_true", help="no processors/loader")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--native", action="store_true", help="profile C frames too (pauses each sample)"
    )
    parser.add_argument("--tree", default=str(REPO), help="the Tollway checkout to measure")
    parser.add_argument("--out", type=Path, default=BENCH / "out" / "sync_throughput.json")
    parser.add_argument("--profile-dir", type=Path, default=BENCH / "out" / "profiles")
    args = parser.parse_args()
    phases = [p for p in args.phases.split(",") if p]
    unknown = set(phases) - {"throughput", "rate", "stream"}
    if unknown:
        parser.error(f"unknown phases: {sorted(unknown)}")

    bench = Bench(args)
    runs: dict[str, list[dict[str, dict[str, Any]]]] = {p: [] for p in phases}
    profiles: dict[str, Any] | None = None
    try:
        bench.start()
        gateway_url = f"http://127.0.0.1:{INGRESS_PORT}/v1/chat/completions"
        loadgen(gateway_url, duration_s=3, concurrency=20, warmup_s=0)  # connections, JIT
        if "stream" in phases:
            loadgen(gateway_url, duration_s=2, concurrency=5, warmup_s=0, stream=True,
                    model=STREAM_MODEL)  # fmt: skip
        idle_cores = idle_cpu_cores(bench.pids(), args.idle_s)
        for round_no in range(args.rounds):
            for phase in phases:
                runs[phase].append(run_phase(bench, phase, gateway_url))
                print(f"round {round_no + 1} {phase} done", file=sys.stderr)
        if args.profile:
            profiles = profile(bench, gateway_url, args.profile_dir)
        peak_rss_mb = {name: round(rss_mb(pid), 1) for name, pid in bench.pids().items()}
    finally:
        bench.stop()

    report: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "cpu": _cpu_model(), "load_avg": os.getloadavg()},
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "summary": {phase: summarize_phase(phase, runs[phase]) for phase in phases},
        "idle_cpu_cores": idle_cores,
        "peak_rss_mb": peak_rss_mb,
        "runs": runs,
    }
    if profiles is not None:
        report["profile"] = profiles
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
