"""Bulk async acceptance: N requests through POST /v1/async/bulk/chat/completions.

Closed loop: `connections` keep-alive connections each send calls of `items` requests
(one pre-built body) until N requests were sent; a request counts as accepted when
its call answered 202 and its entry is `queued` (written to Kafka, acks=all).
accepted/s = accepted requests / (last answer - first send). CPU ms per accepted
request of the ingress and of Kafka from /proc (bench/proctree.py), the load average
before and after (the machine is shared: read the figure with it).

    python bench/bulk_accept.py --start [--n 50000] [--items 1000] [--connections 4]
        Kafka (deploy/kafka/kafka.sh: TOLLWAY_KAFKA_PORT, TOLLWAY_KAFKA_CONTROLLER_PORT,
        TOLLWAY_KAFKA_DIR; reset first) and one ingress (TOLLWAY_AUTH=open, port
        TOLLWAY_BENCH_BULK_INGRESS_PORT, default 28300) only: no router, so nothing
        consumes the requests; stopped at the end. Writes bench/out/bulk_accept.json.
    python bench/bulk_accept.py --url http://127.0.0.1:8000 --ingress-pid PID ...
        against a running ingress (what bench/compare.py does: `measure`).
    --profile   py-spy (from the venv) records the ingress during the run:
                bench/out/bulk_accept-profile.txt (top self time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]

import aiohttp  # noqa: E402
import orjson  # noqa: E402
import proctree  # noqa: E402

PATH = "/v1/async/bulk/chat/completions"
MODEL = "gpt-4o-mini"
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench-loopback"}
INGRESS_PORT = int(os.environ.get("TOLLWAY_BENCH_BULK_INGRESS_PORT", "28300"))


def call_body(items: int, model: str = MODEL) -> bytes:
    """One call: `items` copies of the single-request bench's body (bench/openloop.py)."""
    item = {
        "model": model,
        "messages": [{"role": "user", "content": "benchmark"}],
        "max_tokens": 16,
    }
    return orjson.dumps({"requests": [item] * items})


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


