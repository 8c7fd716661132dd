"""The ingress's Kafka adapter: durable publish, sync replies, result lookup.

    out: tollway.requests.interactive  (idempotent producer, acks=all; keyed by request id,
         or by team id for a team with a hard budget (docs/decisions/0009) or a rate limit
         on the team or the request's key (docs/decisions/0014))
    in:  tollway.replies, one partition chosen at start (sync replies for this replica)
    in:  tollway.results, every partition from the start (index async request_id -> offset)

Replies: each ingress replica reads one partition of `tollway.replies`, picked
at random when it starts, and tells routers that partition in each sync
envelope. Two replicas may share a partition; each ignores replies it is not
waiting for. Reading starts at the end, before the first request is accepted.

Results index: `GET /v1/async/requests/{id}` needs the result of any request,
so every replica keeps `request_id -> offset` for `tollway.results` (the
partition follows from the key) and fetches the record on demand. Only async requests
are indexed (the router's `tollway-mode` header; a record without it is indexed): sync
answers went to their caller and batch lines are read through the batch's output file,
and indexing them tripled the index's growth (the third memory soak,
docs/reliability.md). Memory is bounded by `result_index_max` (~220 bytes an entry);
the FIRST result per id wins, the same rule as every other sink. Readiness waits
until the index has caught up with the end offsets seen at start, so a finished
request is never reported as queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import OrderedDict
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from ingress.bus import ReplyWaiters
from schemas import codec, topics
from schemas.errors import CorruptRecord, ServiceUnavailable
from schemas.kafka_partitioner import KeyPartitioner, partition_for_key
from schemas.records import RequestEnvelope, Result
from schemas.settings import KafkaSettings
from workers.producer_renewal import RenewableProducer
from workers.router.rate_limits import is_rate_limited
from workers.telemetry.logs import bind_request_id
from workers.telemetry.tracing import inject_headers, start_span
from workers.tenancy.model import TenancyView

log = logging.getLogger("tollway.ingress.kafka")


def _pollable(headers: Sequence[tuple[str, bytes]] | None) -> bool:
    """A result GET /v1/async/requests/{id} may ask for: async, or of unknown mode."""
    for name, value in headers or ():
        if name == topics.RESULT_MODE_HEADER:
            return value == b"async"
    return True


def request_key(envelope: RequestEnvelope) -> bytes:
    """The default key of a request: its id, so load spreads over the router group (0004).
    With hard budgets, `workers.budget.ownership.Ownership` keys a team's requests by team
    instead (0009), passed in as `key_of`."""
    return envelope["request_id"].encode()


class KafkaBus(ReplyWaiters):
    """`Bus` over Kafka. Clients are created in `start()` (none exist before it)."""

    _producers: RenewableProducer
    _replies: AIOKafkaConsumer
    _results: AIOKafkaConsumer
    _fetcher: AIOKafkaConsumer

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        client_id: str,
        result_index_max: int,
        key_of: Callable[[RequestEnvelope], bytes] | None = None,
        tenancy: TenancyView | None = None,
    ) -> None:
        super().__init__()
        self._key_of = key_of or request_key
        self._tenancy = tenancy  # None: no rate limits, keys as `key_of` says
        self._kafka = kafka
        self._client_id = client_id
        self._index_max = result_index_max
        self._reply_partition = random.randrange(topics.REPLIES.partitions)  # noqa: S311 - load spreading, not security
        self._index: OrderedDict[bytes, int] = OrderedDict()
        self._index_caught_up = False
        self._broker_ok = False
        self._started = False
        self._result_partitions = list(range(topics.RESULTS.partitions))
        self._fetch_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def producer(self) -> AIOKafkaProducer:
        """The current producer (a new one after a loss of idempotence state)."""
        return self._producers.current

    @property
    def reply_partition(self) -> int:
        return self._reply_partition

    async def start(self) -> None:
        common = {"bootstrap_servers": self._kafka.bootstrap, "client_id": self._client_id}
        # Replaced, not retried, when the broker lost its idempotence state (0021).
        self._producers = RenewableProducer(
            lambda: AIOKafkaProducer(
                **common,
                enable_idempotence=True,
                acks="all",
                linger_ms=0,  # measured: linger 2 ms adds ~2.8 ms per hop; load batches anyway
                # A team with a hard budget is one partition (0009): a burst of its requests
                # queues behind one in-flight request per broker; 16 KiB batches (the default)
                # made 1,000 at once take ~12 s here, 256 KiB ~1.3 s.
                max_batch_size=256 * 1024,
                max_request_size=topics.REQUEST_RECORD_MAX_BYTES,
                partitioner=KeyPartitioner(),  # Kafka's murmur2, at half aiokafka's cost (0012)
                request_timeout_ms=self._kafka.request_timeout_ms,
            )
        )
        self._replies = AIOKafkaConsumer(**common, enable_auto_commit=False, group_id=None)
        self._results = AIOKafkaConsumer(
            **common, enable_auto_commit=False, group_id=None, auto_offset_reset="earliest"
        )
        self._fetcher = AIOKafkaConsumer(
            **common, enable_auto_commit=False, group_id=None, auto_offset_reset="earliest"
        )
        await self.producer.start()
        for consumer in (self._replies, self._results, self._fetcher):
            await consumer.start()
        reply_tp = TopicPartition(topics.REPLIES.name, self._reply_partition)
        self._replies.assign([reply_tp])
        await self._replies.seek_to_end(reply_tp)
        await self._replies.position(reply_tp)  # resolve the end offset now, before accepting
        result_tps = [TopicPartition(topics.RESULTS.name, p) for p in self._result_partitions]
        self._results.assign(result_tps)
        await self._results.seek_to_beginning(*result_tps)
        end_offsets = await self._results.end_offsets(result_tps)
        self._tasks = [
            asyncio.create_task(self._consume_replies()),
            asyncio.create_task(self._consume_results(end_offsets)),
            asyncio.create_task(self._watch_broker(result_tps[:1])),
        ]
        self._broker_ok = True
        self._started = True

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.producer.stop()
        for consumer in (self._replies, self._results, self._fetcher):
            await consumer.stop()

    def ready(self) -> bool:
        return self._index_caught_up and self._broker_ok

    async def publish(self, topic: str, envelope: RequestEnvelope) -> None:
        """Write and wait for acks=all. On failure or after the request timeout: 503.

        A send that timed out may still land later; the client was told 503 (not
        accepted) and the router may execute it anyway. That direction is safe: a
        2xx is never given for work that was not durably written.
        """
        if not self._started:
            raise ServiceUnavailable("Kafka is not connected yet: the request was not accepted.")
        value = codec.encode("request", envelope)
        bind_request_id(envelope["request_id"])  # this request's task logs with its id
        # The trace context rides in the record's headers (workers/telemetry/tracing.py).
        attributes = {
            "messaging.destination.name": topic,
            "tollway.request_id": envelope["request_id"],
        }
        producer = self.producer
        with start_span(f"publish {topic}", kind="producer", attributes=attributes):
            try:
                # One timeout scope, no extra task per request (send_and_wait under wait_for).
                async with asyncio.timeout(self._kafka.request_timeout_ms / 1000):
                    ack = await producer.send(
                        topic, value, key=self.partition_key(envelope), headers=inject_headers()
                    )
                    await ack
            except (KafkaError, TimeoutError) as exc:
                # This request gets 503; after a lost producer state the next get a new one.
                await self._producers.renew_if_lost(producer, exc)
                raise ServiceUnavailable(
                    "The request could not be written to Kafka and was not accepted; retry later.",
                    retry_after_s=1,
                ) from exc

    def partition_key(self, envelope: RequestEnvelope) -> bytes:
        """The team id when the team or the request's key has a rate limit, so the one
        router owning that partition counts all of them (0014); else `key_of`."""
        tenancy = self._tenancy
        if tenancy is not None and is_rate_limited(
            tenancy, envelope["team_id"], envelope["key_id"]
        ):
            return envelope["team_id"].encode()
        return self._key_of(envelope)

    def has_result(self, request_id: str) -> bool:
        """True once `request_id` is in the results index (no I/O; ingress/queue_limit.py)."""
        return request_id.encode() in self._index

    async def lookup(self, request_id: str) -> Result | None:
        key = request_id.encode()
        offset = self._index.get(key)
        if offset is None:
            return None
        partition = partition_for_key(key, len(self._result_partitions))
        tp = TopicPartition(topics.RESULTS.name, partition)
        async with self._fetch_lock:
            self._fetcher.assign([tp])
            self._fetcher.seek(tp, offset)
            batch = await self._fetcher.getmany(tp, timeout_ms=5_000, max_records=1)
        for record in batch.get(tp, []):
            if record.key == key and record.value is not None:
                return codec.decode("result", record.value)
        return None  # aged out of Kafka's retention

    async def _watch_broker(self, probe: list[TopicPartition]) -> None:
        """Readiness follows a real broker round trip every 2 s."""
        while True:
            await asyncio.sleep(2.0)
            try:
                async with self._fetch_lock:
                    async with asyncio.timeout(2.0):
                        await self._fetcher.end_offsets(probe)
            except (KafkaError, TimeoutError):
                self._broker_ok = False
            else:
                self._broker_ok = True

    async def _consume_replies(self) -> None:
        """Results and stream chunks for this replica's waiters; others are skipped unread."""
        while True:
            batch = await self._replies.getmany(timeout_ms=1_000)
            for records in batch.values():
                for record in records:
                    if not record.key or not self.waiting(record.key.decode()):
                        continue
                    value = record.value or b""
                    try:
                        if codec.record_name(value) == "stream_chunk":
                            self.push_chunk(codec.decode("stream_chunk", value))
                        else:
                            self.resolve(codec.decode("result", value))
                    except CorruptRecord:
                        log.exception("undecodable reply at offset %s", record.offset)

    async def _consume_results(self, end_offsets: dict[TopicPartition, int]) -> None:
        pending = {tp: end for tp, end in end_offsets.items() if end > 0}
        self._index_caught_up = not pending
        while True:
            batch = await self._results.getmany(timeout_ms=500, max_records=10_000)
            for tp, records in batch.items():
                for record in records:
                    if record.key is None or not _pollable(record.headers):
                        continue
                    if record.key not in self._index:
                        self._index[record.key] = record.offset
                        if len(self._index) > self._index_max:
                            self._index.popitem(last=False)
                if records and tp in pending and records[-1].offset + 1 >= pending[tp]:
                    del pending[tp]
            if not self._index_caught_up:
                for tp in list(pending):
                    if await self._results.position(tp) >= pending[tp]:
                        del pending[tp]
                self._index_caught_up = not pending
