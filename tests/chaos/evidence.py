"""Collect what the run left behind: topics, ClickHouse rows, polls, batch files.

Topics are read by offset ranges (no consumer group): `snapshot()` before the run,
`read_range()` afterwards up to the end offsets of that moment. ClickHouse is asked
over HTTP with clickhouse-connect, like every Tollway component. Nothing here judges:
that is invariants.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from decimal import Decimal

import httpx
import openai
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from analytics.connection import connect
from schemas import codec, topics
from schemas.errors import DeadLetter
from schemas.records import Attempt, BudgetState, Result, UsageRecord
from schemas.topics import Topic
from tests.chaos.invariants import FINAL, BatchOutcome, TableCounts
from tests.chaos.load import AcceptedBatch
from workers.batches.assembler import request_id_for
from workers.budget.windows import in_window

Offsets = dict[TopicPartition, int]
BUDGET_KEY = "team:default:24h"
BATCH_FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
NANO = Decimal(1_000_000_000)


def _tps(topic: Topic) -> list[TopicPartition]:
    return [TopicPartition(topic.name, p) for p in range(topic.partitions)]


async def snapshot(bootstrap: str, watched: Iterable[Topic]) -> Offsets:
    """The end offsets of `watched` now: where the run's records start."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends: Offsets = await consumer.end_offsets([tp for t in watched for tp in _tps(t)])
        return ends
    finally:
        await consumer.stop()


async def read_range(bootstrap: str, topic: Topic, starts: Offsets | None = None) -> list[bytes]:
    """Values of `topic` from `starts` (None: the beginning) to its end offsets now, in
    offset order per partition, partitions one after the other."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=4 << 20
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        for tp in _tps(topic):
            end = (await consumer.end_offsets([tp]))[tp]
            start = (starts or {}).get(tp, 0)
            consumer.assign([tp])
            if start:
                consumer.seek(tp, start)
            else:
                await consumer.seek_to_beginning(tp)
            position = await consumer.position(tp)
            while position < end:
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=20_000)
                values.extend(
                    r.value for r in batch.get(tp, []) if r.offset < end and r.value is not None
                )
                position = await consumer.position(tp)
    finally:
        await consumer.stop()
    return values


async def results_since(bootstrap: str, starts: Offsets) -> list[Result]:
    return [codec.decode("result", v) for v in await read_range(bootstrap, topics.RESULTS, starts)]


async def attempts_since(bootstrap: str, starts: Offsets | None) -> list[Attempt]:
    raw = await read_range(bootstrap, topics.ATTEMPTS, starts)
    return [codec.decode("attempt", v) for v in raw]


async def republished_requests(bootstrap: str, starts: Offsets) -> set[str]:
    """Request ids published more than once on the request topics since `starts` (a batch
    worker re-expanding lines after its restart, docs/decisions/0006)."""
    seen: Counter[str] = Counter()
    for topic in (topics.REQUESTS_INTERACTIVE, topics.REQUESTS_BATCH):
        for value in await read_range(bootstrap, topic, starts):
            with contextlib.suppress(DeadLetter):
                seen[codec.decode("request", value)["request_id"]] += 1
    return {request_id for request_id, n in seen.items() if n > 1}


async def all_usage(bootstrap: str) -> list[UsageRecord]:
    return [codec.decode("usage", v) for v in await read_range(bootstrap, topics.USAGE)]


def expected_budget_nano_usd(usage: Sequence[UsageRecord], now_ms: int) -> tuple[int, int]:
    """(unique priced usage of team default in its 24h window, repeated usage ids)."""
    seen: dict[str, UsageRecord] = {}
    repeats = 0
    for record in usage:
        if record["usage_id"] in seen:
            repeats += 1
            continue
        seen[record["usage_id"]] = record
    total = sum(
        r["cost_nano_usd"]
        for r in seen.values()
        if r["team_id"] == "default" and in_window("24h", r["occurred_at_ms"], now_ms)
    )
    return total, repeats


async def budget_spent(bootstrap: str) -> BudgetState | None:
    """The latest `team:default:24h` state on tollway.budget-state."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    latest: BudgetState | None = None
    try:
        tps = _tps(topics.BUDGET_STATE)
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while await _behind(consumer, ends):
            batch = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            for records in batch.values():
                for record in records:
                    if record.key == BUDGET_KEY.encode() and record.value is not None:
                        latest = codec.decode("budget_state", record.value)
    finally:
        await consumer.stop()
    return latest


