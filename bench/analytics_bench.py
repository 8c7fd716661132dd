"""Benchmark: the ClickHouse loader and the named queries on the embedded ClickHouse.

1. Loader throughput. N results and N usage records are produced to Kafka first; then
   one loader process (`python -m analytics.cli loader`, default settings) drains them
   into the embedded server (`analytics serve`, its own process) over HTTP. Rows/s =
   rows stored / time, measured by polling count() (from the loader's start, and
   steady-state from the first to the last row), with both processes' CPU seconds.
2. Visibility. While that loader runs, one usage record every 20 ms: the time from
   Kafka's acknowledgement to the row being visible in ClickHouse, p50/p99.
3. Crash safety. 50k results and 50k usage records, the loader SIGKILLed 10 times while
   it loads them (each kill lands between some insert and its commit, or before it), then
   left to finish: every row exactly once, totals equal to what was produced.
4. Queries. 10M usage rows over 90 days, in time order as the loader writes them,
   50 teams, 500 keys, 7 models, generated inside ClickHouse (INSERT ... SELECT FROM
   numbers(), the materialized views filling the rollups), then `spend_by_team_by_day`
   over all of them through clickhouse-connect over HTTP: median and max of 10 runs,
   with the same answer computed from the raw table for comparison.

Not a test: it prints the figures and writes bench/out/analytics.json. Uses its own
Kafka (port 39192, or TOLLWAY_BENCH_KAFKA_PORT; data in .tollway/kafka-bench-analytics)
and a temporary data path.

    python bench/analytics_bench.py [--records 100000] [--synthetic-rows 10000000]
                                    [--chaos-records 50000] [--chaos-kills 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
_PORT = int(os.environ.get("TOLLWAY_BENCH_KAFKA_PORT", "39192"))  # override when taken
os.environ.update(
    {
        "TOLLWAY_KAFKA_PORT": str(_PORT),
        "TOLLWAY_KAFKA_CONTROLLER_PORT": str(_PORT + 1),
        "TOLLWAY_KAFKA_DIR": str(REPO / ".tollway" / "kafka-bench-analytics"),
    }
)

import httpx  # noqa: E402
from aiokafka import AIOKafkaProducer  # noqa: E402

from analytics import queries as q  # noqa: E402
from analytics.connection import connect  # noqa: E402
from analytics.migrate import migrate  # noqa: E402
from deploy.stack import kafka, start_kafka  # noqa: E402
from schemas import codec, topics  # noqa: E402
from schemas.records import Result, UsageRecord  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def result(rid: str, team: str, at_ms: int) -> Result:
    return {
        "request_id": rid, "team_id": team, "key_id": f"{team}-k", "mode": "async",
        "execution_id": "e", "status": "succeeded", "http_status": 200, "body": b"{}",
        "error_type": None, "requested_model": "gpt-4o-mini", "served_model": "gpt-4o-mini-x",
        "provider": "openai", "deployment": "d1", "attempts": 1, "prompt_tokens": 120,
        "completion_tokens": 40, "cached_tokens": 0, "reasoning_tokens": 0,
        "cache_write_tokens": 0, "received_at_ms": at_ms, "finished_at_ms": at_ms + 350,
        "metadata": {"app": "bench", "tags": "a,b"},
    }  # fmt: skip


def usage(rid: str, team: str, at_ms: int, nano: int) -> UsageRecord:
    return {
        "usage_id": f"{rid}:e.1", "request_id": rid, "attempt_id": "e.1", "team_id": team,
        "key_id": f"{team}-k", "mode": "async", "requested_model": "gpt-4o-mini",
        "model": "gpt-4o-mini-x", "provider": "openai", "deployment": "d1",
        "prompt_tokens": 120, "completion_tokens": 40, "cached_tokens": 0,
        "cache_write_tokens": 0, "reasoning_tokens": 0, "cost_nano_usd": nano,
        "saved_nano_usd": 0, "cost_status": "priced", "pricing_version": "bench",
        "occurred_at_ms": at_ms, "priced_at_ms": at_ms,
    }  # fmt: skip


async def produce_backlog(bootstrap: str, n: int) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=20,
        max_batch_size=512 * 1024,
    )  # fmt: skip
    await producer.start()
    t0 = time.perf_counter()
    try:
        base = now_ms() - 3_600_000
        futures = []
        for i in range(n):
            rid, team = f"req_{i}_{uuid.uuid4().hex[:8]}", f"team-{i % 20}"
            futures.append(
                await producer.send(
                    topics.RESULTS.name, codec.encode("result", result(rid, team, base + i)),
                    key=rid.encode(),
                )
            )  # fmt: skip
            futures.append(
                await producer.send(
                    topics.USAGE.name, codec.encode("usage", usage(rid, team, base + i, 1_234 + i)),
                    key=team.encode(),
                )
            )  # fmt: skip
            if len(futures) >= 20_000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - t0


async def produce_trickle(bootstrap: str, count: int, every_s: float) -> dict[str, float]:
    """One usage record every `every_s`; returns usage_id -> time Kafka acknowledged it."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    acked: dict[str, float] = {}
    try:
        for i in range(count):
            rid = f"vis_{i}_{uuid.uuid4().hex[:6]}"
            record = usage(rid, "visibility", now_ms(), 1)
            await producer.send_and_wait(
                topics.USAGE.name, codec.encode("usage", record), key=b"visibility"
            )
            acked[record["usage_id"]] = time.monotonic()
            await asyncio.sleep(every_s)
    finally:
        await producer.stop()
    return acked


