"""The one faust-streaming module besides the stages' `agent.py` files.

Everything faust needs to run a Tollway stream processor: the app factory
(broker from `TOLLWAY_KAFKA_BOOTSTRAP`, in-memory tables restored from their
changelog topics, a data dir under `.tollway/faust/<app id>`, the web server
off unless a port is given), topic objects that hand agents the raw bytes
(records are Avro, decoded with `schemas.codec` inside the agents), and the one
launcher both processors use (`create_processor_app`, `batch_agent`,
`run_processor`: app from settings, the batch loop that never acks a failed
batch, topics prepared before the worker runs). Faust stays here and in
`agent.py` so the processors' logic is plain functions, testable without it
(STYLE.md).

Restarts: a processor given a `group_instance_id` is a static member of its
consumer group (KIP-345). Restarted with the same id (SIGKILL, deploy), it
takes its partitions back as soon as it joins, instead of after the broker has
waited out the dead member's session (`session_timeout_s`, >= 6 s: the broker's
`group.min.session.timeout.ms`). The price: a static member sends no LeaveGroup,
so one that stops for good (even cleanly) holds its partitions unprocessed for
one session timeout; and the newer of two live processes with one id fences the
older, so each replica needs its own id. Measured in
tests/integration/test_cost_budget.py: join within ~0.1 s of start.

Facts this module relies on (faust-streaming 0.15.3, ARCHITECTURE.md): faust is
slow per event, so agents read in batches (`stream.take_events`); its
`exactly_once` mode is experimental, so the processors run at-least-once and
make their effects idempotent themselves; windows are computed by
`workers/budget/windows.py`, not by faust.

Gap-free delivery (docs/decisions/0016): faust 0.15.3 (with mode-streaming 0.7.1)
can drop records it has already fetched, and commits past a single missing
offset. The processors' idempotence needs every partition handled in offset
order without gaps, so (1) `keep_queued_events_on_resume` removes the measured
cause (resuming an already running flow emptied the agents' queues right after
table recovery), and (2) every batch goes through a `DeliveryGate`
(`workers/delivery.py`): records faust did not deliver are read from Kafka by
the gate and handled in their place, in offset order, before anything after them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, NoReturn, Protocol

import faust
import uvloop
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError
from faust.types import Message
from mode.utils.queues import FlowControlEvent

from deploy.topics import ensure_topics
from schemas import topics
from schemas.errors import DeadLetter
from schemas.topics import Topic
from workers.dead_letters import dead_letter_headers, source_of
from workers.delivery import DeliveryCursor, Key, is_complete
from workers.telemetry.metrics import stream_metrics

log = logging.getLogger("tollway.faust")

EXIT_UNRECOVERABLE: Final = 70
"""Exit status after a failure that must not be acked (sysexits EX_SOFTWARE)."""
SETTLE_TIMEOUT_S: Final = 30.0
"""Longest wait for Kafka to acknowledge a batch's writes before the process gives up."""
_SEND_ATTEMPTS: Final = 6
FILL_TIMEOUT_S: Final = 30.0
"""Longest wait to read records faust failed to deliver; without them nothing after
them may be handled, so the process stops unacked (the restart resumes at the committed
offset)."""

Outgoing = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None, int | None]
"""(topic, key, value, headers, partition) of one record to publish (None: by key)."""


def broker_urls(bootstrap: str) -> list[str]:
    """`host:port[,host:port]` -> faust's broker URL list."""
    return [f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip()]


_ORIGINAL_RESUME: Final = FlowControlEvent.resume


def _resume(self: FlowControlEvent) -> None:
    """`FlowControlEvent.resume` that empties the managed queues only when flow WAS
    suspended (what the clearing is for: events queued for partitions being revoked)."""
    was_suspended = not self.is_active()
    self._suspend.clear()
    self._resume.set()
    if was_suspended:
        self.clear()


def keep_queued_events_on_resume() -> None:
    """Stop faust from dropping fetched records when it resumes a flow that is running.

    mode-streaming 0.7.1's `FlowControlEvent.resume` always empties every agent's input
    queue. faust-streaming 0.15.3 calls it at the end of table recovery
    (`Recovery.on_recovery_completed`) AFTER it has resumed the stream partitions while
    its fetcher runs: records fetched in that window, already counted as read by the
    consumer, vanish from the queue unprocessed and unacked. Measured in
    tests/integration/test_cost_budget.py: 6 such gaps in ~75 budget-processor restarts
    (docs/decisions/0016). Idempotent; unit-tested against the installed mode, including
    that the unpatched method still clears (so an upgrade that fixes it is noticed).
    """
    FlowControlEvent.resume = _resume  # type: ignore[method-assign]  # the patch itself