async def poll_until_final(
    url: str, ids: Sequence[str], deadline: float, concurrency: int = 32
) -> dict[str, str]:
    """id -> the status the ingress answers; ids still `queued` are polled again until
    `deadline` (monotonic seconds). Transport errors count as not answered yet."""
    status: dict[str, str] = dict.fromkeys(ids, "unanswered")
    slots = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:

        async def one(request_id: str) -> None:
            async with slots:
                try:
                    answer = await client.get(f"/v1/async/requests/{request_id}")
                except httpx.TransportError:
                    return
                if answer.status_code == 200:
                    status[request_id] = str(answer.json()["status"])
                else:
                    status[request_id] = f"http {answer.status_code}"

        while True:
            pending = [i for i, s in status.items() if s not in FINAL]
            if not pending or time.monotonic() > deadline:
                return status
            await asyncio.gather(*(one(i) for i in pending))
            if any(status[i] not in FINAL for i in pending):
                await asyncio.sleep(1.0)


def line_request_ids(batch: AcceptedBatch) -> tuple[str, ...]:
    """Line n (1-based) of a batch is request `request_id_for(batch, n)`."""
    return tuple(request_id_for(batch.batch_id, n) for n in range(1, len(batch.custom_ids) + 1))


async def _behind(consumer: AIOKafkaConsumer, ends: Offsets) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return True
    return False


async def batch_outcomes(
    url: str, accepted: Sequence[AcceptedBatch], deadline: float
) -> list[BatchOutcome]:
    """Wait (until `deadline`) for every batch to be final, then read its files."""
    out: list[BatchOutcome] = []
    async with openai.AsyncOpenAI(
        base_url=f"{url}/v1", api_key="chaos", max_retries=3, timeout=30.0
    ) as sdk:
        for batch in accepted:
            state = await sdk.batches.retrieve(batch.batch_id)
            while state.status not in BATCH_FINAL and time.monotonic() < deadline:
                await asyncio.sleep(1.0)
                state = await sdk.batches.retrieve(batch.batch_id)
            found: list[str] = []
            for file_id in (state.output_file_id, state.error_file_id):
                if file_id:
                    content = (await sdk.files.content(file_id)).content
                    found += [orjson.loads(line)["custom_id"] for line in content.splitlines()]
            out.append(
                BatchOutcome(
                    batch_id=batch.batch_id,
                    custom_ids=batch.custom_ids,
                    request_ids=tuple(
                        request_id_for(batch.batch_id, n)
                        for n in range(1, len(batch.custom_ids) + 1)
                    ),
                    status=state.status,
                    file_custom_ids=tuple(found),
                )
            )
    return out


class ClickHouseView:
    """The three raw tables as the invariants need them (database `tollway`)."""

    def __init__(self, url: str, database: str = "tollway") -> None:
        self.client = connect(url, send_receive_timeout_s=120)
        self.db = database

    def requests(self) -> dict[str, list[str]]:
        rows: defaultdict[str, list[str]] = defaultdict(list)
        for request_id, execution_id in self.client.query(
            f"SELECT request_id, execution_id FROM {self.db}.requests"
        ).result_rows:
            rows[request_id].append(execution_id)
        return dict(rows)

    def attempt_rows(self) -> Counter[str]:
        query = f"SELECT attempt_id, count() FROM {self.db}.attempts GROUP BY attempt_id"
        return Counter({a: int(n) for a, n in self.client.query(query).result_rows})

    def usage_rows(self) -> dict[str, list[tuple[str, int]]]:
        rows: defaultdict[str, list[tuple[str, int]]] = defaultdict(list)
        query = f"SELECT usage_id, attempt_id, cost_usd FROM {self.db}.usage"
        for usage_id, attempt_id, cost_usd in self.client.query(query).result_rows:
            rows[usage_id].append((attempt_id, int(Decimal(cost_usd) * NANO)))
        return dict(rows)

    def counts(self) -> dict[str, TableCounts]:
        keys = {"requests": "request_id", "attempts": "attempt_id", "usage": "usage_id"}
        out = {}
        for table, key in keys.items():
            rows, unique = self.client.query(
                f"SELECT count(), uniqExact({key}) FROM {self.db}.{table}"
            ).result_rows[0]
            out[table] = TableCounts(int(rows), int(unique))
        return out

    def attempts_by_number(self) -> TableCounts:
        rows, unique = self.client.query(
            f"SELECT count(), uniqExact(request_id, attempt) FROM {self.db}.attempts"
        ).result_rows[0]
        return TableCounts(int(rows), int(unique))

    def has_requests(self, ids: Iterable[str]) -> set[str]:
        """Which of a few `ids` have a row (the query carries them: keep it small)."""
        wanted = list(ids)
        if not wanted:
            return set()
        query = f"SELECT DISTINCT request_id FROM {self.db}.requests WHERE request_id IN %(ids)s"
        return {r[0] for r in self.client.query(query, parameters={"ids": wanted}).result_rows}

    def close(self) -> None:
        self.client.close()
