"""Closed-loop load generator: N workers each send a request as soon as the last one answered.

Runs in its own process (so its CPU is not charged to the system under test)
and prints one JSON line: requests, errors, elapsed_s, latencies_ms (p50/p95/p99).
Loopback only; bounded by --duration-s.

    python bench/loadgen.py URL --concurrency 100 --duration-s 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

import aiohttp

BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "benchmark"}],
        "max_tokens": 16,
    }
).encode()


async def run(url: str, concurrency: int, duration_s: float, warmup_s: float) -> dict[str, object]:
    latencies_ms: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    headers = {"content-type": "application/json", "authorization": "Bearer bench"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        start = time.perf_counter()
        measure_from = start + warmup_s
        stop_at = measure_from + duration_s

        async def worker() -> None:
            nonlocal errors
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    async with session.post(url, data=BODY) as response:
                        await response.read()
                        ok = response.status == 200
                except aiohttp.ClientError:
                    ok = False
                t1 = time.perf_counter()
                if t0 >= measure_from:
                    if ok:
                        latencies_ms.append((t1 - t0) * 1000)
                    else:
                        errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies_ms.sort()

    def pct(p: float) -> float:
        return (
            latencies_ms[min(len(latencies_ms) - 1, int(p * len(latencies_ms)))]
            if latencies_ms
            else 0.0
        )

    return {
        "requests": len(latencies_ms),
        "errors": errors,
        "elapsed_s": duration_s,
        "throughput_rps": len(latencies_ms) / duration_s,
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "mean_ms": statistics.fmean(latencies_ms) if latencies_ms else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    args = parser.parse_args()
    if not args.url.startswith(("http://127.", "http://localhost")):
        sys.exit("loadgen only targets loopback")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(run(args.url, args.concurrency, args.duration_s, args.warmup_s))))


if __name__ == "__main__":
    main()