def create_app(
    app_id: str,
    *,
    bootstrap: str,
    data_dir: Path,
    web_port: int | None = None,
    session_timeout_s: float = 10.0,
    commit_interval_s: float = 1.0,
    replication_factor: int = 1,
    start_from: str = "earliest",
    group_instance_id: str | None = None,
) -> faust.App:
    """A faust app whose id is also its consumer group and its changelog topics' prefix.

    `group_instance_id`: static group membership (see the module doc); None = dynamic.
    """
    heartbeat_s = max(1.0, session_timeout_s / 3)
    (data_dir / app_id).mkdir(parents=True, exist_ok=True)
    keep_queued_events_on_resume()
    return faust.App(
        app_id,
        broker=broker_urls(bootstrap),
        store="memory://",  # tables are restored from their changelog at start
        datadir=str(data_dir / app_id),
        web_enabled=web_port is not None,
        web_port=web_port or 6066,
        web_bind="127.0.0.1",
        # A new group prices/budgets all retained input; "latest" is for tests and benchmarks.
        consumer_auto_offset_reset=start_from,
        broker_session_timeout=session_timeout_s,
        broker_heartbeat_interval=heartbeat_s,
        consumer_group_instance_id=group_instance_id,
        broker_commit_interval=commit_interval_s,
        producer_acks=-1,
        topic_replication_factor=replication_factor,
        topic_allow_declare=True,  # only faust's own topics (changelogs, internal)
        table_standby_replicas=0,
        processing_guarantee="at_least_once",
    )


class ProcessorSettings(Protocol):
    """The settings every faust processor has (CostSettings, BudgetSettings): what the
    shared launcher reads. Durations in seconds."""

    @property
    def app_id(self) -> str: ...
    @property
    def data_dir(self) -> Path: ...
    @property
    def web_port(self) -> int | None: ...
    @property
    def session_timeout_s(self) -> float: ...
    @property
    def commit_interval_s(self) -> float: ...
    @property
    def replication_factor(self) -> int: ...
    @property
    def start_from(self) -> str: ...
    @property
    def group_instance_id(self) -> str | None: ...
    @property
    def batch_max(self) -> int: ...
    @property
    def batch_within_s(self) -> float: ...
    @property
    def log_level(self) -> str: ...


def create_processor_app(bootstrap: str, settings: ProcessorSettings) -> faust.App:
    """`create_app` configured from a processor's settings."""
    return create_app(
        settings.app_id,
        bootstrap=bootstrap,
        data_dir=settings.data_dir,
        web_port=settings.web_port,
        session_timeout_s=settings.session_timeout_s,
        commit_interval_s=settings.commit_interval_s,
        replication_factor=settings.replication_factor,
        start_from=settings.start_from,
        group_instance_id=settings.group_instance_id,
    )


def leader_topic(app_id: str) -> Topic:
    """Faust's leader-election topic of an app."""
    return Topic(f"{app_id}-__assignor-__leader", partitions=1, doc="faust leader election")


def changelog_topic(app_id: str, table: str, partitions: int) -> Topic:
    """The changelog topic faust uses for `table` (compacted, as faust would make it)."""
    return Topic(
        f"{app_id}-{table}-changelog",
        partitions=partitions,
        config=MappingProxyType({"cleanup.policy": "compact"}),
        doc=f"changelog of the faust table {table!r}",
    )


def prepare_topics(
    bootstrap: str, wanted: tuple[Topic, ...], *, replication_factor: int, timeout_s: float = 60.0
) -> None:
    """Create a processor's own topics and wait until every partition has a leader.

    Faust can create them itself, but a topic created while the worker starts is
    sometimes seen with no partitions by its producer, whose sends to it then never
    complete; created and settled beforehand, it is always there.
    """

    async def run() -> None:
        await ensure_topics(bootstrap, wanted, replication_factor=replication_factor)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="tollway-faust-prep")
        await admin.start()
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                described = await admin.describe_topics([t.name for t in wanted])
                ready = {
                    d["topic"]
                    for d in described
                    if d["error_code"] == 0
                    and len(d["partitions"]) >= 1
                    and all(p["leader"] >= 0 for p in d["partitions"])
                }
                if ready >= {t.name for t in wanted}:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"topics not ready: {sorted({t.name for t in wanted} - ready)}"
                    )
                await asyncio.sleep(0.5)
        finally:
            await admin.close()

    asyncio.run(run())


