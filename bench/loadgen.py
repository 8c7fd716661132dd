"""Load generator for the sync benchmark: closed loop, fixed rate (open loop) or streaming TTFT.

Runs in its own process (so its CPU is not charged to the system under test)
and prints one JSON line. Loopback only; bounded by --duration-s.

    closed loop: N workers each send a request as soon as their last one answered
        python bench/loadgen.py URL --concurrency 100 --duration-s 10
    fixed rate (open loop): one request every 1/R s whatever the answers do, so the
    latency is measured at a known offered load (not at whatever the server sustains)
        python bench/loadgen.py URL --rate-rps 100 --duration-s 10
    streaming: add --stream; the time to the first SSE `data:` bytes (TTFT) is measured
    besides the time to the end of the stream
        python bench/loadgen.py URL --rate-rps 50 --stream --model bench-stream

Output fields: requests (measured, after the warm-up), all_requests (warm-up
included: what CPU counters over the whole run saw), cpu_s (the generator's
own CPU over the run, start-up excluded), errors, elapsed_s,
throughput_rps, p50_ms/p95_ms/p99_ms/mean_ms (whole answer) and, with --stream,
ttft_p50_ms/ttft_p95_ms/ttft_p99_ms. Latency is timed from the moment a request
is issued; in fixed-rate mode `late_ms_p99` says how far the generator itself
fell behind its schedule (non-zero means the machine, not the server, was busy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import time

import aiohttp


def body(model: str, stream: bool) -> bytes:
    payload: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "benchmark"}],
        "max_tokens": 16,
    }
    if stream:
        payload["stream"] = True
    return json.dumps(payload).encode()


class Recorder:
    """Latencies of the measured window (milliseconds) and error counts."""

    def __init__(self, measure_from: float) -> None:
        self.measure_from = measure_from
        self.latencies_ms: list[float] = []
        self.ttfts_ms: list[float] = []
        self.errors = 0
        self.all_requests = 0

    def add(self, t0: float, t_first: float | None, t1: float, ok: bool) -> None:
        self.all_requests += 1
        if t0 < self.measure_from:
            return
        if not ok:
            self.errors += 1
            return
        self.latencies_ms.append((t1 - t0) * 1000)
        if t_first is not None:
            self.ttfts_ms.append((t_first - t0) * 1000)


async def one_request(
    session: aiohttp.ClientSession, url: str, data: bytes, stream: bool, recorder: Recorder
) -> None:
    t0 = time.perf_counter()
    t_first: float | None = None
    try:
        async with session.post(url, data=data) as response:
            if stream:
                seen = b""
                async for chunk in response.content.iter_any():
                    if t_first is None:
                        seen += chunk
                        if b"data:" in seen:
                            t_first = time.perf_counter()
            else:
                await response.read()
            ok = response.status == 200 and (not stream or t_first is not None)
    except aiohttp.ClientError:
        ok = False
    recorder.add(t0, t_first, time.perf_counter(), ok)


def pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(p * len(values)))] if values else 0.0


async def run(args: argparse.Namespace) -> dict[str, object]:
    data = body(args.model, args.stream)
    # unbounded pool in fixed-rate mode: the generator must never queue requests itself
    limit = args.concurrency if args.rate_rps is None else 0
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
    headers = {"content-type": "application/json", "authorization": "Bearer bench"}
    late_ms: list[float] = []
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        start = time.perf_counter()
        recorder = Recorder(start + args.warmup_s)
        stop_at = recorder.measure_from + args.duration_s

        if args.rate_rps is None:

            async def worker() -> None:
                while time.perf_counter() < stop_at:
                    await one_request(session, args.url, data, args.stream, recorder)

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        else:
            interval_s = 1.0 / args.rate_rps
            tasks: set[asyncio.Task[None]] = set()
            i = 0
            while True:
                due = start + i * interval_s
                if due >= stop_at:
                    break
                wait_s = due - time.perf_counter()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                else:
                    late_ms.append(-wait_s * 1000)
                task = asyncio.create_task(
                    one_request(session, args.url, data, args.stream, recorder)
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if tasks:
                await asyncio.wait(tasks, timeout=60)
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    latencies_ms = sorted(recorder.latencies_ms)
    ttfts_ms = sorted(recorder.ttfts_ms)
    out: dict[str, object] = {
        "requests": len(latencies_ms),
        "all_requests": recorder.all_requests,
        "errors": recorder.errors,
        "elapsed_s": args.duration_s,
        "throughput_rps": len(latencies_ms) / args.duration_s,
        "p50_ms": pct(latencies_ms, 0.50),
        "p95_ms": pct(latencies_ms, 0.95),
        "p99_ms": pct(latencies_ms, 0.99),
        "mean_ms": statistics.fmean(latencies_ms) if latencies_ms else 0.0,
        "cpu_s": cpu_s,
    }
    if args.stream:
        out.update(
            ttft_p50_ms=pct(ttfts_ms, 0.50),
            ttft_p95_ms=pct(ttfts_ms, 0.95),
            ttft_p99_ms=pct(ttfts_ms, 0.99),
        )
    if args.rate_rps is not None:
        out["late_ms_p99"] = pct(sorted(late_ms), 0.99) if late_ms else 0.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rate-rps", type=float, default=None, help="fixed rate (open loop)")
    parser.add_argument("--stream", action="store_true", help="stream: true; measure TTFT")
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    args = parser.parse_args()
    if not args.url.startswith(("http://127.", "http://localhost")):
        sys.exit("loadgen only targets loopback")
    import uvloop  # a pinned dependency: the generator must not be the bottleneck

    print(json.dumps(uvloop.run(run(args))))


if __name__ == "__main__":
    main()
