"""Benchmark: sync chat completions through ingress -> Kafka -> router -> mock provider.

Measures, at a fixed concurrency (closed loop), against the mock provider
directly and then through the whole gateway:
  - sustained throughput (requests/s) and latency p50/p95/p99,
  - added latency (gateway minus direct) at each percentile,
  - CPU seconds per request of every process (ingress, routers, mock, Kafka),
    read from /proc/<pid>/stat before and after the measured window.

Not a test: it prints a table and writes bench/out/sync_throughput.json.
Uses its own Kafka (port 39092, data in .tollway/kafka-bench), loopback only.

    python bench/sync_throughput.py [--concurrency 100] [--duration-s 15] [--routers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.update(
    {
        "TOLLWAY_KAFKA_PORT": "39092",
        "TOLLWAY_KAFKA_CONTROLLER_PORT": "39093",
        "TOLLWAY_KAFKA_DIR": str(REPO / ".tollway" / "kafka-bench"),
    }
)

from deploy.stack import STATE_DIR, Stack, kafka, start_kafka  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def kafka_pid() -> int:
    return int((Path(os.environ["TOLLWAY_KAFKA_DIR"]) / "kafka.pid").read_text().strip())


def load(url: str, concurrency: int, duration_s: float) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "loadgen.py"),
            url,
            "--concurrency",
            str(concurrency),
            "--duration-s",
            str(duration_s),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure(
    url: str, pids: dict[str, int], concurrency: int, duration_s: float
) -> dict[str, object]:
    before = {name: cpu_s(pid) for name, pid in pids.items()}
    stats = load(url, concurrency, duration_s)
    after = {name: cpu_s(pid) for name, pid in pids.items()}
    # the loadgen warms up 2 s before its measured window: charge CPU over the whole run
    total_requests = max(1.0, stats["throughput_rps"] * (duration_s + 2.0))
    cpu_ms_per_request = {
        name: round((after[name] - before[name]) / total_requests * 1000, 3) for name in pids
    }
    return {
        "load": stats,
        "cpu_ms_per_request": cpu_ms_per_request,
        "peak_rss_mb": {name: round(rss_mb(pid), 1) for name, pid in pids.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--duration-s", type=float, default=15.0)
    parser.add_argument("--routers", type=int, default=1)
    parser.add_argument("--mock-latency-ms", type=int, default=50)
    args = parser.parse_args()

    kafka("reset")
    bootstrap = start_kafka()
    stack = Stack(
        ingress_port=38000,
        mock_port=38080,
        routers=args.routers,
        mock_latency_ms=args.mock_latency_ms,
        log_dir=STATE_DIR / "logs" / "bench",
    )
    stack.start(bootstrap)
    try:
        pids = {c.name: c.process.pid for c in stack.components if c.process is not None}
        mock_url = f"http://127.0.0.1:{stack.mock_port}/v1/chat/completions"
        gateway_url = f"{stack.url}/v1/chat/completions"
        load(gateway_url, 20, 3)  # warm the pipeline (connections, JIT of the broker)
        direct = measure(
            mock_url, {"mock-provider": pids["mock-provider"]}, args.concurrency, args.duration_s
        )
        gateway = measure(
            gateway_url, {**pids, "kafka": kafka_pid()}, args.concurrency, args.duration_s
        )
    finally:
        stack.stop()
        kafka("stop")

    d, g = direct["load"], gateway["load"]
    assert isinstance(d, dict)
    assert isinstance(g, dict)
    report = {
        "machine": {"cores": os.cpu_count(), "cpu": _cpu_model()},
        "settings": vars(args),
        "direct": direct,
        "gateway": gateway,
        "added_latency_ms": {p: round(g[p] - d[p], 2) for p in ("p50_ms", "p95_ms", "p99_ms")},
    }
    out = REPO / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "sync_throughput.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