def changelog_record(
    topic: str, partition: int, key: str, value: dict[str, Any] | None
) -> Outgoing:
    """A table write as faust's changelog holds it (json key and value; None deletes).

    Written by us rather than by `table[key] = value`: faust would pick the changelog
    partition of the stream's *current* event (in a batch, maybe another partition's)
    and queue every write through its one-at-a-time producer buffer.
    """
    payload = None if value is None else json.dumps(value, separators=(",", ":")).encode()
    return topic, json.dumps(key).encode(), payload, None, partition


class ChangelogTable:
    """A faust table whose writes are sent by the caller, batched, to a chosen partition.

    Reads come from faust's in-memory store (restored from the changelog at start);
    `write`/`delete` update the store and return the changelog records to publish
    with the rest of the batch (`send_all`) before the batch is acked.
    """

    def __init__(self, app: faust.App, name: str, partitions: int, app_id: str) -> None:
        self.table = app.Table(name, default=None, partitions=partitions)
        self.changelog = changelog_topic(app_id, name, partitions).name

    def read(self, key: str) -> dict[str, Any] | None:
        value: dict[str, Any] | None = self.table.data.get(key)
        return value

    def keys(self) -> list[str]:
        return list(self.table.data)

    def write(self, partition: int, writes: dict[str, dict[str, Any]]) -> list[Outgoing]:
        for key, value in writes.items():
            self.table.data[key] = value
        return [changelog_record(self.changelog, partition, k, v) for k, v in writes.items()]

    def delete(self, partition: int, key: str) -> Outgoing:
        self.table.data.pop(key, None)
        return changelog_record(self.changelog, partition, key, None)


def raw_topic(app: faust.App, topic: Topic) -> Any:
    """A Tollway topic (already created by `deploy.topics`) whose events carry raw bytes."""
    return app.topic(
        topic.name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=topic.partitions,
    )


def internal_topic(app: faust.App, name: str, partitions: int) -> Any:
    """A topic private to one processor (faust creates it on start)."""
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
        internal=True,
    )


def fatal(what: str, exc: BaseException) -> NoReturn:
    """Stop NOW, without acking or committing: the uncommitted input is processed again.

    An exception must not escape an agent's `take_events` loop: faust would close the
    generator, whose `finally` acks the batch that was not processed, and commit it.
    """
    log.critical("%s: %r; exiting so the batch is redelivered", what, exc, exc_info=exc)
    logging.shutdown()
    os._exit(EXIT_UNRECOVERABLE)


def abandon(what: str) -> NoReturn:
    """Stopped (SIGTERM, rebalance cancel) in the middle of a batch: leave without acking.

    faust would ack the interrupted batch when its `take_events` generator is closed and
    commit it on the way out; exiting here leaves it to be processed again (duplicates
    are harmless downstream, a lost batch is not).
    """
    log.warning("%s: cancelled mid-batch; exiting so the batch is redelivered", what)
    logging.shutdown()
    os._exit(0)


async def settle(futures: Iterable[Awaitable[Any]], what: str) -> None:
    """Wait until Kafka acknowledged every write; a producer stuck that long is fatal."""
    try:
        async with asyncio.timeout(SETTLE_TIMEOUT_S):
            await asyncio.gather(*futures)
    except TimeoutError as exc:
        fatal(f"{what} not acknowledged within {SETTLE_TIMEOUT_S:.0f}s", exc)


async def send_all(app: faust.App, outgoing: Sequence[Outgoing]) -> None:
    """Publish every record through the app's producer and wait until Kafka has them all.

    A failed send is retried with the whole batch (a record may be written twice:
    harmless, each carries its idempotency key), then the process stops unacked.
    """
    delay_s = 0.2
    for attempt in range(1, _SEND_ATTEMPTS + 1):
        try:
            futures = [
                await app.producer.send(topic, key, value, partition, None, headers)
                for topic, key, value, headers, partition in outgoing
            ]
            async with asyncio.timeout(SETTLE_TIMEOUT_S):
                await asyncio.gather(*futures)
        except TimeoutError as exc:
            fatal(f"a batch of {len(outgoing)} records not acknowledged", exc)
        except (KafkaError, ProducerSendError) as exc:
            if attempt == _SEND_ATTEMPTS:
                fatal("could not publish a batch", exc)
            log.warning("publish failed (%r), retry %d in %.1fs", exc, attempt, delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 5.0)
        else:
            return


