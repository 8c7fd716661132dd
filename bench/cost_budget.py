"""Benchmark: the cost and budget processors (faust) on this machine.

Measures, with both processors running as their own OS processes:
  1. cost processor: priced calls/s with a backlog of attempts (the budget processor
     consumes the resulting usage at the same time, as in production);
  2. budget processor: usage records/s folded into budget state with a backlog of
     usage (produced straight to tollway.usage);
  3. budget lag: usage produced at a steady rate -> the budget-state record that
     includes it is readable (p50/p99/max), measured in this process (one clock);
  and CPU seconds per 1,000 records of each processor.

Not a test: it prints a summary and writes bench/out/cost_budget.json. Uses its own
Kafka (free loopback ports, data in $TOLLWAY_BENCH_KAFKA_DIR, default
.tollway/kafka-bench-cost: give each concurrent run its own), reset at start, stopped
at the end.

    python bench/cost_budget.py [--calls 30000] [--teams 20] [--keys 100]
                                [--lag-rates 200,1000] [--lag-s 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["TOLLWAY_KAFKA_DIR"] = os.environ.get(
    "TOLLWAY_BENCH_KAFKA_DIR", str(REPO / ".tollway" / "kafka-bench-cost")
)

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402

from deploy.stack import kafka, start_kafka  # noqa: E402
from schemas import codec, topics  # noqa: E402
from schemas.records import Attempt, UsageRecord  # noqa: E402
from workers.budget.partitioning import usage_partition  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
MOCK_COST_NANO = 2_000_000
OUT = REPO / "bench" / "out" / "cost_budget.json"


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def attempt(team: str, key: str) -> Attempt:
    t = now_ms()
    return {
        "request_id": f"req_b_{uuid.uuid4().hex}",
        "attempt_id": f"{uuid.uuid4().hex[:16]}.1",
        "attempt": 1,
        "team_id": team,
        "key_id": key,
        "mode": "sync",
        "deployment": "mock",
        "provider": "openai",
        "model": "mock-bench",
        "started_at_ms": t - 10,
        "latency_ms": 10.0,
        "outcome": "ok",
        "http_status": 200,
        "error_type": None,
        "error_code": None,
        "prompt_tokens": 1000,
        "completion_tokens": 500,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "router_id": "bench",
    }


def usage(team: str, key: str, cost: int) -> UsageRecord:
    t = now_ms()
    rid = f"req_b_{uuid.uuid4().hex}"
    return {
        "usage_id": f"{rid}:x.1",
        "request_id": rid,
        "attempt_id": "x.1",
        "team_id": team,
        "key_id": key,
        "mode": "sync",
        "requested_model": "mock-bench",
        "model": "mock-bench",
        "provider": "openai",
        "deployment": "mock",
        "prompt_tokens": 1000,
        "completion_tokens": 500,
        "cached_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cost_nano_usd": cost,
        "saved_nano_usd": 0,
        "cost_status": "priced",
        "pricing_version": "bench",
        "occurred_at_ms": t,
        "priced_at_ms": t,
    }


class Proc:
    def __init__(self, module: str, env: dict[str, str], log: Path) -> None:
        self.module, self.env, self.log = module, env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module],
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
            )

    async def ready(self) -> None:
        deadline = time.monotonic() + 60
        while "[^Worker]: Ready" not in self.log.read_text(errors="replace"):
            if time.monotonic() > deadline or (self.process and self.process.poll() is not None):
                raise RuntimeError(f"{self.module} did not start, see {self.log}")
            await asyncio.sleep(0.2)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()


class Watch:
    """Reads tollway.usage and tollway.budget-state (from their ends) with arrival times."""

    def __init__(self, bootstrap: str) -> None:
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20
        )
        self.usage_arrivals: dict[str, list[float]] = {}
        self.spent: dict[str, int] = {}
        self.history: dict[str, list[tuple[int, float]]] = {}  # first arrival of each spend
        self.waiters: dict[str, list[tuple[int, asyncio.Future[float]]]] = {}
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        tps = [
            TopicPartition(t.name, p)
            for t in (topics.USAGE, topics.BUDGET_STATE)
            for p in range(t.partitions)
        ]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:
            await self.consumer.position(tp)
        self.task = asyncio.create_task(self.run())

    async def run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100, max_records=20_000)
            now = time.monotonic()
            for tp, records in batch.items():
                for r in records:
                    key = r.key.decode()
                    if tp.topic == topics.USAGE.name:  # keyed by team: no need to decode
                        self.usage_arrivals.setdefault(key, []).append(now)
                    elif key.startswith("team:"):
                        spent = codec.decode("budget_state", r.value)["spent_nano_usd"]
                        if spent > self.spent.get(key, -1):
                            self.history.setdefault(key, []).append((spent, now))
                        self.spent[key] = spent
                        waiting = self.waiters.get(key)
                        while waiting and waiting[0][0] <= spent:
                            waiting.pop(0)[1].set_result(now)

    def wait_spent(self, key: str, target: int) -> asyncio.Future[float]:
        """Resolves with the arrival time of the first state of `key` with spent >= target."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        reached = [t for spent, t in self.history.get(key, []) if spent >= target]
        if reached:
            fut.set_result(reached[0])
        else:  # targets per key are requested in increasing order
            self.waiters.setdefault(key, []).append((target, fut))
        return fut

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        await self.consumer.stop()