def start_server(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "analytics.cli", "analytics", "serve", "--port", str(port),
         "--data-path", str(data)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("embedded ClickHouse did not start")


def loader_env(url: str, bootstrap: str, database: str, group: str) -> dict[str, str]:
    return {
        **os.environ,
        "CLICKHOUSE_URL": url,
        "TOLLWAY_KAFKA_BOOTSTRAP": bootstrap,
        "TOLLWAY_ANALYTICS_DATABASE": database,
        "TOLLWAY_ANALYTICS_GROUP_ID": group,
        "TOLLWAY_LOG_LEVEL": "WARNING",
    }


def start_loader(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "analytics.cli", "loader"], cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def start_group_at_end(bootstrap: str, group: str) -> None:
    """Commit the topics' end offsets for `group`: its loader reads only what comes next."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from analytics.loader.consumer import TOPICS

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(t.name, p) for t in TOPICS for p in range(t.partitions)]
        consumer.assign(tps)
        await consumer.commit(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


def chaos_phase(url: str, bootstrap: str, records: int, kills: int) -> dict[str, object]:
    """SIGKILL the loader `kills` times while it loads; then check nothing is lost or doubled."""
    client = connect(url)
    database, group = "bench_chaos", f"chaos-{uuid.uuid4().hex[:8]}"
    client.command(f"DROP DATABASE IF EXISTS {database}")
    migrate(client, database)
    asyncio.run(start_group_at_end(bootstrap, group))
    asyncio.run(produce_backlog(bootstrap, records))
    # Small batches, so that each life of the loader stores a few of them and then dies.
    env = {
        **loader_env(url, bootstrap, database, group),
        "TOLLWAY_ANALYTICS_BATCH_MAX_ROWS": "2000",
        "TOLLWAY_ANALYTICS_BUFFER_MAX_ROWS": "4000",
    }
    rng = random.Random(7)
    count_sql = (
        f"SELECT (SELECT count() FROM {database}.requests) + (SELECT count() FROM {database}.usage)"
    )
    progress: list[object] = []
    for _ in range(kills):
        before = client.command(count_sql)
        if before == 2 * records:
            break
        loader = start_loader(env)
        while client.command(count_sql) == before and loader.poll() is None:
            time.sleep(0.01)  # until this life stored its first batch
        time.sleep(rng.uniform(0.0, 0.4))  # then die anywhere: mid-insert, before a commit...
        loader.kill()  # SIGKILL: no flush, no commit, no goodbye to the group
        loader.wait()
        progress.append(client.command(count_sql))
    loader = start_loader(env)
    deadline = time.monotonic() + 300
    while client.command(count_sql) != 2 * records:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    loader.terminate()
    loader.wait(30)

    def one(sql: str) -> object:
        return client.query(sql.replace("{db}", database)).result_rows[0][0]

    expected_usd = Decimal(records * 1_234 + records * (records - 1) // 2).scaleb(-9)
    return {
        "records_per_topic": records,
        "kills": len(progress),
        "rows_stored_at_each_kill": progress,
        "requests": one("SELECT count() FROM {db}.requests"),
        "requests_count_equals_uniq": one(
            "SELECT count() = uniqExact(request_id) FROM {db}.requests"
        ),
        "usage": one("SELECT count() FROM {db}.usage"),
        "usage_count_equals_uniq": one("SELECT count() = uniqExact(usage_id) FROM {db}.usage"),
        "usage_total_equals_produced": one("SELECT sum(cost_usd) FROM {db}.usage") == expected_usd,
        "daily_rollup_equals_produced": one("SELECT sum(cost_usd) FROM {db}.cost_daily")
        == expected_usd,
    }


def loader_phase(url: str, bootstrap: str, records: int) -> dict[str, object]:
    client = connect(url)
    database = "bench_loader"
    client.command(f"DROP DATABASE IF EXISTS {database}")
    migrate(client, database)
    produce_s = asyncio.run(produce_backlog(bootstrap, records))
    print(f"produced {2 * records} records in {produce_s:.1f}s", flush=True)
    env = loader_env(url, bootstrap, database, f"bench-{uuid.uuid4().hex[:8]}")
    total = 2 * records
    count_sql = (
        f"SELECT (SELECT count() FROM {database}.requests) + (SELECT count() FROM {database}.usage)"
    )
    t_start = time.monotonic()
    loader = start_loader(env)
    first: tuple[float, int] | None = None
    stored = 0
    while stored < total:
        time.sleep(0.05)
        value = client.command(count_sql)
        assert isinstance(value, int)
        stored = value
        if stored and first is None:
            first = (time.monotonic(), stored)
        if time.monotonic() - t_start > 600:
            raise RuntimeError(f"only {stored} of {total} rows after 10 minutes")
    t_end = time.monotonic()
    loader_cpu = cpu_s(loader.pid)
    assert first is not None
    visibility = asyncio.run(_visibility(client, database, bootstrap))
    loader.terminate()
    loader.wait(30)
    exact = client.command(f"SELECT count() = uniqExact(usage_id) FROM {database}.usage")
    return {
        "rows": total,
        "seconds_from_loader_start": round(t_end - t_start, 2),
        "rows_per_s_from_loader_start": round(total / (t_end - t_start)),
        "rows_per_s_steady": round((total - first[1]) / max(t_end - first[0], 1e-9)),
        "loader_cpu_s": round(loader_cpu, 1),
        "count_equals_uniq": exact == 1,
        "visibility_ms": visibility,
    }


async def _visibility(client: object, database: str, bootstrap: str) -> dict[str, float]:
    seen: dict[str, float] = {}
    stop = threading.Event()

    def poll() -> None:
        sql = f"SELECT usage_id FROM {database}.usage WHERE team_id = 'visibility'"
        while not stop.is_set():
            for (usage_id,) in client.query(sql).result_rows:  # type: ignore[attr-defined]
                seen.setdefault(usage_id, time.monotonic())
            time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    acked = await produce_trickle(bootstrap, 300, 0.02)
    deadline = time.monotonic() + 10
    while len(seen) < len(acked) and time.monotonic() < deadline:  # noqa: ASYNC110  # a thread fills `seen`
        await asyncio.sleep(0.05)
    stop.set()
    poller.join()
    lags = sorted((seen[k] - t) * 1000 for k, t in acked.items() if k in seen)
    return {
        "records": len(acked),
        "visible": len(lags),
        "p50": round(lags[len(lags) // 2]),
        "p99": round(lags[int(len(lags) * 0.99) - 1]),
        "max": round(lags[-1]),
    }


SYNTHETIC = """
INSERT INTO {db}.usage (usage_id, request_id, attempt_id, team_id, key_id, mode, requested_model,
    model, provider, deployment, prompt_tokens, completion_tokens, cached_tokens,
    cache_write_tokens, reasoning_tokens, cost_usd, saved_usd, cost_status, pricing_version,
    occurred_at, priced_at, kafka_partition, kafka_offset)
SELECT concat('req_', toString(number), ':e.1'), concat('req_', toString(number)), 'e.1',
       concat('team-', toString(number % 50)), concat('key-', toString(number % 500)), 'async',
       concat('model-', toString(number % 7)), concat('model-', toString(number % 7), '-v1'),
       'openai', concat('dep-', toString(number % 3)), 100 + number % 900, 10 + number % 500,
       0, 0, 0, CAST(number % 100000000 AS Decimal(38, 9)) / 1000000000, 0, 'priced', 'bench',
       toDateTime64({start:String}, 3, 'UTC')
           + toIntervalMillisecond(intDiv(number * 7776000000, {rows:UInt64})),
       toDateTime64({start:String}, 3, 'UTC'), 0, number
FROM numbers({rows:UInt64})
"""


def query_phase(url: str, rows: int) -> dict[str, object]:
    client = connect(url)
    database = "bench_queries"
    client.command(f"DROP DATABASE IF EXISTS {database}")
    migrate(client, database)
    start = (datetime.now(UTC) - timedelta(days=90)).replace(microsecond=0)
    t0 = time.perf_counter()
    client.command(
        SYNTHETIC.replace("{db}", database),
        parameters={"start": start.strftime("%Y-%m-%d %H:%M:%S"), "rows": rows},
    )
    generate_s = time.perf_counter() - t0
    print(f"generated {rows} usage rows in {generate_s:.1f}s", flush=True)
    first_day, last_day = start.date(), datetime.now(UTC).date()
    timings = []
    answer: list[q.TeamDayRow] = []
    for _ in range(10):
        t0 = time.perf_counter()
        answer = q.run(
            client, q.SPEND_BY_TEAM_BY_DAY, database, start_day=first_day, end_day=last_day
        )
        timings.append((time.perf_counter() - t0) * 1000)
    raw_sql = (
        f"SELECT toDate(occurred_at) AS day, team_id, count(), sum(cost_usd) FROM {database}.usage"
        " GROUP BY day, team_id ORDER BY day, team_id"
    )
    raw_timings = []
    raw: list[tuple[object, ...]] = []
    for _ in range(3):
        t0 = time.perf_counter()
        raw = [tuple(r) for r in client.query(raw_sql).result_rows]
        raw_timings.append((time.perf_counter() - t0) * 1000)
    same = [(r.day, r.team_id, r.calls, r.cost_usd) for r in answer] == raw
    total_calls = sum(r.calls for r in answer)
    return {
        "usage_rows": rows,
        "generate_s": round(generate_s, 1),
        "result_rows": len(answer),
        "calls_in_answer": total_calls,
        "spend_by_team_by_day_ms": {
            "median": round(statistics.median(timings), 1),
            "max": round(max(timings), 1),
            "runs": [round(t, 1) for t in timings],
        },
        "same_answer_from_raw_rows": same,
        "raw_table_group_by_ms_median": round(statistics.median(raw_timings), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000, help="results and usage, each")
    parser.add_argument("--synthetic-rows", type=int, default=10_000_000)
    parser.add_argument("--chaos-records", type=int, default=50_000)
    parser.add_argument("--chaos-kills", type=int, default=10)
    parser.add_argument("--out-suffix", default="", help="bench/out/analytics<suffix>.json")
    args = parser.parse_args()
    kafka("reset")
    bootstrap = start_kafka()
    data = Path(tempfile.mkdtemp(prefix="tollway-bench-ch-"))
    server, url = start_server(data / "store")
    figures: dict[str, object] = {
        "machine_cpus": os.cpu_count(),
        # Other work on the machine skews every figure: say how busy it was.
        "load_average_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }
    try:
        if args.records:
            server_cpu0 = cpu_s(server.pid)
            figures["loader"] = loader_phase(url, bootstrap, args.records)
            figures["server_cpu_s_during_loader"] = round(cpu_s(server.pid) - server_cpu0, 1)
            print(json.dumps(figures, indent=2), flush=True)
        if args.chaos_kills:
            figures["chaos"] = chaos_phase(url, bootstrap, args.chaos_records, args.chaos_kills)
            print(json.dumps(figures["chaos"], indent=2), flush=True)
        if args.synthetic_rows:
            figures["queries"] = query_phase(url, args.synthetic_rows)
    finally:
        server.terminate()
        server.wait(60)
        kafka("stop")
        shutil.rmtree(data, ignore_errors=True)
    figures["load_average_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    print(json.dumps(figures, indent=2, default=str))
    out = REPO / "bench" / "out" / f"analytics{args.out_suffix}.json"
    out.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