def dead_letter(event: Any, exc: DeadLetter) -> Outgoing:
    """The dead-letter record of an event no retry can fix (the reason in headers)."""
    message = event.message
    source = source_of(message.topic, message.partition, message.offset)
    log.error("dead letter from %s: %s", source, exc)
    headers = dead_letter_headers(source, exc)
    return topics.DEAD_LETTERS.name, message.key, message.value or b"", headers, None


def _bootstrap_of(app: faust.App) -> str:
    """The app's brokers as `host:port[,host:port]`."""
    return ",".join(f"{url.host}:{url.port}" for url in app.conf.broker)


@dataclass(frozen=True)
class FilledEvent:
    """A record the gate read from Kafka itself (faust failed to deliver it): what a
    handler uses of a faust event (`value`, `message.topic/partition/offset/key/value`)."""

    message: Message

    @property
    def value(self) -> bytes | None:
        return self.message.value


class DeliveryGate:
    """Runs every batch of one agent through a `DeliveryCursor` (workers/delivery.py).

    Wiring only: the committed offsets a cursor starts from (one admin request per
    partition and consumer generation), and the records faust failed to deliver,
    read from Kafka with a plain consumer and handed to the handler in their place,
    then acked to faust's consumer like its own (so its commit moves past them only
    once they are handled). A gap that cannot be filled within `FILL_TIMEOUT_S`
    stops the process unacked: the restart resumes at the committed offset.
    """

    def __init__(self, app: faust.App, what: str) -> None:
        self.app = app
        self.what = what
        self.cursor = DeliveryCursor()
        self.filled = 0
        """Records filled in so far (each one a record faust did not deliver)."""

    async def admit(self, events: Sequence[Any]) -> tuple[list[Any], list[Message]]:
        """(the events to handle, each partition's in offset order; the filled-in
        messages to ack once they are handled)."""
        generations = {e.message.generation_id for e in events} - {None}
        if generations:
            self.cursor.begin(max(generations))
        by_key: dict[Key, list[Any]] = {}
        ready: list[Any] = []
        for event in events:
            message = event.message
            if self.cursor.is_current(message.generation_id):
                by_key.setdefault((message.topic, message.partition), []).append(event)
            else:  # stale generation: faust reads it again from the committed offset
                ready.append(event)
        new = [key for key in by_key if not self.cursor.started(key)]
        committed = await self._committed(new) if new else {}
        filled: list[Message] = []
        for key, part_events in by_key.items():
            if not self.cursor.started(key):
                first = min(e.message.offset for e in part_events)
                self.cursor.start(key, committed=committed.get(key), first_offset=first)
            pending: list[Any] = part_events
            while True:
                admission = self.cursor.admit(key, [e.message.offset for e in pending])
                ready.extend(pending[i] for i in admission.take)
                if admission.gap is None:
                    break
                messages = await self._fill(key, admission.gap)
                filled.extend(messages)
                pending = [FilledEvent(m) for m in messages] + [pending[i] for i in admission.hold]
        return ready, filled

    async def _fill(self, key: Key, gap: tuple[int, int]) -> list[Message]:
        topic, partition = key
        log.warning(
            "%s: %s/%d offsets %d..%d were not delivered; reading them from Kafka",
            self.what,
            topic,
            partition,
            gap[0],
            gap[1] - 1,
        )
        records = await self._read(key, gap)
        if not is_complete([r.offset for r in records], gap):
            fatal(
                f"{self.what}: {topic}/{partition} offsets {gap[0]}..{gap[1] - 1} missing",
                LookupError(f"read {len(records)} of {gap[1] - gap[0]} records"),
            )
        self.filled += len(records)
        return [
            Message(
                r.topic,
                r.partition,
                r.offset,
                r.timestamp / 1000,
                r.timestamp_type,
                list(r.headers),
                r.key,
                r.value,
                None,
                generation_id=self.cursor.generation,
            )
            for r in records
        ]

    async def _read(self, key: Key, gap: tuple[int, int]) -> list[Any]:
        """The records of `key` at offsets [gap), read with a group-less consumer."""
        tp = TopicPartition(*key)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=_bootstrap_of(self.app),
            client_id=f"{self.app.conf.id}-delivery",
            enable_auto_commit=False,
        )
        records: list[Any] = []
        deadline = time.monotonic() + FILL_TIMEOUT_S
        try:
            await consumer.start()
            consumer.assign([tp])
            consumer.seek(tp, gap[0])
            while len(records) < gap[1] - gap[0] and time.monotonic() < deadline:
                fetched = await consumer.getmany(tp, timeout_ms=500)
                batch = fetched.get(tp, [])
                records.extend(r for r in batch if r.offset < gap[1])
                if any(r.offset >= gap[1] for r in batch):
                    break
        except (KafkaError, OSError) as exc:
            log.warning("%s: reading %s/%d failed: %r", self.what, *key, exc)
        finally:
            await consumer.stop()
        return records

    async def _committed(self, keys: list[Key]) -> dict[Key, int]:
        """The group's committed offsets of `keys` (absent: none committed, or unknown)."""
        admin = AIOKafkaAdminClient(
            bootstrap_servers=_bootstrap_of(self.app), client_id=f"{self.app.conf.id}-delivery"
        )
        try:
            await admin.start()
            found = await admin.list_consumer_group_offsets(
                self.app.conf.id, partitions=[TopicPartition(t, p) for t, p in keys]
            )
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning(
                "%s: committed offsets unknown (%r): a record missing before the first "
                "one delivered would go unnoticed",
                self.what,
                exc,
            )
            return {}
        finally:
            await admin.close()
        return {
            (tp.topic, tp.partition): meta.offset for tp, meta in found.items() if meta.offset >= 0
        }


