"""The loader on the real broker into the embedded ClickHouse, and the named queries on top.

Every test uses its own database, consumer group (started at the topics' current end)
and ids, so the shared broker and server hold no surprises.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from clickhouse_connect.driver.client import Client

from analytics import queries as q
from analytics.connection import connect
from analytics.loader.clickhouse import ClickHouseSink
from analytics.loader.consumer import TOPICS, Loader
from analytics.loader.rows import Row, Table
from analytics.loader.sink import SinkUnavailable
from analytics.migrate import migrate
from analytics.settings import AnalyticsSettings
from schemas import codec, topics
from schemas.records import Attempt, BudgetEvent, Result, UsageRecord
from schemas.settings import KafkaSettings
from tests.integration.kafka_io import TopicReader, produce

pytestmark = pytest.mark.kafka

BASE = datetime.now(UTC).replace(hour=10, minute=0, second=0, microsecond=0) - timedelta(days=2)
BASE_MS = int(BASE.timestamp() * 1000)
HOUR_MS = 3_600_000


# --- records ------------------------------------------------------------------------


def result(
    rid: str, team: str, *, status: str = "succeeded", attempts: int = 1, at_ms: int = BASE_MS,
    latency_ms: int = 100, deployment: str = "mock", metadata: dict[str, str] | None = None,
    execution: str = "e1",
) -> Result:  # fmt: skip
    return {
        "request_id": rid, "team_id": team, "key_id": f"{team}-key", "mode": "async",
        "execution_id": execution, "status": status,  # type: ignore[typeddict-item]
        "http_status": 200 if status == "succeeded" else 502, "body": b"{}",
        "error_type": None if status == "succeeded" else "AllProvidersFailed",
        "requested_model": "gpt-4o-mini", "served_model": "gpt-4o-mini-2024",
        "provider": "openai", "deployment": deployment, "attempts": attempts,
        "prompt_tokens": 10, "completion_tokens": 5, "cached_tokens": 0, "reasoning_tokens": 0,
        "cache_write_tokens": 0, "received_at_ms": at_ms, "finished_at_ms": at_ms + latency_ms,
        "metadata": metadata or {},
    }  # fmt: skip


def attempt(rid: str, team: str, n: int, deployment: str, *, at_ms: int = BASE_MS) -> Attempt:
    return {
        "request_id": rid, "attempt_id": f"e1.{n}", "attempt": n, "team_id": team,
        "key_id": f"{team}-key", "mode": "async", "deployment": deployment, "provider": "openai",
        "model": "gpt-4o-mini", "started_at_ms": at_ms, "latency_ms": 42.5,
        "outcome": "ok" if n == 1 else "error", "http_status": 200, "error_type": None,
        "error_code": None, "prompt_tokens": 10, "completion_tokens": 5, "cached_tokens": 0,
        "reasoning_tokens": 0, "cache_write_tokens": 0, "router_id": "r1",
    }  # fmt: skip


def usage(
    rid: str, team: str, nano_usd: int, *, n: int = 1, at_ms: int = BASE_MS,
    saved_nano_usd: int = 0, status: str = "priced",
) -> UsageRecord:  # fmt: skip
    return {
        "usage_id": f"{rid}:e1.{n}", "request_id": rid, "attempt_id": f"e1.{n}", "team_id": team,
        "key_id": f"{team}-key", "mode": "async", "requested_model": "gpt-4o-mini",
        "model": "gpt-4o-mini-2024", "provider": "openai", "deployment": "mock",
        "prompt_tokens": 10, "completion_tokens": 5, "cached_tokens": 0, "cache_write_tokens": 0,
        "reasoning_tokens": 0, "cost_nano_usd": nano_usd, "saved_nano_usd": saved_nano_usd,
        "cost_status": status, "pricing_version": "2026-11",  # type: ignore[typeddict-item]
        "occurred_at_ms": at_ms, "priced_at_ms": at_ms + 5,
    }  # fmt: skip


def budget_event(event_id: str, team: str, pct: int) -> BudgetEvent:
    return {
        "event_id": event_id, "scope_type": "team", "scope_id": team, "window": "30d",
        "threshold_pct": pct, "spent_nano_usd": 4_000_000_000, "limit_nano_usd": 5_000_000_000,
        "occurred_at_ms": BASE_MS,
    }  # fmt: skip


async def publish(
    bootstrap: str,
    results: Sequence[Result] = (),
    attempts: Sequence[Attempt] = (),
    usages: Sequence[UsageRecord] = (),
    events: Sequence[BudgetEvent] = (),
) -> None:
    r, a, u, e = topics.RESULTS, topics.ATTEMPTS, topics.USAGE, topics.BUDGET_EVENTS
    batches: list[tuple[str, list[tuple[bytes, bytes]]]] = [
        (r.name, [(x["request_id"].encode(), codec.encode("result", x)) for x in results]),
        (a.name, [(x["request_id"].encode(), codec.encode("attempt", x)) for x in attempts]),
        (u.name, [(x["team_id"].encode(), codec.encode("usage", x)) for x in usages]),
        (e.name, [(x["scope_id"].encode(), codec.encode("budget_event", x)) for x in events]),
    ]
    await asyncio.gather(*(produce(bootstrap, t, values) for t, values in batches if values))


# --- fixtures -----------------------------------------------------------------------


@dataclass
class Store:
    url: str
    database: str
    client: Client

    def counts(self, tables: dict[str, int], teams: tuple[str, ...]) -> dict[str, int]:
        """Rows of these teams (the shared broker also carries other tests' records)."""
        scope = {t: "scope_id" if t == "budget_events" else "team_id" for t in tables}
        return {
            t: self.count(
                f"SELECT count() FROM {{db}}.{t} WHERE {scope[t]} IN {{s:Array(String)}}",
                s=list(teams),
            )
            for t in tables
        }

    def count(self, sql: str, **params: object) -> int:
        value = self.client.command(sql.replace("{db}", self.database), parameters=params)
        assert isinstance(value, int)
        return value


@pytest.fixture
def store(clickhouse_url: str) -> Store:
    database = f"t_{uuid.uuid4().hex[:12]}"
    client = connect(clickhouse_url)
    migrate(client, database)
    return Store(clickhouse_url, database, client)


async def start_group_at_end(bootstrap: str, group: str) -> None:
    """Commit the topics' end offsets for `group`: its loader reads only what comes next."""
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


@dataclass
class Loaders:
    bootstrap: str
    store: Store
    group: str = field(default_factory=lambda: f"loader-it-{uuid.uuid4().hex[:8]}")
    running: list[tuple[Loader, asyncio.Task[None]]] = field(default_factory=list)

    def stats(self) -> list[object]:
        return [loader.stats for loader, _ in self.running]

    def settings(self, **overrides: Any) -> AnalyticsSettings:
        values: dict[str, Any] = {
            "database": self.store.database, "group_id": self.group, "batch_max_age_ms": 100,
            "session_timeout_ms": 6_000, **overrides,
        }  # fmt: skip
        return AnalyticsSettings(**values)

    def start(self, sink_wrapper: Callable[[Any], Any] | None = None, **overrides: Any) -> Loader:
        sink = ClickHouseSink(connect(self.store.url), self.store.database)
        loader = Loader(
            KafkaSettings(bootstrap=self.bootstrap),
            self.settings(**overrides),
            sink_wrapper(sink) if sink_wrapper else sink,
        )
        self.running.append((loader, asyncio.create_task(loader.run())))
        return loader


@pytest.fixture
async def loaders(kafka_bootstrap: str, store: Store) -> AsyncIterator[Loaders]:
    group = Loaders(kafka_bootstrap, store)
    await start_group_at_end(kafka_bootstrap, group.group)
    yield group
    for loader, _ in group.running:
        loader.stop()
    await asyncio.gather(*(task for _, task in group.running), return_exceptions=True)


async def wait_for(
    condition: Callable[[], bool], timeout_s: float = 20.0, state: Callable[[], object] = str
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"condition not met in time; {state()}"
        await asyncio.sleep(0.1)


def _period(team: str = "") -> dict[str, object]:
    return {"start": BASE - timedelta(hours=1), "end": BASE + timedelta(hours=3), "team": team}


# --- tests --------------------------------------------------------------------------


def test_migrations_are_idempotent(store: Store) -> None:
    assert migrate(store.client, store.database) == []  # the fixture applied them once already
    applied = store.count("SELECT count() FROM {db}.schema_migrations")
    assert applied == 3
    tables = store.client.query(
        "SELECT name FROM system.tables WHERE database = {d:String} ORDER BY name",
        parameters={"d": store.database},
    ).result_rows
    assert {t for (t,) in tables} >= {
        "requests", "attempts", "usage", "budget_events", "cost_hourly", "cost_daily",
        "request_costs", "requests_with_cost",
    }  # fmt: skip


async def test_loader_stores_every_record_once_and_the_named_queries_add_up(
    loaders: Loaders, store: Store
) -> None:
    tag = uuid.uuid4().hex[:8]
    a, b = f"team-a-{tag}", f"team-b-{tag}"
    rid = [f"req-{tag}-{i}" for i in range(4)]
    results = [
        result(rid[0], a, metadata={"tags": "search,beta", "app": "web"}),
        result(rid[1], a, attempts=2, deployment="backup", latency_ms=300),
        result(rid[2], b, status="failed", attempts=2, metadata={"tollway.cache": "miss"}),
        result(rid[3], b, latency_ms=0, metadata={"tollway.cache": "hit", "tags": "search"}),
        result(rid[0], a, execution="e2", latency_ms=9_999),  # a re-execution: first one wins
    ]
    attempts = [
        attempt(rid[0], a, 1, "mock"),
        attempt(rid[1], a, 1, "mock"),
        attempt(rid[1], a, 2, "backup"),
        attempt(rid[2], b, 1, "mock"),
        attempt(rid[2], b, 2, "mock"),
    ]
    usages = [
        usage(rid[0], a, 1_500_000_000),  # $1.50
        usage(rid[1], a, 250_000_001, n=1),
        usage(rid[1], a, 1, n=2),
        usage(rid[3], b, 0, saved_nano_usd=2_000_000_000, status="cache_hit"),
        usage(rid[0], a, 1_500_000_000),  # the cost processor published it twice
    ]
    loaders.start()
    await publish(loaders.bootstrap, results, attempts, usages, [budget_event(f"ev-{tag}", a, 80)])
    want = {"usage": 4, "requests": 4, "attempts": 5, "budget_events": 1}
    await wait_for(
        lambda: store.counts(want, (a, b)) == want,
        state=lambda: (store.counts(want, (a, b)), loaders.stats()),
    )
    # A view's part commits just after its source's: wait for the last insert to finish.
    for view in ("cost_hourly", "cost_daily", "request_costs"):
        rollup = f"SELECT sum(calls) FROM {{db}}.{view} WHERE team_id IN {{s:Array(String)}}"
        await wait_for(partial(lambda sql: store.count(sql, s=[a, b]) == 4, rollup), 5)
    assert store.count("SELECT count() = uniqExact(request_id) FROM {db}.requests") == 1
    first = store.client.query(
        f"SELECT execution_id, latency_ms, tags, app FROM {store.database}.requests"
        " WHERE request_id = {r:String}",
        parameters={"r": rid[0]},
    ).result_rows
    assert first == [("e1", 100, ["beta", "search"], "web")]

    def run(query: q.NamedQuery[Any], **params: object) -> list[Any]:
        return q.run(store.client, query, store.database, **params)

    spend = {row.dimension: row for row in run(q.SPEND_BY_TEAM, **_period())}
    assert spend[a].cost_usd == Decimal("1.750000002")
    assert spend[a].calls == 3
    assert spend[b].cost_usd == Decimal(0)
    assert spend[b].saved_usd == Decimal("2.000000000")
    by_tag = {row.dimension: row.cost_usd for row in run(q.SPEND_BY_TAG, **_period(team=a))}
    assert by_tag == {"search": Decimal("1.500000000"), "beta": Decimal("1.500000000")}
    by_day = run(q.SPEND_BY_TEAM_BY_DAY, start_day=BASE.date(), end_day=BASE.date())
    assert {(r.team_id, r.cost_usd) for r in by_day if r.team_id in (a, b)} == {
        (a, Decimal("1.750000002")),
        (b, Decimal(0)),
    }
    per_1k = {r.team_id: r for r in run(q.COST_PER_1K_REQUESTS, **_period())}
    assert per_1k[a].requests == 2
    assert per_1k[a].cost_per_1k_requests_usd == Decimal("875.000001000")
    reliability = [run(q.RELIABILITY, **_period(team)) for team in (a, b)]
    assert [
        [(r.requests, r.failed, r.multi_call, r.fallback) for r in rows] for rows in reliability
    ] == [
        [(2, 0, 1, 1)],  # rid1: two calls on two deployments
        [(2, 1, 1, 0)],  # rid2: failed after two calls on one deployment
    ]
    cache = {r.team_id: r for r in run(q.CACHE_SAVINGS, **_period())}
    assert (cache[b].cache_hits, cache[b].hit_rate) == (1, 1.0)
    latency = {r.deployment: r for r in run(q.LATENCY_BY_DEPLOYMENT, **_period(a))}
    assert latency["backup"].p50_ms == 300.0
    assert latency["mock"].ttft_p50_ms is None
    burn = run(
        q.BUDGET_BURN_DOWN, start_day=BASE.date() - timedelta(days=1), end_day=BASE.date(),
        scope_type="team", scope_id=a, limit_usd=Decimal(5),
    )  # fmt: skip
    assert [(r.spent_usd, r.remaining_usd) for r in burn] == [
        (Decimal(0), Decimal(5)),
        (Decimal("1.750000002"), Decimal("3.249999998")),
    ]
    events = run(q.BUDGET_EVENTS, start=BASE, end=BASE + timedelta(hours=1), scope_id=a)
    assert [(e.threshold_pct, e.limit_usd) for e in events] == [(80, Decimal(5))]
    costs = store.client.query(
        f"SELECT request_id, cost_usd FROM {store.database}.requests_with_cost ORDER BY request_id"
    ).result_rows
    assert costs[0] == (rid[0], Decimal("1.500000000"))


class _Crash(Exception):
    """The process dies right after ClickHouse took the usage rows, before the commit."""


class CrashingSink:
    def __init__(self, sink: ClickHouseSink) -> None:
        self.sink = sink

    def write(self, table: Table, rows: Sequence[Row], token: str) -> int:
        written = self.sink.write(table, rows, token)
        if table.name == "usage":
            raise _Crash(f"{written} usage rows stored, not committed")
        return written


async def test_a_batch_replayed_after_a_crash_between_insert_and_commit_is_not_stored_twice(
    loaders: Loaders, store: Store
) -> None:
    tag = uuid.uuid4().hex[:8]
    team = f"team-{tag}"
    rids = [f"req-{tag}-{i}" for i in range(300)]
    records = [usage(r, team, 1_000_000 + i, at_ms=BASE_MS + i) for i, r in enumerate(rids)]
    await publish(loaders.bootstrap, [result(r, team) for r in rids], usages=records)
    loaders.start(CrashingSink, batch_max_rows=1_000, batch_max_age_ms=300)
    _, task = loaders.running[-1]
    with pytest.raises(_Crash):
        await asyncio.wait_for(task, 30)
    assert store.counts({"usage": 0}, (team,))["usage"] > 0
    # The restarted loader re-reads the same offsets in differently sized batches (so other
    # deduplication tokens): the key lookup keeps every row single.
    restarted = loaders.start(batch_max_rows=7)
    want = {"usage": 300, "requests": 300}
    await wait_for(lambda: store.counts(want, (team,)) == want)
    await wait_for(lambda: restarted.stats.records >= 300)  # the usage offsets, read again
    assert store.counts(want, (team,)) == want  # still: what was stored is not stored again
    assert store.count("SELECT count() = uniqExact(request_id) FROM {db}.requests") == 1
    assert store.count("SELECT count() = uniqExact(usage_id) FROM {db}.usage") == 1
    expected = sum(Decimal(u["cost_nano_usd"]).scaleb(-9) for u in records)
    calls = "SELECT sum(calls) FROM {db}.cost_daily WHERE team_id = {t:String}"
    await wait_for(lambda: store.count(calls, t=team) == 300, timeout_s=5)  # views commit last
    daily = store.client.query(
        f"SELECT sum(cost_usd), sum(calls) FROM {store.database}.cost_daily"
        " WHERE team_id = {t:String}",
        parameters={"t": team},
    ).result_rows
    assert daily == [(expected, 300)]


class FlakySink:
    """ClickHouse away for the first `failures` writes."""

    def __init__(self, sink: ClickHouseSink, failures: int) -> None:
        self.sink = sink
        self.failures = failures

    def write(self, table: Table, rows: Sequence[Row], token: str) -> int:
        if self.failures > 0:
            self.failures -= 1
            raise SinkUnavailable("connection refused")
        return self.sink.write(table, rows, token)


async def test_while_clickhouse_is_away_the_loader_retries_pauses_and_loses_nothing(
    loaders: Loaders, store: Store
) -> None:
    tag = uuid.uuid4().hex[:8]
    team = f"team-{tag}"
    loader = loaders.start(
        lambda sink: FlakySink(sink, failures=6),
        batch_max_rows=20,
        buffer_max_rows=50,
        retry_max_backoff_s=0.2,
    )
    await publish(loaders.bootstrap, usages=[usage(f"r-{tag}-{i}", team, 10) for i in range(400)])
    peak = 0
    deadline = time.monotonic() + 30
    while store.counts({"usage": 400}, (team,))["usage"] < 400:
        assert time.monotonic() < deadline, "not loaded in time"
        peak = max(peak, loader.batcher.buffered_rows)
        await asyncio.sleep(0.02)
    assert loader.stats.write_failures == 6
    assert peak <= 50
    # A view's part commits just after its source's: wait for the insert to finish.
    calls = "SELECT sum(calls) FROM {db}.cost_hourly WHERE team_id = {t:String}"
    await wait_for(lambda: store.count(calls, t=team) == 400, timeout_s=5)


async def test_an_unreadable_record_goes_to_the_dead_letters_and_the_rest_is_stored(
    loaders: Loaders, store: Store
) -> None:
    tag = uuid.uuid4().hex[:8]
    team = f"team-dl-{tag}"
    garbage_key = f"garbage-{tag}".encode()
    dead = await TopicReader(loaders.bootstrap, topics.DEAD_LETTERS.name).start()
    loaders.start()
    await produce(loaders.bootstrap, topics.RESULTS.name, [(garbage_key, b"\x00not avro")])
    await publish(loaders.bootstrap, [result(f"req-{tag}", team)], [], [], [])
    want = {"requests": 1}
    await wait_for(lambda: store.counts(want, (team,)) == want, state=loaders.stats)
    letters = await dead.collect(None, {garbage_key.decode()})
    await dead.stop()
    assert [value for _, value in letters] == [b"\x00not avro"]  # kept whole
    raw = await _dead_letter_headers(loaders.bootstrap, garbage_key)
    assert raw["tollway-error"] == b"CorruptRecord"
    assert raw["tollway-source"].startswith(f"{topics.RESULTS.name}/".encode())
    assert sum(s.skipped for s in loaders.stats()) == 1  # type: ignore[attr-defined]


async def _dead_letter_headers(bootstrap: str, key: bytes) -> dict[str, bytes]:
    """The headers of the newest dead letter with `key`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [
            TopicPartition(topics.DEAD_LETTERS.name, p)
            for p in range(topics.DEAD_LETTERS.partitions)
        ]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(0, ends[tp] - 50))
        found: dict[str, bytes] = {}
        for records in (await consumer.getmany(timeout_ms=2_000)).values():
            for record in records:
                if record.key == key:
                    found = dict(record.headers)
        return found
    finally:
        await consumer.stop()
