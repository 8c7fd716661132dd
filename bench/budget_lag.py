"""Benchmark: budget lag — how late are requests admitted once a hard budget is used up?

Steady sync load (default 150 req/s) against one team with a small hard budget
(sized so it runs out after ~`--exhaust-after-s` seconds), through the real path:
ingress -> Kafka -> router -> mock provider -> cost and budget processors
(tests/integration/budget_stack.py; the router and the mock run in this process).
Two phases, each with fresh processors and a fresh budget window:

  reservations  the router holds each call's worst case (docs/decisions/0009)
  ingress-only  the router runs without budgets: admission on budget state only

Per phase, from the priced usage (`tollway.usage`, ordered by event time):
  exhausted_at  when the settled spend first left no room for one more request
                (spend > limit - the dearest request); for ingress-only also the
                literal crossing (spend >= limit)
  late          provider calls that STARTED after exhausted_at: count, and how long
                after (p50/p99/max ms) — the admission lag; ~none with reservations
  propagation   literal crossing -> the first `tollway.budget-state` record saying
                `exceeded` read by a consumer in this process (what every BudgetView
                sees): the budget-state propagation lag
  overspend     settled spend - limit (and used_pct: settled / limit)

Not a test: prints a summary, writes bench/out/budget_lag.json. Uses the broker at
TOLLWAY_KAFKA_BOOTSTRAP (started with deploy/kafka/kafka.sh and the same
TOLLWAY_KAFKA_* env if it is not running; see README).

    python bench/budget_lag.py [--rate 150] [--exhaust-after-s 5] [--duration-s 12]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TOLLWAY_AUTH", "open")  # the ingress it starts reads no virtual key

import aiohttp  # noqa: E402
import orjson  # noqa: E402

from deploy.stack import start_kafka  # noqa: E402
from tests.integration.budget_stack import MODEL, TEAM, BudgetStack, now_ms  # noqa: E402

OUT = REPO / "bench" / "out" / "budget_lag.json"
BODY = orjson.dumps(
    {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
)
APPROX_REQUEST_USD = 0.0144  # 16 x $900/M + ~4 x $10/M: sizes the budget only


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 1)


async def load(url: str, rate: float, duration_s: float) -> dict[int, int]:
    """Steady open-loop load; returns the count per HTTP status (0: transport error).
    aiohttp: httpx costs several ms of CPU per request in this (shared) event loop."""
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=1_000)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> None:
            try:
                async with session.post(
                    f"{url}/v1/chat/completions",
                    data=BODY,
                    headers={"content-type": "application/json"},
                ) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            statuses[status] = statuses.get(status, 0) + 1

        tasks = []
        start = time.monotonic()
        for i in range(int(rate * duration_s)):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return statuses


async def phase(
    bootstrap: str, workdir: Path, *, reservations: bool, args: argparse.Namespace
) -> dict[str, Any]:
    limit_usd = f"{APPROX_REQUEST_USD * args.rate * args.exhaust_after_s:.2f}"
    stack = BudgetStack(
        bootstrap, workdir, limit_usd=limit_usd, router_budgets=reservations, mock_latency_ms=20
    )
    exceeded_seen: list[int] = []

    def on_state(key: str, state: Any) -> None:
        if key == f"team:{TEAM}:1h" and state["status"] == "exceeded" and not exceeded_seen:
            exceeded_seen.append(now_ms())

    await stack.start()
    try:
        assert stack.tail is not None
        stack.tail.on_state = on_state
        statuses = await load(stack.url, args.rate, args.duration_s)
        await asyncio.sleep(3.0)  # the last calls priced
        usage = sorted(stack.tail.usage_of(TEAM), key=lambda u: u["occurred_at_ms"])
        starts = {
            f"{a['request_id']}:{a['attempt_id']}": a["started_at_ms"]
            for _, a in stack.tail.attempts
            if a["team_id"] == TEAM
        }
    finally:
        await stack.stop()
    limit = stack.limit_nano_usd
    dearest = max((u["cost_nano_usd"] for u in usage), default=0)
    spent = 0
    exhausted_at = crossed_at = None
    for u in usage:
        spent += u["cost_nano_usd"]
        if exhausted_at is None and spent > limit - dearest:
            exhausted_at = u["occurred_at_ms"]
        if crossed_at is None and spent >= limit:
            crossed_at = u["occurred_at_ms"]
    late = sorted(
        float(starts[u["usage_id"]] - exhausted_at)
        for u in usage
        if exhausted_at is not None
        and u["usage_id"] in starts
        and starts[u["usage_id"]] > exhausted_at
    )
    propagation = (
        exceeded_seen[0] - crossed_at if exceeded_seen and crossed_at is not None else None
    )
    return {
        "mode": "reservations" if reservations else "ingress-only",
        "limit_usd": limit / 1e9,
        "request_usd": round(statistics.median(u["cost_nano_usd"] for u in usage) / 1e9, 6)
        if usage
        else None,
        "requests": int(args.rate * args.duration_s),
        "statuses": statuses,
        "calls_priced": len(usage),
        "settled_usd": round(spent / 1e9, 6),
        "overspend_usd": round(max(0, spent - limit) / 1e9, 6),
        "used_pct": round(100 * spent / limit, 1),
        "crossed_limit": crossed_at is not None,
        "late_calls": len(late),
        "late_p50_ms": pct(late, 50),
        "late_p99_ms": pct(late, 99),
        "late_max_ms": late[-1] if late else None,
        "propagation_ms": propagation,
    }


async def main_async(args: argparse.Namespace, bootstrap: str) -> dict[str, Any]:
    results = []
    with tempfile.TemporaryDirectory(prefix="tollway-budget-lag-") as tmp:
        for reservations in (True, False):
            mode = "reservations" if reservations else "ingress-only"
            print(f"phase {mode} ...", flush=True)
            results.append(
                await phase(bootstrap, Path(tmp) / mode, reservations=reservations, args=args)
            )
    return {
        "settings": {
            "rate_per_s": args.rate,
            "duration_s": args.duration_s,
            "exhaust_after_s": args.exhaust_after_s,
            "cores": os.cpu_count(),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 1),
        },
        "phases": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=150.0, help="requests per second")
    parser.add_argument("--duration-s", type=float, default=12.0)
    parser.add_argument(
        "--exhaust-after-s", type=float, default=5.0, help="the budget lasts about this long"
    )
    args = parser.parse_args()
    report = asyncio.run(main_async(args, start_kafka()))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    for p in report["phases"]:
        print(
            f"{p['mode']:>13}: {p['calls_priced']} calls for {p['requests']} requests "
            f"{p['statuses']}; settled ${p['settled_usd']} of ${p['limit_usd']} "
            f"({p['used_pct']} %, overspend ${p['overspend_usd']}); late calls {p['late_calls']} "
            f"p50 {p['late_p50_ms']} p99 {p['late_p99_ms']} max {p['late_max_ms']} ms; "
            f"state propagation {p['propagation_ms']} ms"
        )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
