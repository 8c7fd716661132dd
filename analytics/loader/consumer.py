"""Loader wiring: Tollway's outcome topics -> ClickHouse tables.

    in:  tollway.results, tollway.attempts, tollway.usage, tollway.budget-events
         (consumer group `tollway-loader`)
    out: ClickHouse `requests`, `attempts`, `usage`, `budget_events`; the rollups
         (`cost_hourly`, `cost_daily`, `request_costs`) follow by materialized views

Guarantee: every record is stored once. Delivery is at-least-once (offsets are
committed only after the batch holding them was written), and the sink is idempotent
(`loader/clickhouse.py`: a key already stored is skipped, a retried insert carries the
same deduplication token), so a crash between insert and commit, a rebalance or an
upstream duplicate never adds a second row.

The poll loop never waits on ClickHouse: records go into a `Batcher`, and a due batch
is written by one background task at a time, retried with backoff until ClickHouse
takes it. Meanwhile the loop keeps polling (the group membership survives an outage)
and keeps buffering up to `buffer_max_rows`, then pauses fetching: memory stays bounded
and nothing is committed that is not stored. A record that cannot be decoded is
written to `tollway.dead-letters` with its position and reason (workers/dead_letters.py)
before its offset can be committed, and not stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from analytics.loader.batching import Batch, Batcher
from analytics.loader.rows import (
    TABLE_BY_TOPIC,
    Row,
    attempt_row,
    budget_event_row,
    request_row,
    usage_row,
)
from analytics.loader.sink import Sink, SinkUnavailable
from analytics.settings import AnalyticsSettings
from schemas import codec, topics
from schemas.errors import DeadLetter
from schemas.settings import KafkaSettings
from workers.dead_letters import send_dead_letter, source_of
from workers.telemetry.metrics import loader_metrics, start_metrics
from workers.telemetry.tracing import start_span

log = logging.getLogger("tollway.loader")
_T = TypeVar("_T")

TOPICS: Final = (topics.RESULTS, topics.ATTEMPTS, topics.USAGE, topics.BUDGET_EVENTS)
_FETCH_MAX_RECORDS: Final = 10_000
_REVOKE_TIMEOUT_S: Final = 10.0


def _to_row(record: ConsumerRecord[bytes, bytes]) -> Row:
    """Decode a record of one of `TOPICS` into its table row (raises DeadLetter)."""
    value, p, o = record.value or b"", record.partition, record.offset
    topic = record.topic
    if topic == topics.RESULTS.name:
        return request_row(codec.decode("result", value), p, o)
    if topic == topics.ATTEMPTS.name:
        return attempt_row(codec.decode("attempt", value), p, o)
    if topic == topics.USAGE.name:
        return usage_row(codec.decode("usage", value), p, o)
    return budget_event_row(codec.decode("budget_event", value), p, o)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class LoaderStats:
    records: int = 0
    skipped: int = 0
    rows_written: int = 0
    batches: int = 0
    write_failures: int = 0


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, loader: Loader) -> None:
        self._loader = loader

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._loader.hand_over(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("assigned %d partitions", len(assigned))


class Loader:
    """One loader process: a consumer-group member writing batches through a `Sink`."""

    def __init__(
        self,
        kafka: KafkaSettings,
        settings: AnalyticsSettings,
        sink: Sink,
        clock_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.clock_ms = clock_ms
        self.stats = LoaderStats()
        self.batcher = Batcher(
            settings.batch_max_rows, settings.batch_max_age_ms, settings.buffer_max_rows
        )
        self._flushes: set[asyncio.Task[None]] = set()
        # Batches are written and committed one at a time, in the order they were taken:
        # a later batch's commit must never cover an earlier batch that is not stored.
        self._write_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._paused = False
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap,
            group_id=settings.group_id,
            client_id="tollway-loader",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=max(1_000, settings.session_timeout_ms // 3),
            request_timeout_ms=kafka.request_timeout_ms + settings.session_timeout_ms,
            fetch_max_bytes=16 * 1024 * 1024,
            max_partition_fetch_bytes=2 * 1024 * 1024,
        )
        self.dead_letters = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap,
            client_id="tollway-loader",
            enable_idempotence=True,
            acks="all",
            max_request_size=topics.REQUEST_RECORD_MAX_BYTES,
            request_timeout_ms=kafka.request_timeout_ms,
        )

    async def run(self) -> None:
        await self.dead_letters.start()
        await self.consumer.start()
        self.consumer.subscribe([t.name for t in TOPICS], listener=_Rebalance(self))
        try:
            while not self._stopping.is_set():
                self._apply_backpressure()
                room = min(self.batcher.room(), _FETCH_MAX_RECORDS)
                fetched = await self.consumer.getmany(timeout_ms=50, max_records=max(1, room))
                now = self.clock_ms()
                dead: list[tuple[ConsumerRecord[bytes, bytes], DeadLetter]] = []
                rows = [
                    (tp, record.offset, self._row(record, dead))
                    for tp, records in fetched.items()
                    for record in records
                ]
                for record, exc in dead:  # durable before a commit can pass its offset
                    source = source_of(record.topic, record.partition, record.offset)
                    await send_dead_letter(self.dead_letters, source, record.key, record.value, exc)
                for tp, offset, row in rows:
                    self.batcher.add(tp, offset, row, now)
                self._flush_if_due(now)
        finally:
            await self._drain()

    def stop(self) -> None:
        self._stopping.set()

    def _row(
        self,
        record: ConsumerRecord[bytes, bytes],
        dead: list[tuple[ConsumerRecord[bytes, bytes], DeadLetter]],
    ) -> Row | None:
        """The record's row, or None (and the record appended to `dead`) if unreadable."""
        self.stats.records += 1
        try:
            # a child of the producer's span (router or cost processor), from the headers
            with start_span(f"process {record.topic}", kind="consumer", headers=record.headers):
                return _to_row(record)
        except DeadLetter as exc:
            self.stats.skipped += 1
            dead.append((record, exc))
            return None

    def _apply_backpressure(self) -> None:
        if self.batcher.room() == 0:
            if not self._paused:
                log.info("buffer full (%d rows): fetching paused", self.batcher.buffered_rows)
            # Every time: partitions assigned since the pause must not fetch either.
            self.consumer.pause(*self.consumer.assignment())
            self._paused = True
        elif self._paused:
            self.consumer.resume(*self.consumer.assignment())
            self._paused = False

    def _flush_if_due(self, now_ms: int) -> None:
        self._reap()
        if not self._flushes and self.batcher.due(now_ms):
            self._start_flush()

    def _start_flush(self) -> None:
        batch = self.batcher.take()
        if batch is not None:
            self._flushes.add(asyncio.create_task(self._write_and_commit(batch)))

    def _reap(self) -> None:
        for task in [t for t in self._flushes if t.done()]:
            self._flushes.discard(task)
            task.result()  # re-raise a bug in the writer rather than stall silently

    async def _write_and_commit(self, batch: Batch) -> None:
        async with self._write_lock:
            await self._write(batch)
            self.stats.batches += 1
            await self._commit(batch)

    async def _write(self, batch: Batch) -> None:
        """Write every table of the batch (side by side), each retried until stored."""
        await asyncio.gather(
            *(self._write_table(batch, topic) for topic in batch.topics() if batch.rows_of(topic))
        )

    async def _write_table(self, batch: Batch, topic: str) -> None:
        table, rows, token = TABLE_BY_TOPIC[topic], batch.rows_of(topic), batch.token(topic)
        delay_s = 0.1
        metrics = loader_metrics()
        while True:
            started = time.perf_counter()
            try:
                written = await asyncio.to_thread(self.sink.write, table, rows, token)
            except SinkUnavailable as exc:
                self.stats.write_failures += 1
                metrics.insert_failures.labels(table.name).inc()
                log.warning("write to %s failed (%s); retrying in %.1fs", table.name, exc, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, self.settings.retry_max_backoff_s)
            else:
                self.stats.rows_written += written
                metrics.rows.labels(table.name).inc(written)
                metrics.insert_duration.labels(table.name).observe(time.perf_counter() - started)
                return

    async def _commit(self, batch: Batch) -> None:
        owned = self.consumer.assignment()
        positions = {
            TopicPartition(topic, partition): position
            for (topic, partition), position in batch.commit_positions().items()
            if TopicPartition(topic, partition) in owned
        }
        if not positions:
            return
        try:
            await self.consumer.commit(positions)
        except KafkaError as exc:  # a rebalance: the rows are stored, the replay is skipped
            log.warning("commit failed (%s); the next owner skips what is stored", exc)

    async def hand_over(self, revoked: set[TopicPartition]) -> None:
        """On revocation: write and commit what was read, in bounded time; forget the rest."""
        try:
            async with asyncio.timeout(_REVOKE_TIMEOUT_S):
                await self._flush_everything()
        except TimeoutError:
            log.warning("could not store revoked partitions' rows in time; the next owner will")
        dropped = self.batcher.drop(revoked)
        if dropped:
            log.info("dropped %d buffered rows of revoked partitions", dropped)

    async def _flush_everything(self) -> None:
        """Write and commit what is in flight and what is buffered (survives cancellation)."""
        self._start_flush()
        if self._flushes:
            await asyncio.shield(asyncio.gather(*self._flushes))
        self._reap()

    async def _drain(self) -> None:
        """Graceful stop: store and commit what was read (bounded), leave the group."""
        try:
            async with asyncio.timeout(_REVOKE_TIMEOUT_S):
                await self._flush_everything()
        except TimeoutError:
            log.warning("stopping with unstored rows; they are uncommitted and will be re-read")
        finally:
            for task in self._flushes:
                task.cancel()
            await asyncio.gather(*self._flushes, return_exceptions=True)
            with contextlib.suppress(KafkaError):
                await self.consumer.stop()
            with contextlib.suppress(KafkaError):
                await self.dead_letters.stop()


