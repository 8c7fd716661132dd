"""Router wiring: tollway.requests.* -> provider calls -> tollway.results/attempts/replies.

    in:  tollway.requests.interactive, tollway.requests.batch  (group `tollway-router`)
    in:  tollway.budget-state, no group (only with budgets: each attempt is checked and
         holds a reservation, workers/router/budgets.py, docs/decisions/0009)
    in:  tollway.batch-state, no group: cancel commands; lines of a cancelled batch are
         answered `batch_cancelled` without a provider call (cancelled.py)
    in:  the tenancy view (rate limits of keys and teams): a record over a limit is
         answered 429 (sync) or waits for room without holding a call slot (async,
         batch; rate_gate.py, docs/decisions/0014)
    out: tollway.attempts (every provider call), tollway.results (one per execution),
         tollway.replies (sync requests, to the waiting ingress's partition),
         tollway.dead-letters (records that cannot be decoded)

Guarantee: at-least-once. A record's offset is committed only after its
attempts and result were acknowledged by Kafka (acks=all, idempotent producer),
so a crash at any moment re-executes the uncommitted records: their results
carry the same request_id and are deduplicated by every sink, their provider
calls are recorded as additional attempts.

The poll loop never waits on a provider: each record runs as its own task,
bounded by `max_in_flight`; when the bound is reached the loop pauses fetching
but keeps calling `getmany`, so a 2-minute provider call does not cost the
worker its partitions. Records of a partition finish out of order;
`OffsetTracker` commits only the contiguous finished prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from schemas import codec, topics
from schemas.errors import DeadLetter, TollwayError
from schemas.kafka_partitioner import KeyPartitioner
from schemas.records import RequestEnvelope, StreamChunk
from schemas.routes import load_routes
from schemas.settings import KafkaSettings
from workers.budget.view import EnforcementSettings
from workers.dead_letters import send_dead_letter, source_of
from workers.producer_renewal import RenewableProducer
from workers.providers.registry import build_registry
from workers.recent_keys import RecentKeys
from workers.router.budgets import build_budgets
from workers.router.cancelled import CancelledBatches
from workers.router.execution import Execution, Executor
from workers.router.lanes import Lanes, take
from workers.router.membership import AbsenceGuard, Poll, rebalance_timeout_ms
from workers.router.offsets import OffsetTracker, decode_finished
from workers.router.rate_gate import RateGate
from workers.router.settings import RouterSettings
from workers.telemetry.logs import bind_request_id
from workers.telemetry.metrics import router_metrics, start_metrics
from workers.telemetry.tracing import inject_headers, mark_error, set_attributes, start_span
from workers.tenancy.config_kafka import KafkaTenancyView
from workers.tenancy.model import TenancyView
from workers.tenancy.settings import TenancySettings

log = logging.getLogger("tollway.router")

_PUBLISH_BACKOFF_MAX_S = 5.0
ANSWERED_IDS_MAX = 10_000
"""Request ids whose result this router published that it remembers (~2 MB): enough
for the copies a restarted batch worker publishes again within seconds (0006)."""
ANSWERED_IDS_MAX_AGE_S = 600.0
"""And for at most this long (workers/recent_keys.py): copies come within seconds."""
_LOAD_FINISHED_TIMEOUT_S = 5.0
PRODUCER_BATCH_BYTES = 256 * 1024
"""Largest record batch per partition (aiokafka's default is 16 KiB); below the
broker's 1 MiB message.max.bytes."""


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, router: Router) -> None:
        self._router = router

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        router = self._router
        if router.membership.revoking(time.monotonic()):
            # Back from an absence: this member was dropped, the partitions are another
            # router's already; what is in flight must neither be waited for nor go on.
            router.abandon_in_flight("a rebalance after an absence")
        else:
            # Let in-flight calls of the revoked partitions finish and commit them, so the
            # new owner does not call the provider a second time for the same records.
            await router.drain_partitions(revoked)
        await router.commit()
        router.remember_finished(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("assigned %d partitions", len(assigned))
        self._router.membership.assigned(time.monotonic())
        await self._router.take_over(assigned)


class Router:
    """One router process: a consumer-group member with its own producer."""

    def __init__(
        self,
        kafka: KafkaSettings,
        settings: RouterSettings,
        executor: Executor,
        cancelled: CancelledBatches | None = None,
        tenancy: TenancyView | None = None,
    ) -> None:
        self.kafka = kafka
        self.settings = settings
        self.executor = executor
        self.cancelled = cancelled  # lines of cancelled batches are skipped (cancelled.py)
        self.tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        # Offsets a partition's previous owner finished above its committed position
        # (commit metadata, workers/router/offsets.py): skipped, not run again.
        self.finished_by_previous_owner: dict[TopicPartition, set[int]] = {}
        # Offsets this router finished on partitions revoked at the last rebalance that no
        # commit covers (a commit refused around a broker restart or an absence): skipped
        # too if a partition comes back to it.
        self._finished_here: dict[TopicPartition, set[int]] = {}
        # Partitions assigned whose finished offsets are still being read: paused, since
        # aiokafka starts fetching before the assignment callback runs.
        self._taking_over: set[TopicPartition] = set()
        self.membership = AbsenceGuard(settings.session_timeout_ms, time.monotonic())
        # Tasks abandoned after an absence: cancelled, and should one outlive it (a
        # cancellation swallowed by a timeout firing at the same wake-up) it publishes
        # its attempts (real spend) but no result, and finishes nothing.
        self._abandoned: set[asyncio.Task[None]] = set()
        # Async and batch requests answered here (result published) or being run: a copy of
        # one (a batch worker re-expanding lines after its restart, 0006) is not run again.
        self._answered_ids: RecentKeys[str] = RecentKeys(ANSWERED_IDS_MAX_AGE_S, ANSWERED_IDS_MAX)
        self._running_ids: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._tasks_by_tp: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._stopping = asyncio.Event()
        self.lanes = Lanes.of(settings.max_in_flight, settings.batch_share)
        self._batch_tasks: set[asyncio.Task[None]] = set()
        # Rate limits (None: every team unlimited). Records waiting for room are tasks
        # too, but hold no call slot: they are subtracted from the lanes' counts.
        self.gate = RateGate(
            tenancy, default_output_tokens=settings.rate_limit_default_output_tokens
        )
        self._waiting_by_tp: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._waiting_batch = 0
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka.bootstrap,
            group_id=settings.group_id,
            client_id=f"tollway-router-{executor.router_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_interval_ms=settings.max_poll_interval_ms,
            session_timeout_ms=settings.session_timeout_ms,
            rebalance_timeout_ms=rebalance_timeout_ms(
                settings.max_poll_interval_ms,
                settings.session_timeout_ms,
                settings.revoke_drain_timeout_s,
            ),
            heartbeat_interval_ms=max(1_000, settings.session_timeout_ms // 3),
            request_timeout_ms=kafka.request_timeout_ms + settings.session_timeout_ms,
        )
        # Replaced, not retried, when the broker lost its idempotence state (0021).
        self.producers = RenewableProducer(
            lambda: AIOKafkaProducer(
                bootstrap_servers=kafka.bootstrap,
                client_id=f"tollway-router-{executor.router_id}",
                enable_idempotence=True,
                acks="all",
                linger_ms=0,  # measured: linger 2 ms adds ~2.8 ms per hop; load batches anyway
                # A burst (hundreds of results finishing at once, e.g. budget refusals) queues
                # behind one in-flight request per broker (idempotence): measured here, 1,000
                # results + replies took 12 s with 16 KiB batches (past the send timeout) and
                # 1.3 s with 256 KiB.
                max_batch_size=PRODUCER_BATCH_BYTES,
                max_request_size=topics.REQUEST_RECORD_MAX_BYTES,  # a dead-lettered request
                partitioner=KeyPartitioner(),  # Kafka's murmur2, at half aiokafka's cost (0012)
                request_timeout_ms=kafka.request_timeout_ms,
            )
        )

    @property
    def producer(self) -> AIOKafkaProducer:
        """The current producer (a new one after a loss of idempotence state)."""
        return self.producers.current

    async def run(self) -> None:
        await self.producer.start()
        await self.consumer.start()
        self.consumer.subscribe(
            [topics.REQUESTS_INTERACTIVE.name, topics.REQUESTS_BATCH.name],
            listener=_Rebalance(self),
        )
        last_commit = time.monotonic()
        self.membership = AbsenceGuard(self.settings.session_timeout_ms, last_commit)
        try:
            while not self._stopping.is_set():
                self._apply_backpressure()
                room = self.settings.max_in_flight - self._calls()
                batch = await self.consumer.getmany(timeout_ms=100, max_records=max(1, room))
                verdict, away_s = self.membership.polled(time.monotonic())
                if verdict is not Poll.RUN:
                    if verdict is Poll.ABSENT:
                        self.abandon_in_flight(
                            f"{away_s:.1f} s since the last poll (session timeout "
                            f"{self.settings.session_timeout_ms} ms)"
                        )
                    if batch:
                        self._put_back(batch, verdict)
                    continue
                for tp, records in batch.items():
                    for record in self._admitted(tp, records):
                        self.tracker.start(tp, record.offset)
                        if self._finished_before(tp, record.offset):
                            self.tracker.finish(tp, record.offset)
                        else:
                            self._spawn(tp, record)
                now = time.monotonic()
                if (now - last_commit) * 1000 >= self.settings.commit_interval_ms:
                    await self.commit()
                    last_commit = now
        finally:
            await self._drain()

    def stop(self) -> None:
        self._stopping.set()

    def _put_back(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]], verdict: Poll
    ) -> None:
        """Leave a batch fetched since an absence, before the group was rejoined, to
        whoever owns it now (workers/router/membership.py): seek back to its first record
        where the partition is still assigned; elsewhere the new owner has it already."""
        assigned = self.consumer.assignment()
        for tp, records in batch.items():
            if records and tp in assigned:
                self.consumer.seek(tp, records[0].offset)
        log.warning(
            "router %s: %s: %d fetched records put back, not run",
            self.executor.router_id,
            "back from an absence" if verdict is Poll.ABSENT else "not yet rejoined",
            sum(len(r) for r in batch.values()),
        )

    def _admitted(
        self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]
    ) -> Sequence[ConsumerRecord[bytes, bytes]]:
        """Every interactive record; batch records up to the batch lane's room, the rest
        fetched again later (workers/router/lanes.py)."""
        if tp.topic != topics.REQUESTS_BATCH.name:
            return records
        room = self.lanes.batch_room(self._calls(), len(self._batch_tasks) - self._waiting_batch)
        started, left_out = take(records, room)
        if left_out is not None:
            self.consumer.seek(tp, left_out.offset)
        return started

    def _spawn(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        task = asyncio.create_task(self._handle(tp, record))
        in_flight = router_metrics().in_flight
        in_flight.inc()
        task.add_done_callback(lambda _: in_flight.dec())
        per_tp = self._tasks_by_tp.setdefault(tp, set())
        self._tasks.add(task)
        per_tp.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(per_tp.discard)
        if tp.topic == topics.REQUESTS_BATCH.name:
            self._batch_tasks.add(task)
            task.add_done_callback(self._batch_tasks.discard)

    async def drain_partitions(self, partitions: set[TopicPartition]) -> None:
        """Wait (bounded by `revoke_drain_timeout_s`) for the partitions' in-flight records.
        Records still waiting for a rate limit are dropped at once: they called nothing,
        are not committed, and the new owner runs them."""
        self._cancel_waiting(partitions)
        pending = set().union(*(self._tasks_by_tp.get(tp, set()) for tp in partitions))
        if pending:
            await asyncio.wait(pending, timeout=self.settings.revoke_drain_timeout_s)

    def _calls(self) -> int:
        """Records in flight that hold a call slot (all but those waiting for a rate limit)."""
        return len(self._tasks) - self._waiting_count()

    def _waiting_count(self) -> int:
        return sum(len(tasks) for tasks in self._waiting_by_tp.values())

    @contextlib.contextmanager
    def _waiting(self, tp: TopicPartition) -> Iterator[None]:
        """Count a record waiting for its rate limit as waiting, not as a call."""
        task = asyncio.current_task()  # the record's task (`_handle`)
        waiting = self._waiting_by_tp.setdefault(tp, set())
        if task is not None:
            waiting.add(task)
        batch = tp.topic == topics.REQUESTS_BATCH.name
        self._waiting_batch += batch
        try:
            yield
        finally:
            if task is not None:
                waiting.discard(task)
            if not waiting:
                self._waiting_by_tp.pop(tp, None)
            self._waiting_batch -= batch

    def abandon_in_flight(self, why: str) -> None:
        """Cancel every record in flight after an absence past the session timeout.

        Their partitions were handed over while this router was away: the new owner runs
        those records from the last commit (they are not finished here, so never
        committed). Letting them go on would make more provider calls (retries, fallbacks
        and calls not yet started) and publish a second, possibly different, result: the
        frozen-router duplicates of the chaos suite (docs/reliability.md). A task whose
        cancellation is lost (a call timeout firing at the same wake-up turns it into a
        retry) is still marked: it publishes no result (`_handle_record`)."""
        live = [task for task in self._tasks if not task.done()]
        if not live:
            return
        log.warning(
            "router %s: %s: %d records in flight abandoned to the partitions' new owners",
            self.executor.router_id,
            why,
            len(live),
        )
        for task in live:
            self._abandoned.add(task)
            task.add_done_callback(self._abandoned.discard)
            task.cancel()

    def remember_finished(self, revoked: set[TopicPartition]) -> None:
        """Forget the revoked partitions' tracking, keeping what was finished here and
        not committed (nor known from a previous owner) in case a partition comes back."""
        for tp in revoked:
            finished = self.tracker.finished_uncommitted(tp)
            finished |= self.finished_by_previous_owner.pop(tp, set())
            if finished:
                self._finished_here[tp] = finished
            self.tracker.drop(tp)

    def _cancel_waiting(self, partitions: set[TopicPartition] | None = None) -> None:
        """Cancel the records of `partitions` (default: all) that wait for a rate limit."""
        for tp, tasks in list(self._waiting_by_tp.items()):
            if partitions is None or tp in partitions:
                for task in tasks:
                    task.cancel()

    def _apply_backpressure(self) -> None:
        """Pause what may not start more calls now: every partition when all slots are
        taken, the batch partitions when the batch lane is full (workers/router/lanes.py),
        and, once `rate_limit_max_waiting` records wait for a rate limit, the partitions
        holding them (memory stays bounded; other teams of those partitions wait too)."""
        pause_all, pause_batch = self.lanes.paused(
            self._calls(), len(self._batch_tasks) - self._waiting_batch
        )
        waiting = self._waiting_by_tp
        too_many_waiting = self._waiting_count() >= self.settings.rate_limit_max_waiting
        wanted = {
            tp
            for tp in self.consumer.assignment()
            if pause_all
            or tp in self._taking_over
            or (pause_batch and tp.topic == topics.REQUESTS_BATCH.name)
            or (too_many_waiting and tp in waiting)
        }
        paused = self.consumer.paused()
        if wanted - paused:
            self.consumer.pause(*(wanted - paused))
        if paused - wanted:
            self.consumer.resume(*(paused - wanted))

    async def take_over(self, assigned: set[TopicPartition]) -> None:
        """Run no record of `assigned` until `load_finished` knows which to skip.

        aiokafka starts fetching a new assignment before it calls the assignment callback,
        so without the pause a record the previous owner finished could be fetched and run
        while its commit metadata is still on the way (a second provider call). Paused
        partitions' fetched records are dropped by aiokafka, not returned; the next
        `_apply_backpressure` resumes them."""
        self._taking_over |= assigned
        if assigned:
            self.consumer.pause(*assigned)
        try:
            await self.load_finished(assigned)
        finally:
            self._taking_over -= assigned

    async def load_finished(self, assigned: set[TopicPartition]) -> None:
        """Read which records above each committed position the previous owner finished.

        Uses the group coordinator aiokafka already has (its public `committed()` drops
        the metadata). Bounded: on any failure those records simply run again. Records
        this router itself finished before the partition was revoked, uncommitted, are
        skipped as well (`remember_finished`)."""
        mine, self._finished_here = self._finished_here, {}
        for tp in assigned & mine.keys():
            self.finished_by_previous_owner[tp] = mine[tp]
        try:
            async with asyncio.timeout(_LOAD_FINISHED_TIMEOUT_S):
                committed = await self.consumer._coordinator.fetch_committed_offsets(assigned)
        except (KafkaError, TimeoutError) as exc:
            log.warning("could not read the commit metadata (%s)", type(exc).__name__)
            return
        for tp, entry in committed.items():
            finished = decode_finished(entry.offset, entry.metadata)
            if finished:
                self.finished_by_previous_owner[tp] = (
                    self.finished_by_previous_owner.get(tp, set()) | finished
                )
                log.info(
                    "%s/%s: %d records above offset %d were finished by the previous owner",
                    tp.topic,
                    tp.partition,
                    len(finished),
                    entry.offset,
                )

    def _finished_before(self, tp: TopicPartition, offset: int) -> bool:
        """True (once) for a record the partition's previous owner already answered."""
        finished = self.finished_by_previous_owner.get(tp)
        if finished is None or offset not in finished:
            return False
        finished.discard(offset)
        if not finished:
            del self.finished_by_previous_owner[tp]
        router_metrics().skipped_finished.inc()
        return True

    async def commit(self) -> None:
        positions = self.tracker.to_commit()
        if not positions:
            return
        try:
            await self.consumer.commit(dict(positions))
        except KafkaError as exc:  # rebalancing or broker away: the next tick retries
            log.warning("commit failed (%s); will retry", type(exc).__name__)
            return
        self.tracker.mark_committed(positions)

    async def _handle(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        # A child of the ingress's publish span, from the record's headers (0019); the
        # attempts, result and reply published inside carry this span's context onward.
        with start_span(f"process {record.topic}", kind="consumer", headers=record.headers):
            await self._handle_record(tp, record)

    async def _handle_record(
        self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]
    ) -> None:
        try:
            envelope = codec.decode("request", record.value or b"")
        except DeadLetter as exc:
            await self._publish_dead_letter(record, exc)
        else:
            bind_request_id(envelope["request_id"])  # the record's own task: logs carry it
            set_attributes({"tollway.request_id": envelope["request_id"]})
            if await self._answered_before(envelope):
                self.tracker.finish(tp, record.offset)
                return
            try:
                await self._run_record(tp, record, envelope)
            finally:
                if self._running_ids.get(envelope["request_id"]) is asyncio.current_task():
                    del self._running_ids[envelope["request_id"]]
            return
        self.tracker.finish(tp, record.offset)

    async def _answered_before(self, envelope: RequestEnvelope) -> bool:
        """True for a copy of an async or batch request this router already answered (its
        result is published); a copy arriving while the first runs waits for it. Sync
        requests always run: their waiting ingress needs the reply on its partition."""
        request_id = envelope["request_id"]
        if envelope["mode"] == "sync":
            return False
        first = self._running_ids.get(request_id)
        if first is not None and not first.done():
            await asyncio.wait({first})  # its outcome is read below, not raised here
        if request_id in self._answered_ids:
            log.info("request %s: a copy of a request answered here; not run again", request_id)
            return True
        task = asyncio.current_task()
        if task is not None:
            self._running_ids[request_id] = task
        return False

    def _answered(self, request_id: str) -> None:
        self._answered_ids.add(request_id, time.monotonic())

    async def _run_record(
        self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes], envelope: RequestEnvelope
    ) -> None:
        """Execute one decoded request, publish its attempts and result, finish its offset."""
        relay = None
        if envelope["mode"] == "sync" and envelope["reply_partition"] is not None:
            relay = ChunkRelay(self.producer, envelope["reply_partition"])
        try:
            execution = (
                Execution(self.executor.failed_result(envelope, self.cancelled.error()))
                if self.cancelled is not None and self.cancelled.skips(envelope)
                else await self.gate.run(
                    envelope,
                    lambda: self.executor.execute(
                        envelope, relay.emit if relay is not None else None
                    ),
                    lambda error: Execution(self.executor.failed_result(envelope, error)),
                    lambda: self._waiting(tp),
                )
            )
            if relay is not None:
                await relay.flush()
        except Exception:
            # A bug of ours: answer the request with a 500 rather than stall the
            # partition's commits and re-execute (and re-bill) it on every restart.
            log.exception("execution of %s failed", envelope["request_id"])
            failure = TollwayError("Internal error while routing the request.")
            execution = Execution(self.executor.failed_result(envelope, failure))
        if self._abandoned_now(envelope, execution):
            # Its partition is another router's: the calls made are real spend and
            # recorded, the result is the new owner's to publish, nothing is finished.
            await self._publish(envelope, execution, with_result=False)
            raise asyncio.CancelledError
        await self._publish(envelope, execution)
        self._answered(envelope["request_id"])
        result = execution.result
        if result["status"] == "failed":  # one line per failed request, with its ids
            mark_error(result["error_type"] or "failed")
            log.info(
                "request %s failed: %s (HTTP %s) after %d attempt(s)",
                result["request_id"],
                result["error_type"],
                result["http_status"],
                result["attempts"],
            )
        router_metrics().execution(execution.result, execution.attempts)
        self.tracker.finish(tp, record.offset)

    def _abandoned_now(self, envelope: RequestEnvelope, execution: Execution) -> bool:
        """True when this record's task was abandoned (`abandon_in_flight`) but went on."""
        task = asyncio.current_task()
        if task is None or task not in self._abandoned:
            return False
        log.warning(
            "request %s: abandoned after an absence; %d attempt(s) recorded, no result",
            envelope["request_id"],
            len(execution.attempts),
        )
        return True

    async def _publish(
        self, envelope: RequestEnvelope, execution: Execution, *, with_result: bool = True
    ) -> None:
        """Send attempts, result and (sync) reply together; retry until all are acked.
        Without `with_result`, the attempts only (an abandoned record's calls).

        A retry re-sends only the records that failed or were never queued: re-sending
        records still in flight would add load exactly when the producer is behind.
        """
        key = envelope["request_id"].encode()
        headers = inject_headers()  # the trace goes on to cost, loader, callbacks (0019)
        result_bytes = codec.encode("result", execution.result)
        result_headers = [*(headers or ()), (topics.RESULT_MODE_HEADER, envelope["mode"].encode())]
        records: list[tuple[str, bytes, int | None]] = [
            (topics.ATTEMPTS.name, codec.encode("attempt", a), None) for a in execution.attempts
        ]
        if with_result:
            records.append((topics.RESULTS.name, result_bytes, None))
        if with_result and envelope["mode"] == "sync" and envelope["reply_partition"] is not None:
            records.append((topics.REPLIES.name, result_bytes, envelope["reply_partition"]))
        futures: list[asyncio.Future[object] | None] = [None] * len(records)
        delay_s = 0.1
        while True:
            producer = self.producer
            try:
                for i, (topic, value, partition) in enumerate(records):
                    sent = futures[i]
                    if sent is None or (
                        sent.done() and (sent.cancelled() or sent.exception() is not None)
                    ):
                        futures[i] = await producer.send(
                            topic,
                            value,
                            key=key,
                            partition=partition,
                            headers=result_headers if topic == topics.RESULTS.name else headers,
                        )
                await asyncio.gather(*(f for f in futures if f is not None))
            except KafkaError as exc:
                if await self.producers.renew_if_lost(producer, exc):
                    futures = [f if _acked(f) else None for f in futures]  # the rest again
                log.warning("publish failed (%s); retrying in %.1fs", type(exc).__name__, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, _PUBLISH_BACKOFF_MAX_S)
            else:
                return

    async def _publish_dead_letter(
        self, record: ConsumerRecord[bytes, bytes], exc: DeadLetter
    ) -> None:
        source = source_of(record.topic, record.partition, record.offset)
        await send_dead_letter(self.producer, source, record.key, record.value, exc)

    async def _drain(self) -> None:
        """Graceful stop: finish in-flight work, commit it, leave the group. Records waiting
        for a rate limit are not waited for (uncommitted: the next owner runs them)."""
        self._cancel_waiting()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=30)
        with contextlib.suppress(KafkaError):
            await self.commit()
        await self.consumer.stop()
        await self.producer.stop()
        await self.executor.provider.aclose()


