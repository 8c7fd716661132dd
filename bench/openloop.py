"""Open-loop, constant-arrival-rate load generator of the side-by-side benchmark.

Open loop: request i starts at start + i / rate whatever the earlier ones are doing,
so a slow server faces a growing queue and its tail latency shows (a closed loop
would slow down with it and hide the tail). One process offers `--rate-rps`; the
orchestrator (`run_load`) runs K processes at rate/K each, shifted by a fraction of
the interval, to offer rates one Python process cannot.

Modes (what counts as ok):
    sync    POST, 200 and a complete body
    stream  POST with "stream": true, 200 and at least one SSE `data:` line;
            TTFT = time to the first bytes holding `data:`
    async   POST, 202 (Tollway's /v1/async/chat/completions: acceptance only)
`--burst N --concurrency C` instead sends N requests from C closed-loop workers as
fast as they are answered (bulk acceptance throughput); the window is the burst.

Latency is timed from the moment a request is started (milliseconds). Requests are
started only inside the wall-clock window: a generator that falls behind offers
less than the nominal rate, and `issued` says so (`late_ms_p99` says by how much).
Each request has `--timeout-s` (5 s); a timeout is an error. Loopback only.

Prints one JSON line: issued, all_issued, ok, errors, error_kinds, window_s,
latencies_ms (sorted), ttfts_ms, late_ms_p99, cpu_s (this process), stream.

    python bench/openloop.py URL --mode sync --rate-rps 200 --duration-s 8 --warmup-s 1
    python bench/openloop.py URL --mode async --burst 20000 --concurrency 128
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

EXPECTED_STATUS = {"sync": 200, "stream": 200, "async": 202}
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench-loopback"}


def request_body(model: str, mode: str) -> bytes:
    payload: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "benchmark"}],
        "max_tokens": 16,
    }
    if mode == "stream":
        payload["stream"] = True
    return json.dumps(payload).encode()


@dataclass
class Recorder:
    """Outcomes of the requests started at or after `measure_from` (perf_counter seconds)."""

    measure_from: float
    latencies_ms: list[float] = field(default_factory=list)
    ttfts_ms: list[float] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)
    issued: int = 0
    all_issued: int = 0
    ok: int = 0

    def started(self, t0: float) -> None:
        self.all_issued += 1
        if t0 >= self.measure_from:
            self.issued += 1

    def finished(self, t0: float, t_first: float | None, t1: float, error: str | None) -> None:
        if t0 < self.measure_from:
            return
        if error is not None:
            self.error_kinds[error] = self.error_kinds.get(error, 0) + 1
            return
        self.ok += 1
        self.latencies_ms.append((t1 - t0) * 1000)
        if t_first is not None:
            self.ttfts_ms.append((t_first - t0) * 1000)


async def one_request(
    session: aiohttp.ClientSession, url: str, data: bytes, mode: str, recorder: Recorder
) -> None:
    t0 = time.perf_counter()
    recorder.started(t0)
    t_first: float | None = None
    error: str | None = None
    try:
        async with session.post(url, data=data) as response:
            if mode == "stream":
                seen = b""
                async for chunk in response.content.iter_any():
                    if t_first is None:
                        seen += chunk
                        if b"data:" in seen:
                            t_first = time.perf_counter()
                if t_first is None:
                    error = "no_sse_data"
            else:
                await response.read()
            if response.status != EXPECTED_STATUS[mode]:
                error = f"http_{response.status}"
    except TimeoutError:
        error = "timeout"
    except aiohttp.ClientError as exc:
        error = type(exc).__name__
    recorder.finished(t0, t_first, time.perf_counter(), error)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    data = request_body(args.model, args.mode)
    limit = args.concurrency if args.burst else 0  # open loop: never queue in the client
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
    timeout = aiohttp.ClientTimeout(total=args.timeout_s)
    late_ms: list[float] = []
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    async with aiohttp.ClientSession(
        connector=connector, headers=HEADERS, timeout=timeout
    ) as session:
        start = time.perf_counter()
        if args.burst:
            recorder = Recorder(start)
            remaining = [args.burst]

            async def worker() -> None:
                while remaining[0] > 0:
                    remaining[0] -= 1
                    await one_request(session, args.url, data, args.mode, recorder)

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            window_s = time.perf_counter() - start
        else:
            recorder = Recorder(start + args.warmup_s)
            stop_at = recorder.measure_from + args.duration_s
            interval_s = 1.0 / args.rate_rps
            offset_s = args.phase * interval_s
            tasks: set[asyncio.Task[None]] = set()
            i = 0
            while True:
                due = start + offset_s + i * interval_s
                now = time.perf_counter()
                if due >= stop_at or now >= stop_at:
                    break
                if due > now:
                    await asyncio.sleep(due - now)
                elif due >= recorder.measure_from:
                    late_ms.append((now - due) * 1000)
                task = asyncio.create_task(
                    one_request(session, args.url, data, args.mode, recorder)
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if tasks:
                await asyncio.wait(tasks, timeout=args.timeout_s + 5)
            window_s = args.duration_s
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    late_ms.sort()
    return {
        "issued": recorder.issued,
        "all_issued": recorder.all_issued,
        "ok": recorder.ok,
        "errors": recorder.issued - recorder.ok,
        "error_kinds": recorder.error_kinds,
        "window_s": round(window_s, 4),
        "latencies_ms": sorted(round(x, 3) for x in recorder.latencies_ms),
        "ttfts_ms": sorted(round(x, 3) for x in recorder.ttfts_ms),
        "late_ms_p99": round(late_ms[int(0.99 * (len(late_ms) - 1))], 2) if late_ms else 0.0,
        "cpu_s": round(cpu_s, 3),
        "stream": args.mode == "stream",
    }


def processes_for(rate_rps: float, per_process_rps: float = 1000.0, most: int = 4) -> int:
    """How many generator processes offer `rate_rps` (one Python process ~1k req/s here)."""
    return max(1, min(most, math.ceil(rate_rps / per_process_rps)))


def run_load(
    url: str,
    *,
    mode: str,
    model: str,
    rate_rps: float | None = None,
    duration_s: float = 8.0,
    warmup_s: float = 1.0,
    burst: int = 0,
    concurrency: int = 64,
    processes: int | None = None,
    timeout_s: float = 5.0,
) -> list[dict[str, Any]]:
    """Run the generator in K processes at once; returns their JSON outputs (merge_loads)."""
    k = processes or (processes_for(rate_rps) if rate_rps else 2)
    common = [sys.executable, str(Path(__file__).resolve()), url, "--mode", mode,
              "--model", model, "--timeout-s", str(timeout_s)]  # fmt: skip
    argvs: list[list[str]] = []
    for i in range(k):
        if burst:
            share = burst // k + (1 if i < burst % k else 0)
            extra = ["--burst", str(share), "--concurrency", str(max(1, concurrency // k))]
        else:
            assert rate_rps is not None
            extra = ["--rate-rps", str(rate_rps / k), "--phase", str(i / k),
                     "--duration-s", str(duration_s), "--warmup-s", str(warmup_s)]  # fmt: skip
        argvs.append(common + extra)
    return collect(argvs)


def collect(argvs: Sequence[list[str]]) -> list[dict[str, Any]]:
    children = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv in argvs
    ]
    outputs: list[dict[str, Any]] = []
    for child in children:
        out, err = child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"load generator failed ({child.returncode}): {err[-2000:]}")
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("url")
    parser.add_argument("--mode", choices=sorted(EXPECTED_STATUS), default="sync")
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--rate-rps", type=float, default=100.0)
    parser.add_argument("--phase", type=float, default=0.0, help="start offset, in intervals")
    parser.add_argument("--duration-s", type=float, default=8.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--burst", type=int, default=0, help="N requests, closed loop")
    parser.add_argument("--concurrency", type=int, default=64, help="workers of a burst")
    parser.add_argument("--timeout-s", type=float, default=5.0)
    args = parser.parse_args()
    if not args.url.startswith(("http://127.", "http://localhost")):
        sys.exit("openloop only targets loopback")
    import uvloop  # a Tollway dependency: the generator's own CPU per request stays low

    print(json.dumps(uvloop.run(run(args))))


if __name__ == "__main__":
    main()