async def drive(url: str, n: int, items: int, connections: int) -> dict[str, Any]:
    """Send ceil(n / items) calls over `connections` connections; count what was queued."""
    calls = -(-n // items)
    body = call_body(items)
    latencies_ms: list[float] = []
    statuses: dict[str, int] = {}
    counts = {"accepted": 0, "refused": 0}
    next_call = 0
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for _ in range(2):  # warm-up: connections, producer metadata, lazy imports
            async with session.post(url + PATH, data=call_body(10), headers=HEADERS) as r:
                await r.read()

        async def worker() -> None:
            nonlocal next_call
            while next_call < calls:
                next_call += 1
                sent = time.perf_counter()
                try:
                    async with session.post(url + PATH, data=body, headers=HEADERS) as response:
                        raw = await response.read()
                        status = str(response.status)
                except aiohttp.ClientError as exc:
                    status, raw = type(exc).__name__, b""
                latencies_ms.append((time.perf_counter() - sent) * 1000)
                statuses[status] = statuses.get(status, 0) + 1
                if status == "202":
                    answer = orjson.loads(raw)
                    counts["accepted"] += answer["queued"]
                    counts["refused"] += answer["refused"]

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        window_s = time.perf_counter() - started
    return {
        "requests": calls * items,
        "calls": calls,
        "items_per_call": items,
        "connections": connections,
        "accepted": counts["accepted"],
        "refused_items": counts["refused"],
        "call_statuses": statuses,
        "window_s": round(window_s, 3),
        "accepted_per_s": round(counts["accepted"] / window_s, 1) if window_s > 0 else 0.0,
        "call_latency_ms": {
            "p50_ms": _pct(latencies_ms, 0.50),
            "p99_ms": _pct(latencies_ms, 0.99),
            "max_ms": _pct(latencies_ms, 1.0),
        },
    }


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            out[name] = proctree.tree_cpu_s(pid)
        except (OSError, IndexError, ValueError):
            continue
    return out


def measure(
    url: str, pids: dict[str, int], n: int, items: int = 1_000, connections: int = 4
) -> dict[str, Any]:
    """`drive`, with CPU ms per accepted request of each process in `pids` and the load."""
    load_before = os.getloadavg()
    before = _cpu(pids)
    out = asyncio.run(drive(url, n, items, connections))
    after = _cpu(pids)
    accepted = max(1, out["accepted"])
    out["cpu_ms_per_accepted"] = {
        name: round((after[name] - before[name]) * 1000 / accepted, 4)
        for name in before
        if name in after
    }
    out["cpu_s"] = {name: round(after[name] - before[name], 2) for name in before if name in after}
    out["load_avg_before"] = [round(x, 2) for x in load_before]
    out["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    return out


def _profile(pid: int, seconds: int, raw: Path) -> subprocess.Popen[bytes] | None:
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        print("py-spy is not in the venv: no profile", file=sys.stderr)
        return None
    argv = [str(py_spy), "record", "--pid", str(pid), "--duration", str(seconds),
            "--rate", "200", "--format", "raw", "--nonblocking", "--output", str(raw)]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _run(args: argparse.Namespace, url: str, pids: dict[str, int]) -> dict[str, Any]:
    spy = None
    raw = BENCH / "out" / "bulk_accept-profile.raw"
    if args.profile and "ingress" in pids:
        raw.parent.mkdir(parents=True, exist_ok=True)
        spy = _profile(pids["ingress"], args.profile_s, raw)
        time.sleep(1.0)
    out = measure(url, pids, args.n, args.items, args.connections)
    if spy is not None:
        spy.wait(args.profile_s + 60)
        from profile_summary import render, summarize

        summary = summarize(raw.read_text().splitlines(), top=30)
        text = render("ingress", summary)
        (BENCH / "out" / "bulk_accept-profile.txt").write_text(text)
        out["profile"] = {"samples": summary["samples"], "self": summary["self"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--start", action="store_true", help="start Kafka and one ingress")
    parser.add_argument("--url", default="", help="a running ingress (without --start)")
    parser.add_argument("--ingress-pid", type=int, default=0, help="its pid, for CPU")
    parser.add_argument("--n", type=int, default=50_000, help="requests in all")
    parser.add_argument("--items", type=int, default=1_000, help="requests per call")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--profile", action="store_true", help="py-spy on the ingress")
    parser.add_argument("--profile-s", type=int, default=20, help="py-spy's recording length")
    parser.add_argument("--out-json", type=Path, default=BENCH / "out" / "bulk_accept.json")
    args = parser.parse_args()
    if not args.start:
        if not args.url:
            parser.error("--url or --start")
        pids = {"ingress": args.ingress_pid} if args.ingress_pid else {}
        out = _run(args, args.url, pids)
    else:
        from deploy import stack as stack_module

        stack_module.kafka("reset")
        bootstrap = stack_module.start_kafka()
        stack = stack_module.Stack(
            ingress_port=INGRESS_PORT,
            use_mock=False,
            extra_env={"TOLLWAY_AUTH": "open", "TOLLWAY_LOG_LEVEL": "WARNING"},
        )
        parts = [c for c in stack.plan(bootstrap) if c.name == "ingress"]
        stack.components = parts
        try:
            for component in parts:
                component.start(stack.log_dir)
            deadline = time.monotonic() + 120.0
            for component in parts:
                stack.wait_healthy(component, deadline)
            kafka_dir = Path(os.environ.get("TOLLWAY_KAFKA_DIR", REPO / ".tollway" / "kafka"))
            pids = {"ingress": stack.get("ingress").process.pid}  # type: ignore[union-attr]  # started above
            kafka_pid = kafka_dir / "kafka.pid"
            if kafka_pid.exists():
                pids["kafka"] = int(kafka_pid.read_text().strip())
            out = _run(args, stack.url, pids)
        finally:
            stack.stop()
            stack_module.kafka("stop")
    out["command"] = " ".join(["python bench/bulk_accept.py", *sys.argv[1:]])
    out["nproc"] = os.cpu_count()
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    shown = {k: v for k, v in out.items() if k != "profile"}
    print(json.dumps(shown, indent=2, default=str))


if __name__ == "__main__":
    main()