def _acked(sent: asyncio.Future[object] | None) -> bool:
    return sent is not None and sent.done() and not sent.cancelled() and sent.exception() is None


class ChunkRelay:
    """Sends a streamed request's chunks to the waiting ingress's reply partition, in order.

    `emit` never blocks the provider stream: chunks queue up and one task sends them
    one after another (same partition, so Kafka keeps their order, and the final
    Result is published after `flush`). A chunk that cannot be delivered is dropped
    after the producer's own retries: the durable Result still records the answer.
    """

    def __init__(self, producer: AIOKafkaProducer, partition: int) -> None:
        self._producer = producer
        self._partition = partition
        self._queue: asyncio.Queue[StreamChunk] | None = None  # made by the first emit
        self._acks: list[asyncio.Future[object]] = []
        self._task: asyncio.Task[None] | None = None

    def emit(self, chunk: StreamChunk) -> None:
        if self._queue is None:  # most relays never see a chunk (non-streamed requests)
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._send(self._queue))
        self._queue.put_nowait(chunk)

    async def _send(self, queue: asyncio.Queue[StreamChunk]) -> None:
        while True:
            chunk = await queue.get()
            try:
                ack = await self._producer.send(
                    topics.REPLIES.name,
                    codec.encode("stream_chunk", chunk),
                    key=chunk["request_id"].encode(),
                    partition=self._partition,
                )
                self._acks.append(ack)
            except KafkaError:
                log.warning("dropped stream chunk %s of %s", chunk["seq"], chunk["request_id"])
            finally:
                queue.task_done()

    async def flush(self) -> None:
        if self._task is None or self._queue is None:
            return
        await self._queue.join()
        self._task.cancel()
        await asyncio.gather(*self._acks, return_exceptions=True)


