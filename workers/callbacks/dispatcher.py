"""Callback dispatcher wiring: events -> signed webhooks, with retries and dead letters.

    in:  tollway.results        (group `tollway-callbacks`): async requests with a callback_url
    in:  tollway.batch-state    (same group): batches reaching a final status
    in:  tollway.budget-events  (same group): threshold crossings
    in:  tollway.callbacks.retry (group `tollway-callbacks-retry`): deliveries waiting, each
                                 held until its due time, then attempted again
    in:  tollway.callbacks.endpoints (every partition, no group): endpoints disabled by a 410
    out: HTTP POST to the endpoints; tollway.callbacks.retry (next attempt);
         tollway.callbacks.dead (gave up); tollway.callbacks.endpoints (410)

Guarantee: at-least-once per (message, endpoint). A record's offset is committed
only after its delivery succeeded or its next step (retry record, dead letter) was
acknowledged by Kafka; a restart may send a message again with the same
`webhook-id`, which receivers use to drop duplicates (Standard Webhooks). Retry
records are committed as a finished prefix, so after a restart the retries that
were waiting are read again and re-scheduled, not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Final

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from schemas import codec, topics
from schemas.batch_topics import BATCH_STATE, CALLBACK_ENDPOINTS, CALLBACKS_DEAD, CALLBACKS_RETRY
from schemas.errors import CorruptRecord
from schemas.records import WebhookDelivery, WebhookEndpointState
from schemas.settings import KafkaSettings
from workers.callbacks import events
from workers.callbacks.delivery import Sender
from workers.callbacks.endpoints import WebhooksConfig
from workers.callbacks.retry import next_due_ms
from workers.callbacks.settings import CallbacksSettings, load_webhooks
from workers.callbacks.ssrf import parse_networks
from workers.producer_renewal import RenewableProducer
from workers.router.offsets import OffsetTracker
from workers.telemetry.metrics import dead_letter_metrics, start_metrics, webhook_metrics

log = logging.getLogger("tollway.callbacks")

_RECENT_MAX: Final = 100_000
_BACKOFF_MAX_S: Final = 5.0
_ENABLE_LEAD_MS: Final = 2_000


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


async def _behind(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    """Whether `consumer` has not yet read every partition up to `ends`."""
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return True
    return False


Handler = Callable[[ConsumerRecord[bytes, bytes]], Awaitable[None]]


class _Lane:
    """One consumer group member with its own finished-prefix offset tracking."""

    def __init__(self, consumer: AIOKafkaConsumer, handler: Handler, max_tasks: int) -> None:
        self.consumer = consumer
        self.handler = handler
        self.max_tasks = max_tasks
        self.tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self.tasks: set[asyncio.Task[None]] = set()
        self.assigned = asyncio.Event()
        self._paused = False

    async def run(self) -> None:
        while True:
            full = len(self.tasks) >= self.max_tasks
            if full != self._paused:
                parts = self.consumer.assignment()
                (self.consumer.pause if full else self.consumer.resume)(*parts)
                self._paused = full
            batch = await self.consumer.getmany(timeout_ms=100, max_records=500)
            for tp, records in batch.items():
                for record in records:
                    self.tracker.start(tp, record.offset)
                    task = asyncio.create_task(self._handle(tp, record))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)

    async def _handle(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            await self.handler(record)
        except Exception:
            # A bug of ours: log it and move on rather than block the partition forever.
            log.exception("handling %s@%s failed", tp, record.offset)
        self.tracker.finish(tp, record.offset)

    async def commit(self) -> None:
        positions = self.tracker.to_commit()
        if not positions:
            return
        try:
            await self.consumer.commit(dict(positions))
        except KafkaError as exc:
            log.warning("commit failed (%s); will retry", type(exc).__name__)
            return
        self.tracker.mark_committed(positions)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, lane: _Lane) -> None:
        self._lane = lane

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._lane.commit()
        for tp in revoked:
            self._lane.tracker.drop(tp)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        # Resolve positions now, so "ready" means events are not missed, and commit the
        # position of every partition that has no committed offset yet. Without that, a
        # member that dies before it finished a record of such a partition leaves it
        # uncommitted, and its successor applies `start_from` (latest) again: everything
        # written there in between is skipped (a batch.completed webhook lost in the chaos
        # run; tests/integration/test_callbacks_restart.py). `latest` is meant once per
        # group, never per restart.
        consumer = self._lane.consumer
        unpinned: dict[TopicPartition, int] = {}
        for tp in assigned:
            position = await consumer.position(tp)
            if await consumer.committed(tp) is None:
                unpinned[tp] = position
        if unpinned:
            try:
                await consumer.commit(unpinned)
            except KafkaError as exc:
                log.warning("could not pin start positions (%s)", type(exc).__name__)
        self._lane.assigned.set()


class Dispatcher:
    def __init__(
        self,
        kafka: KafkaSettings,
        settings: CallbacksSettings,
        config: WebhooksConfig,
        *,
        sender: Sender | None = None,
        clock_ms: Callable[[], int] = wall_ms,
        draw: Callable[[], float] = random.random,
        client_id: str = "tollway-callbacks",
    ) -> None:
        self.kafka = kafka
        self.settings = settings
        self.config = config
        self.policy = settings.retry_policy()
        self.clock_ms = clock_ms
        self.draw = draw
        self._own_client = sender is None
        self.sender = sender or Sender(
            httpx.AsyncClient(limits=httpx.Limits(max_connections=settings.max_in_flight)),
            allow=parse_networks(settings.allow_networks),
            allow_http=settings.allow_http,
            timeout_s=settings.timeout_s,
        )
        self.disabled: dict[str, bool] = {}
        self._recent: OrderedDict[tuple[str, str], None] = OrderedDict()
        # Requests whose first result this process read: a later result of the same request
        # (a re-execution) gets no webhook; the first result is the request's state (0003).
        # Not kept across restarts: a re-execution's result read by a new process after the
        # first one was committed still sends a second webhook (docs/reliability.md).
        self._answered: OrderedDict[bytes, None] = OrderedDict()
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._stopping = asyncio.Event()
        common = {"bootstrap_servers": kafka.bootstrap, "client_id": client_id}
        # Replaced, not retried, when the broker lost its idempotence state (0021).
        self.producers = RenewableProducer(
            lambda: AIOKafkaProducer(
                **common, enable_idempotence=True, acks="all", max_request_size=2 * 1024 * 1024
            )
        )
        self.events = _Lane(
            AIOKafkaConsumer(
                **common,
                group_id=settings.group_id,
                enable_auto_commit=False,
                auto_offset_reset=settings.start_from,
            ),
            self._on_event,
            settings.max_in_flight,
        )
        self.retries = _Lane(
            AIOKafkaConsumer(
                **common,
                group_id=f"{settings.group_id}-retry",
                enable_auto_commit=False,
                auto_offset_reset="earliest",  # a waiting retry is never skipped
            ),
            self._on_retry,
            settings.max_held,
        )
        self._endpoints = AIOKafkaConsumer(**common, group_id=None, enable_auto_commit=False)

    async def ready(self) -> None:
        """Return once both groups have their partitions (events after this are seen)."""
        await self.events.assigned.wait()
        await self.retries.assigned.wait()

    def stop(self) -> None:
        self._stopping.set()

    @property
    def producer(self) -> AIOKafkaProducer:
        """The current producer (a new one after a loss of idempotence state)."""
        return self.producers.current

    async def run(self) -> None:
        await self.producer.start()
        await self._load_endpoints()
        for lane, subscribed in (
            (self.events, [topics.RESULTS.name, BATCH_STATE.name, topics.BUDGET_EVENTS.name]),
            (self.retries, [CALLBACKS_RETRY.name]),
        ):
            await lane.consumer.start()
            lane.consumer.subscribe(subscribed, listener=_Rebalance(lane))
        tasks = [
            asyncio.create_task(self.events.run()),
            asyncio.create_task(self.retries.run()),
            asyncio.create_task(self._follow_endpoints()),
        ]
        try:
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._stopping.wait(), self.settings.commit_interval_ms / 1000
                    )
                for lane in (self.events, self.retries):
                    if any(t.done() for t in tasks):
                        await asyncio.gather(*tasks)  # a lane died: surface its error
                    await lane.commit()
        finally:
            for task in tasks:
                task.cancel()
            for lane in (self.events, self.retries):
                pending = {t for t in lane.tasks if not t.done()}
                for task in pending:
                    task.cancel()
                await asyncio.gather(*tasks, *pending, return_exceptions=True)
                with contextlib.suppress(KafkaError):
                    await lane.commit()
                await lane.consumer.stop()
            await self._endpoints.stop()
            await self.producer.stop()
            if self._own_client:
                await self.sender.client.aclose()

    # --- endpoint state ------------------------------------------------------------------

    async def _load_endpoints(self) -> None:
        await self._endpoints.start()
        tps = [
            TopicPartition(CALLBACK_ENDPOINTS.name, p) for p in range(CALLBACK_ENDPOINTS.partitions)
        ]
        self._endpoints.assign(tps)
        await self._endpoints.seek_to_beginning(*tps)
        ends = await self._endpoints.end_offsets(tps)
        while await _behind(self._endpoints, ends):
            self._apply_endpoints(await self._endpoints.getmany(timeout_ms=200))

    async def _follow_endpoints(self) -> None:
        while True:
            self._apply_endpoints(await self._endpoints.getmany(timeout_ms=500))

    def _apply_endpoints(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        for records in batch.values():
            for record in records:
                if record.value is None:
                    continue
                try:
                    state = codec.decode("webhook_endpoint", record.value)
                except CorruptRecord:
                    log.exception("undecodable endpoint state at offset %s", record.offset)
                    continue
                self.disabled[state["endpoint_key"]] = state["disabled"]

    # --- first results -------------------------------------------------------------------

    def _first_result(self, request_key: bytes) -> bool:
        """True for the first result of a request seen here; it is remembered."""
        if request_key in self._answered:
            return False
        self._answered[request_key] = None
        if len(self._answered) > _RECENT_MAX:
            self._answered.popitem(last=False)
        return True

    # --- events --------------------------------------------------------------------------

    async def _on_event(self, record: ConsumerRecord[bytes, bytes]) -> None:
        now = self.clock_ms()
        deliveries: list[WebhookDelivery] = []
        try:
            if record.topic == topics.RESULTS.name:
                # Only ingress ids can carry a callback; batch results (breq_) are skipped
                # without decoding.
                if (
                    record.key is not None
                    and record.key.startswith(b"req_")
                    and self._first_result(record.key)
                ):
                    deliveries = events.from_result(
                        codec.decode("result", record.value or b""), now
                    )
            elif record.topic == BATCH_STATE.name:
                if record.key is not None and b"/" not in record.key and record.value:
                    state = codec.decode("batch_state", record.value)
                    deliveries = events.from_batch(state, self.config, now)
            elif record.value:
                budget = codec.decode("budget_event", record.value)
                deliveries = events.from_budget(budget, self.config, now)
        except CorruptRecord:
            log.exception("undecodable %s record at offset %s", record.topic, record.offset)
            return
        try:
            await asyncio.gather(*(self._first_attempt(d) for d in deliveries))
        except BaseException:  # not handled after all (e.g. cancelled by a revocation)
            if record.topic == topics.RESULTS.name and record.key is not None:
                self._answered.pop(record.key, None)
            raise

    async def _first_attempt(self, delivery: WebhookDelivery) -> None:
        seen = (delivery["webhook_id"], delivery["endpoint_key"])
        if seen in self._recent:
            return  # the same event again (a redelivered result): already handled here
        # Marked before the attempt: a second result of the same request (a re-execution)
        # read while the first one's delivery is still in progress is not delivered too.
        self._recent[seen] = None
        if len(self._recent) > _RECENT_MAX:
            self._recent.popitem(last=False)
        try:
            await self._attempt(delivery)
        except BaseException:  # cancelled (a revocation) or failed: not handled after all
            self._recent.pop(seen, None)
            raise

    async def _on_retry(self, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            delivery = codec.decode("webhook_delivery", record.value or b"")
        except CorruptRecord:
            log.exception("undecodable retry record at offset %s", record.offset)
            return
        wait_ms = delivery["due_at_ms"] - self.clock_ms()
        if wait_ms > 0:
            await asyncio.sleep(wait_ms / 1000)
        await self._attempt(delivery)

    async def _attempt(self, delivery: WebhookDelivery) -> None:
        """One attempt, then exactly one of: done, a retry record, a dead letter."""
        key = delivery["endpoint_key"]
        if self.disabled.get(key, False):
            await self._dead(delivery, "the endpoint is disabled (it answered 410 Gone)")
            return
        team = self.config.team(delivery["team_id"])
        if team is None:
            await self._dead(delivery, f"no webhook secret configured for {delivery['team_id']}")
            return
        metrics = webhook_metrics()
        async with self._slots:
            now_ms = self.clock_ms()
            started = time.perf_counter()
            outcome = await self.sender.send(delivery, team.keys(), now_ms // 1000)
            metrics.duration.observe(time.perf_counter() - started)
        metrics.attempts.labels(outcome.kind).inc()
        attempt = delivery.copy()
        attempt["attempt"] += 1
        attempt["last_error"] = None if outcome.kind == "delivered" else outcome.detail
        if outcome.kind == "delivered":
            log.info("delivered %s to %s", delivery["webhook_id"], key)
            return
        if outcome.kind == "gone":
            await self._disable(key, outcome.detail)
            await self._dead(attempt, outcome.detail)
            return
        if outcome.kind == "refused":
            await self._dead(attempt, outcome.detail)
            return
        due = next_due_ms(
            self.policy, attempt["attempt"], attempt["first_attempt_at_ms"], now_ms, self.draw()
        )
        if due is None:
            await self._dead(
                attempt, f"gave up after {attempt['attempt']} attempts: {outcome.detail}"
            )
            return
        attempt["due_at_ms"] = due
        log.info("%s to %s: %s; retry at %s", delivery["webhook_id"], key, outcome.detail, due)
        await self._send(
            CALLBACKS_RETRY.name, attempt["webhook_id"], codec.encode("webhook_delivery", attempt)
        )
        metrics.retries.inc()

    async def _dead(self, delivery: WebhookDelivery, reason: str) -> None:
        dead = delivery.copy()
        dead["last_error"] = reason
        log.warning("dead letter %s to %s: %s", dead["webhook_id"], dead["endpoint_key"], reason)
        await self._send(
            CALLBACKS_DEAD.name, dead["webhook_id"], codec.encode("webhook_delivery", dead)
        )
        dead_letter_metrics().published.labels(CALLBACKS_DEAD.name).inc()

    async def _disable(self, key: str, reason: str) -> None:
        self.disabled[key] = True
        state: WebhookEndpointState = {
            "endpoint_key": key,
            "disabled": True,
            "reason": reason,
            "updated_at_ms": self.clock_ms(),
        }
        await self._send(CALLBACK_ENDPOINTS.name, key, codec.encode("webhook_endpoint", state))

    async def _send(self, topic: str, key: str, value: bytes) -> None:
        delay_s = 0.1
        while True:
            producer = self.producer
            try:
                await producer.send_and_wait(topic, value, key=key.encode())
            except KafkaError as exc:
                log.warning("publish to %s failed (%s); retrying", topic, type(exc).__name__)
                await self.producers.renew_if_lost(producer, exc)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, _BACKOFF_MAX_S)
            else:
                return


async def replay(
    kafka: KafkaSettings,
    *,
    webhook_ids: frozenset[str] = frozenset(),
    endpoint_key: str | None = None,
    since_ms: int = 0,
    enable: bool = False,
    now_ms: Callable[[], int] = wall_ms,
) -> int:
    """Send dead letters again: each goes back to the retry topic, due now, with a fresh
    retry window and its original webhook-id. `enable` re-enables their endpoints first
    (after a 410). Returns how many were replayed."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap, group_id=None, enable_auto_commit=False
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap, enable_idempotence=True, acks="all"
    )
    await consumer.start()
    await producer.start()
    try:
        tps = [TopicPartition(CALLBACKS_DEAD.name, p) for p in range(CALLBACKS_DEAD.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        chosen: dict[tuple[str, str], WebhookDelivery] = {}
        while await _behind(consumer, ends):
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= ends[tp] or record.timestamp < since_ms:
                        continue
                    delivery = codec.decode("webhook_delivery", record.value or b"")
                    if webhook_ids and delivery["webhook_id"] not in webhook_ids:
                        continue
                    if endpoint_key and delivery["endpoint_key"] != endpoint_key:
                        continue
                    chosen[(delivery["webhook_id"], delivery["endpoint_key"])] = delivery
        now = now_ms()
        futures = []
        if enable:
            for key in {d["endpoint_key"] for d in chosen.values()}:
                state: WebhookEndpointState = {
                    "endpoint_key": key,
                    "disabled": False,
                    "reason": "re-enabled by replay",
                    "updated_at_ms": now,
                }
                value = codec.encode("webhook_endpoint", state)
                await producer.send_and_wait(CALLBACK_ENDPOINTS.name, value, key=key.encode())
        # Give dispatchers a moment to read the re-enabled endpoints before the retries.
        due = now + (_ENABLE_LEAD_MS if enable else 0)
        for delivery in chosen.values():
            again = delivery.copy()
            again["due_at_ms"] = due
            again["first_attempt_at_ms"] = now
            value = codec.encode("webhook_delivery", again)
            futures.append(
                await producer.send(CALLBACKS_RETRY.name, value, key=again["webhook_id"].encode())
            )
        await asyncio.gather(*futures)
        return len(chosen)
    finally:
        await consumer.stop()
        await producer.stop()


async def serve(kafka: KafkaSettings, settings: CallbacksSettings) -> None:
    """Run one dispatcher until SIGTERM/SIGINT."""
    dispatcher = Dispatcher(kafka, settings, load_webhooks(settings.webhooks_file))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, dispatcher.stop)
    log.info("callback dispatcher starting against %s", kafka.bootstrap)
    start_metrics(
        "callbacks",
        settings.metrics_port,
        bootstrap=kafka.bootstrap,
        lag_groups=(settings.group_id, f"{settings.group_id}-retry"),
    )
    await dispatcher.run()