BatchHandler = Callable[[Sequence[Any]], Awaitable[None]]
"""Processes one batch of events; returns once every effect of the batch is in Kafka."""


def batch_agent(
    app: faust.App,
    channel: Any,
    *,
    name: str,
    settings: ProcessorSettings,
    handle: BatchHandler,
    what: str,
    slow_log: logging.Logger | None = None,
    slow_s: float = 0.5,
) -> None:
    """Add agent `name`: `handle` each batch of `channel`'s events, then let faust ack it.

    Batches hold at most `settings.batch_max` events and wait at most
    `settings.batch_within_s` to fill (faust is slow per event). `handle` gets only
    the events a `DeliveryGate` lets through: each partition's next offsets, in order,
    never one beyond a missing record. A batch that raises or is cancelled is never
    acked (`fatal` / `abandon`: the process exits and the batch is processed again).
    With `slow_log`, a batch taking over `slow_s` seconds is logged there (it delays
    everything downstream).
    """
    gate = DeliveryGate(app, what)
    metrics = stream_metrics()
    handled, duration = metrics.events.labels(name), metrics.batch_duration.labels(name)

    async def process_batches(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            started = time.perf_counter()
            try:
                ready, filled = await gate.admit(events)
                if ready:
                    await handle(ready)
                for message in filled:  # faust's own events are acked by take_events
                    app.consumer.ack(message)
            except asyncio.CancelledError:
                abandon(what)
            except Exception as exc:  # noqa: BLE001  # any bug: stop without acking the batch
                fatal(f"{what} failed", exc)
            took_s = time.perf_counter() - started
            handled.inc(len(events))
            duration.observe(took_s)
            if slow_log is not None and took_s > slow_s:
                slow_log.warning("slow batch (%s): %d events took %.2fs", what, len(events), took_s)

    app.agent(channel, name=name)(process_batches)


def run_worker(app: faust.App, *, loglevel: str = "INFO") -> None:
    """Run `app` in this process until SIGTERM/SIGINT (uvloop: faust is event-bound).

    Logging already set up by the process (deploy/cli.py: the JSON or text format of
    workers/telemetry/logs.py) is kept; faust installs its own only when there is none."""
    configured = bool(logging.getLogger().handlers)
    if configured:
        logging.getLogger().setLevel(loglevel)
    worker = faust.Worker(
        app,
        loglevel=loglevel,
        quiet=True,
        loop=uvloop.new_event_loop(),
        override_logging=not configured,
    )
    if configured:
        worker.spinner = None  # it draws on stdout between log lines (terminal escapes)
    worker.execute_from_commandline()


def run_processor(
    bootstrap: str,
    settings: ProcessorSettings,
    build: Callable[[], faust.App],
    *,
    own_topics: tuple[Topic, ...] = (),
) -> None:
    """Prepare the processor's topics (its leader topic and `own_topics`), then build its
    app and run it in this process until SIGTERM/SIGINT."""
    prepare_topics(
        bootstrap,
        (leader_topic(settings.app_id), *own_topics),
        replication_factor=settings.replication_factor,
    )
    run_worker(build(), loglevel=settings.log_level)