def router_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


async def serve(kafka: KafkaSettings, settings: RouterSettings) -> None:
    """Run one router until SIGTERM/SIGINT. Rate limits come from the tenancy config topics;
    until those are read (bounded by TOLLWAY_TENANCY_READY_TIMEOUT_S) nothing is limited."""
    enforcement = EnforcementSettings()
    budgets = build_budgets(kafka, settings, enforcement)  # None: no budgets, no cost
    from workers.cache.service import build_cache_service  # numpy only when it is used

    routes = load_routes(settings.routes_file)
    cache = build_cache_service(kafka, routes)  # None: TOLLWAY_CACHE_ENABLED is off
    executor = Executor(
        routes=routes,
        provider=build_registry(os.environ, max_connections=settings.max_in_flight),
        router_id=router_id(),
        budgets=budgets,
        cache=cache.hook if cache is not None else None,
    )
    cancelled = CancelledBatches(kafka)
    tenancy = KafkaTenancyView(kafka, client_id=f"tollway-router-{executor.router_id}-config")
    router = Router(kafka, settings, executor, cancelled, tenancy)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, router.stop)
    log.info("router %s starting against %s", executor.router_id, kafka.bootstrap)
    start_metrics(
        "router", settings.metrics_port, bootstrap=kafka.bootstrap, lag_groups=(settings.group_id,)
    )
    if budgets is not None:
        router_metrics().watch_reservations(budgets.ledger.holds, budgets.ledger.reserved_total)
    if budgets is not None:
        await budgets.start(enforcement.ready_timeout_s)
    await cancelled.start()
    if cache is not None:
        await cache.start()
    await tenancy.start()
    ready_timeout_s = TenancySettings().ready_timeout_s
    if not await tenancy.wait_ready(ready_timeout_s):
        log.warning(
            "tenancy config not read in %.0fs: rate limits apply once it is", ready_timeout_s
        )
    try:
        await router.run()
    finally:
        await tenancy.stop()
        if cache is not None:
            await cache.stop()
        await cancelled.stop()
        if budgets is not None:
            await budgets.stop()