async def serve(kafka: KafkaSettings, settings: AnalyticsSettings) -> None:
    """Run one loader until SIGTERM/SIGINT; migrations are applied first."""
    from analytics.connection import connect
    from analytics.loader.clickhouse import ClickHouseSink
    from analytics.migrate import migrate

    client = await _connected(settings, lambda: connect(settings.url, send_receive_timeout_s=60))
    await asyncio.to_thread(migrate, client, settings.database, settings.raw_ttl_days)
    loader = Loader(kafka, settings, ClickHouseSink(client, settings.database))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, loader.stop)
    log.info("loader starting: %s -> %s", kafka.bootstrap, settings.url_for_logs)
    start_metrics(
        "loader",
        settings.loader_metrics_port,
        bootstrap=kafka.bootstrap,
        lag_groups=(settings.group_id,),
    )
    await loader.run()


async def _connected(settings: AnalyticsSettings, open_client: Callable[[], _T]) -> _T:
    """Open the client, waiting (with backoff) for ClickHouse to come up."""
    delay_s = 0.2
    while True:
        try:
            return await asyncio.to_thread(open_client)
        except Exception as exc:  # noqa: BLE001  # any failure to connect means "not up yet"
            log.warning("ClickHouse at %s not reachable (%s)", settings.url_for_logs, exc)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, settings.retry_max_backoff_s)
