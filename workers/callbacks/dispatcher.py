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

One webhook per request, for its first result (docs/decisions/0003): a re-executed
request has a second result, possibly with another status, and it gets no webhook.
A process knows which requests it has seen a result of (`_answered`); a process that
takes a tollway.results partition over (a restart, a rebalance) first reads back the
keys of that partition's results of the last `readback_window_s` below its start
position (`_read_back`, in its own task after the assignment, never inside the
rebalance callback), and the partition's deliveries wait for it, at most
`readback_timeout_s`: otherwise a second result read after a restart got its webhook
too, under the same webhook-id with another status (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
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
from workers.recent_keys import RecentKeys
from workers.router.offsets import OffsetTracker
from workers.telemetry.metrics import dead_letter_metrics, start_metrics, webhook_metrics

log = logging.getLogger("tollway.callbacks")

_RECENT_MAX: Final = 100_000
RECENT_MAX_AGE_S: Final = 900.0
"""How long this process remembers a request's first result and a handled event: past
`READBACK_WINDOW_S` (a re-execution's result follows the first within a minute in the
chaos runs), short enough that the sets stop growing within a soak's first quarter
hour (`workers/recent_keys.py`; ~2 MB each at 8 webhooks/s)."""
READBACK_WINDOW_S: Final = 300.0
"""How far back (record time) a dispatcher taking a results partition over reads the
keys of results already handled. A re-execution's result follows the first one by
the time a router needs to notice the loss of another (session timeout, drain, run):
seconds to a minute in the chaos runs."""
READBACK_TIMEOUT_S: Final = 20.0
"""Longest the deliveries of taken-over results partitions wait for the read-back; past
it they go on with what was read (a second webhook becomes possible again)."""
_BACKOFF_MAX_S: Final = 5.0
RETRY_GROUP_HEADER: Final = "tollway-callbacks-group"
"""Header naming the dispatcher group that wrote a retry record. A group attempts only its
own retries and those without the header (written by `replay`, or before the header
existed): a second group on the same cluster, which starts the retry topic at its
beginning, does not attempt every other group's retries again (and re-write them)."""
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


class KnownResults:
    """Per tollway.results partition, the offset below which this process knows every
    request that had a result (`Dispatcher._answered`): from a read-back at a takeover,
    then from each result handled in order. A result waits (`wait`) until its partition is
    known up to it; released early by a rebalance (`release`), at the latest after
    `timeout_s`. Offsets of a results partition are contiguous (idempotent producers, no
    transactions), so the results handled one after another keep it known."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._up_to: dict[int, int] = {}
        self._events: dict[int, asyncio.Event] = {}
        self._epoch = 0

    def up_to(self, partition: int) -> int:
        """-1 when nothing is known."""
        return self._up_to.get(partition, -1)

    def below(self, partition: int, offset: int) -> bool:
        """Whether the requests of every result below `offset` are known."""
        return self.up_to(partition) >= offset

    def advance(self, partition: int, up_to: int) -> None:
        if up_to > self.up_to(partition):
            self._up_to[partition] = up_to
            event = self._events.pop(partition, None)
            if event is not None:
                event.set()

    async def wait(self, partition: int, offset: int) -> None:
        epoch = self._epoch
        deadline = time.monotonic() + self.timeout_s
        while not self.below(partition, offset) and self._epoch == epoch:
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                log.warning("results/%d@%d: earlier results not known in time", partition, offset)
                return
            event = self._events.setdefault(partition, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left_s):
                    await event.wait()

    def release(self) -> None:
        """A rebalance: whatever waits goes on (its partition may be another's now)."""
        self._epoch += 1
        for event in self._events.values():
            event.set()
        self._events.clear()


AssignedHook = Callable[[dict[TopicPartition, int]], None]
"""Told each assigned partition's start position; must not block (rebalance callback)."""


class _Lane:
    """One consumer group member with its own finished-prefix offset tracking."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        handler: Handler,
        max_tasks: int,
        on_assigned: AssignedHook | None = None,
        on_revoked: Callable[[], None] | None = None,
    ) -> None:
        self.consumer = consumer
        self.handler = handler
        self.max_tasks = max_tasks
        self.on_assigned = on_assigned
        self.on_revoked = on_revoked
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
        if self._lane.on_revoked is not None:
            self._lane.on_revoked()
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
        positions: dict[TopicPartition, int] = {}
        for tp in assigned:
            position = positions[tp] = await consumer.position(tp)
            if await consumer.committed(tp) is None:
                unpinned[tp] = position
        if self._lane.on_assigned is not None:
            self._lane.on_assigned(positions)
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
        readback_window_s: float = READBACK_WINDOW_S,
        readback_timeout_s: float = READBACK_TIMEOUT_S,
    ) -> None:
        self.kafka = kafka
        self.settings = settings
        self._group = settings.group_id.encode()
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
        self._recent: RecentKeys[tuple[str, str]] = RecentKeys(RECENT_MAX_AGE_S, _RECENT_MAX)
        # Requests whose first result this process read: a later result of the same request
        # (a re-execution) gets no webhook; the first result is the request's state (0003).
        # Filled at a takeover by reading back the partition's recent results (`_read_back`).
        self._answered: RecentKeys[bytes] = RecentKeys(RECENT_MAX_AGE_S, _RECENT_MAX)
        self.readback_window_s = readback_window_s
        self.readback_timeout_s = readback_timeout_s
        self.known = KnownResults(readback_timeout_s)
        self._readback_tasks: set[asyncio.Task[None]] = set()
        self._client_id = client_id
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
            on_assigned=self._results_assigned,
            on_revoked=self._results_revoked,
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
                    async with asyncio.timeout(self.settings.commit_interval_ms / 1000):
                        await self._stopping.wait()
                for lane in (self.events, self.retries):
                    if any(t.done() for t in tasks):
                        await asyncio.gather(*tasks)  # a lane died: surface its error
                    await lane.commit()
        finally:
            for task in tasks:
                task.cancel()
            readbacks = list(self._readback_tasks)
            self._results_revoked()
            # Awaited, so each read-back's consumer is stopped (its connections closed)
            # before this returns, not left to the garbage collector after the loop ends.
            await asyncio.gather(*readbacks, return_exceptions=True)
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
        self._remember_answered(request_key)
        return True

    def _remember_answered(self, request_key: bytes) -> None:
        self._answered.add(request_key, time.monotonic())

    def _results_assigned(self, positions: dict[TopicPartition, int]) -> None:
        """Start reading back the recent results of every results partition whose requests
        this process does not know up to its start position; their deliveries wait."""
        unknown = {
            tp.partition: position
            for tp, position in positions.items()
            if tp.topic == topics.RESULTS.name and self.known.up_to(tp.partition) < position
        }
        if not unknown:
            return
        task = asyncio.create_task(self._read_back(unknown))
        self._readback_tasks.add(task)
        task.add_done_callback(self._readback_tasks.discard)

    def _results_revoked(self) -> None:
        """A rebalance (every partition is revoked): stop reading back; what waited goes on
        (its partition is another member's now, or read back again at the assignment)."""
        for task in list(self._readback_tasks):
            task.cancel()
        self.known.release()

    async def _read_back(self, starts: dict[int, int]) -> None:
        """Remember the request ids of the results below each partition's start position
        written in the last `readback_window_s`: their first result was handled (the
        position is committed), a later one gets no webhook. Bounded by
        `readback_timeout_s`; on a timeout or a broker error the deliveries go on with what
        was read (at-least-once as before, a second webhook possible again)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.kafka.bootstrap,
            client_id=f"{self._client_id}-readback",
            group_id=None,
            enable_auto_commit=False,
        )
        ends = {TopicPartition(topics.RESULTS.name, p): end for p, end in starts.items()}
        read = 0
        t0 = time.monotonic()
        # Shielded: aiokafka's start cancelled halfway leaves its bootstrap connection open
        # and unknown to `stop()` (a socket leaked at every revocation during a start).
        starting = asyncio.ensure_future(consumer.start())
        try:
            async with asyncio.timeout(self.readback_timeout_s):
                await asyncio.shield(starting)
                consumer.assign(list(ends))
                since_ms = self.clock_ms() - int(self.readback_window_s * 1000)
                found = await consumer.offsets_for_times(dict.fromkeys(ends, since_ms))
                for tp in list(ends):
                    first = found.get(tp)
                    if first is None or first.offset >= ends[tp]:
                        self.known.advance(tp.partition, ends.pop(tp))
                    else:
                        consumer.seek(tp, first.offset)
                while ends:
                    batch = await consumer.getmany(*ends, timeout_ms=200, max_records=5_000)
                    for tp, records in batch.items():
                        read += self._remember_keys(records, ends.get(tp, -1))
                    for tp in list(ends):
                        if await consumer.position(tp) >= ends[tp]:
                            self.known.advance(tp.partition, ends.pop(tp))
        except (TimeoutError, KafkaError) as exc:
            log.warning(
                "read-back of recent results stopped (%s): %d partition(s) incomplete; a "
                "re-executed request of theirs may get a second webhook",
                type(exc).__name__,
                len(ends),
            )
            for tp, end in ends.items():
                self.known.advance(tp.partition, end)  # not again at every rebalance
        finally:
            with contextlib.suppress(KafkaError):
                await asyncio.gather(starting, return_exceptions=True)  # finished, then stopped
                await consumer.stop()
        log.info(
            "read back %d recent results of %d partition(s) in %.1f s",
            read,
            len(starts),
            time.monotonic() - t0,
        )

    def _remember_keys(self, records: list[ConsumerRecord[bytes, bytes]], end: int) -> int:
        """Remember the async requests (ingress ids) of `records` below `end`."""
        remembered = 0
        for record in records:
            if record.offset < end and record.key is not None and record.key.startswith(b"req_"):
                self._remember_answered(record.key)
                remembered += 1
        return remembered

    # --- events --------------------------------------------------------------------------

    async def _on_event(self, record: ConsumerRecord[bytes, bytes]) -> None:
        now = self.clock_ms()
        deliveries: list[WebhookDelivery] = []
        try:
            if record.topic == topics.RESULTS.name:
                if not self.known.below(record.partition, record.offset):
                    await self.known.wait(record.partition, record.offset)
                if self.known.below(record.partition, record.offset):  # still contiguous
                    self.known.advance(record.partition, record.offset + 1)
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
                self._answered.discard(record.key)
            raise

    async def _first_attempt(self, delivery: WebhookDelivery) -> None:
        seen = (delivery["webhook_id"], delivery["endpoint_key"])
        if seen in self._recent:
            return  # the same event again (a redelivered result): already handled here
        # Marked before the attempt: a second result of the same request (a re-execution)
        # read while the first one's delivery is still in progress is not delivered too.
        self._recent.add(seen, time.monotonic())
        try:
            await self._attempt(delivery)
        except BaseException:  # cancelled (a revocation) or failed: not handled after all
            self._recent.discard(seen)
            raise

    async def _on_retry(self, record: ConsumerRecord[bytes, bytes]) -> None:
        owner = dict(record.headers or ()).get(RETRY_GROUP_HEADER)
        if owner is not None and owner != self._group:
            return  # another group's retry: that group attempts it
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
            CALLBACKS_RETRY.name,
            attempt["webhook_id"],
            codec.encode("webhook_delivery", attempt),
            headers=[(RETRY_GROUP_HEADER, self._group)],
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

    async def _send(
        self, topic: str, key: str, value: bytes, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        delay_s = 0.1
        while True:
            producer = self.producer
            try:
                await producer.send_and_wait(topic, value, key=key.encode(), headers=headers)
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