async def send_all(
    producer: AIOKafkaProducer, topic: str, items: list[tuple[bytes, bytes]]
) -> None:
    futures = [await producer.send(topic, value, key=key) for key, value in items]
    await asyncio.gather(*futures)


async def until(check: Any, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark phase did not finish")
        await asyncio.sleep(0.02)
    return time.monotonic()


async def bench(args: argparse.Namespace, bootstrap: str) -> dict[str, Any]:
    run = uuid.uuid4().hex[:6]
    logs = REPO / ".tollway" / "logs" / f"bench-cost-budget-{run}"
    logs.mkdir(parents=True, exist_ok=True)
    teams = [f"t{run}-{i}" for i in range(args.teams)]  # phase 1: via the cost processor
    teams2 = [f"u{run}-{i}" for i in range(args.teams)]  # phase 2: usage straight in
    teams3 = [f"l{run}-{i}" for i in range(args.teams)]  # phase 3: lag
    keys = [f"k{run}-{i}" for i in range(args.keys)]
    # Every team has a budget (big, soft: never refuses): its states go out with each batch,
    # as for any scope enforcement reads. Keys have none: their states are coalesced.
    budgets = logs / "budgets.yaml"
    budgets.write_text(
        "".join(
            f'- {{scope: "team:{t}", window: 24h, limit_usd: "1000000", enforcement: soft}}\n'
            for t in teams + teams2 + teams3
        )
    )
    common = {
        "TOLLWAY_KAFKA_BOOTSTRAP": bootstrap,
        "TOLLWAY_LOG_LEVEL": "INFO",
        "TOLLWAY_BUDGETS_FILE": str(budgets),
    }
    cost = Proc(
        "workers.cost.agent",
        {**common, "TOLLWAY_COST_APP_ID": f"bench-cost-{run}", "TOLLWAY_COST_START_FROM": "latest",
         "TOLLWAY_COST_DATA_DIR": str(logs / "faust")},
        logs / "cost.log",
    )  # fmt: skip
    budget = Proc(
        "workers.budget.agent",
        {**common, "TOLLWAY_BUDGET_APP_ID": f"bench-budget-{run}",
         "TOLLWAY_BUDGET_START_FROM": "latest", "TOLLWAY_BUDGET_DATA_DIR": str(logs / "faust")},
        logs / "budget.log",
    )  # fmt: skip
    watch = Watch(bootstrap)
    await watch.start()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
        max_batch_size=256 * 1024,
    )  # fmt: skip
    await producer.start()
    cost.start()
    budget.start()
    results: dict[str, Any] = {"calls": args.calls, "teams": args.teams, "keys": args.keys}
    try:
        await asyncio.gather(cost.ready(), budget.ready())
        # Warm up every partition of both processors ("latest" resolves on first fetch).
        canaries: dict[int, str] = {}
        n = 0
        while len(canaries) < topics.USAGE.partitions:
            canaries.setdefault(usage_partition(f"warm-{run}-{n}"), f"warm-{run}-{n}")
            n += 1
        while not all(watch.spent.get(f"team:{t}:1h") for t in canaries.values()):
            items = [
                (str(i).encode(), codec.encode("attempt", attempt(t, "k")))
                for i, t in enumerate(canaries.values())
            ]
            await send_all(producer, topics.ATTEMPTS.name, items)
            await asyncio.sleep(1.0)
        await asyncio.sleep(2.0)

        # 1. cost processor (and the budget processor behind it), from a backlog
        attempts = [attempt(teams[i % len(teams)], keys[i % len(keys)]) for i in range(args.calls)]
        encoded = [(a["request_id"].encode(), codec.encode("attempt", a)) for a in attempts]
        per_team = dict.fromkeys(teams, 0)
        for a in attempts:
            per_team[a["team_id"]] += 1
        cpu0 = {p.module: cpu_s(p.pid) for p in (cost, budget)}
        t0 = time.monotonic()
        await send_all(producer, topics.ATTEMPTS.name, encoded)
        produced = time.monotonic()
        done_cost = await until(
            lambda: sum(len(watch.usage_arrivals.get(t, [])) for t in teams) >= args.calls, 300
        )
        arrivals = sorted(x for t in teams for x in watch.usage_arrivals.get(t, []))
        waits = [watch.wait_spent(f"team:{t}:1h", c * MOCK_COST_NANO) for t, c in per_team.items()]
        done_budget = max(await asyncio.gather(*waits))
        cpu1 = {p.module: cpu_s(p.pid) for p in (cost, budget)}
        steady = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else 0
        results["cost"] = {
            "produce_s": round(produced - t0, 3),
            "calls_per_s_end_to_end": round(args.calls / (done_cost - t0)),
            "calls_per_s_steady": round(steady),
            "pipeline_budget_done_per_s": round(args.calls / (done_budget - t0)),
            "cpu_s_per_1k_cost": round(
                (cpu1[cost.module] - cpu0[cost.module]) / args.calls * 1000, 3
            ),
        }
        print("cost:", results["cost"], flush=True)

        # 2. budget processor alone, from a backlog of usage
        records = [
            usage(teams2[i % len(teams2)], keys[i % len(keys)], 1_000 + i % 7)
            for i in range(args.calls)
        ]
        totals: dict[str, int] = {}
        for r in records:
            totals[r["team_id"]] = totals.get(r["team_id"], 0) + r["cost_nano_usd"]
        encoded = [(r["team_id"].encode(), codec.encode("usage", r)) for r in records]
        waits = [watch.wait_spent(f"team:{t}:1h", c) for t, c in totals.items()]
        cpu0 = {p.module: cpu_s(p.pid) for p in (cost, budget)}
        t0 = time.monotonic()
        await send_all(producer, topics.USAGE.name, encoded)
        produced = time.monotonic()
        done = max(await asyncio.wait_for(asyncio.gather(*waits), 300))
        cpu1 = {p.module: cpu_s(p.pid) for p in (cost, budget)}
        results["budget"] = {
            "produce_s": round(produced - t0, 3),
            "usage_per_s": round(args.calls / (done - t0)),
            "cpu_s_per_1k_budget": round(
                (cpu1[budget.module] - cpu0[budget.module]) / args.calls * 1000, 3
            ),
        }
        print("budget:", results["budget"], flush=True)

        # 3. lag: usage at a steady rate; lag = produced -> state including it is readable
        await asyncio.sleep(5.0)  # let the backlog phases' tails (coalesced states) drain
        spent_so_far = dict.fromkeys(teams3, 0)
        results["lag"] = []
        for rate in args.lag_rates:
            lags: list[float] = []
            pending: list[asyncio.Task[None]] = []

            async def measure(key: str, target: int, sent_at: float, out: list[float]) -> None:
                arrived = await watch.wait_spent(key, target)
                out.append((arrived - sent_at) * 1000)

            start = time.monotonic()
            i = 0
            while time.monotonic() - start < args.lag_s:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                team = teams3[i % len(teams3)]
                record = usage(team, keys[i % len(keys)], 1_000)
                spent_so_far[team] += 1_000
                sent_at = time.monotonic()
                value = codec.encode("usage", record)
                await producer.send(topics.USAGE.name, value, key=team.encode())
                key = f"team:{team}:1h"
                pending.append(asyncio.create_task(measure(key, spent_so_far[team], sent_at, lags)))
                i += 1
            await asyncio.wait_for(asyncio.gather(*pending), 120)
            lags.sort()
            figures = {
                "rate_per_s": rate,
                "records": len(lags),
                "p50_ms": round(statistics.median(lags), 1),
                "p99_ms": round(lags[int(len(lags) * 0.99) - 1], 1),
                "max_ms": round(lags[-1], 1),
            }
            results["lag"].append(figures)
            print("lag:", figures, flush=True)
    finally:
        cost.stop()
        budget.stop()
        await producer.stop()
        await watch.stop()
    return results


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main() -> None:
    # Free loopback ports: other brokers (tests, CI copies, other benchmarks) come and go.
    os.environ["TOLLWAY_KAFKA_PORT"] = str(free_port())
    os.environ["TOLLWAY_KAFKA_CONTROLLER_PORT"] = str(free_port())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30_000)
    parser.add_argument("--teams", type=int, default=20)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument(
        "--lag-rates",
        type=lambda text: [float(r) for r in text.split(",")],
        default=[200.0, 1_000.0],
        help="usage/s during the lag measurement, comma-separated",
    )
    parser.add_argument("--lag-s", type=float, default=10.0)
    args = parser.parse_args()
    kafka("reset")
    try:
        bootstrap = start_kafka()
        results = asyncio.run(bench(args, bootstrap))
    finally:
        kafka("stop")
    results["machine"] = {"cpus": os.cpu_count()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
