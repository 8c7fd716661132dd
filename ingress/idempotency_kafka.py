"""`IdempotencyStore` over Kafka, shared by every ingress replica.

    in:  tollway.idempotency, every partition from the start (no group): the index
    out: tollway.idempotency, one entry per finished keyed request (acks=all), keyed
         `<team>/<key>`, value schema `idempotency_entry`

Every replica indexes the whole topic: per key the request hash, expiry and the
record's offset (~200 bytes), not the response; a replay fetches the record by
offset (a replay is a retry: rare). The index keeps the FIRST unexpired record of a
key in log order, so every replica that read the same records agrees.

`lookup` of a key the index does not hold first reads the key's partition up to its
current end offset (bounded by `catch_up_timeout_s`, else 503): a key finished
through another replica a moment ago is found. `save` does the same, then writes only
if the key is still free. Two replicas that both start a new key at the same moment
both run it (claims are per replica); the first record in the log is the one kept
(compaction keeps the last record of a key, so a replica that starts after such a
race and after compaction may keep the second one instead: both are answers to the
same request). The topic is `compact,delete` with a 48 h retention: entries leave by
themselves; readers also drop them at their `expires_at_ms`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from ingress.idempotency import Entry, store_key
from ingress.idempotency_middleware import IdempotencySettings
from schemas import codec, topics
from schemas.errors import CorruptRecord, ServiceUnavailable
from schemas.records import IdempotencyEntryRecord
from schemas.settings import KafkaSettings

log = logging.getLogger("tollway.ingress.idempotency")

_TOPIC: Final = topics.IDEMPOTENCY
_PARTITIONS: Final = list(range(_TOPIC.partitions))
_MAX_RECORD_BYTES: Final = 2 * 1024 * 1024  # == the topic's max.message.bytes


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class _Indexed(NamedTuple):
    """Where a key's kept entry is, and what deciding on it needs without fetching it."""

    request_hash: bytes
    created_at_ms: int
    expires_at_ms: int
    offset: int


def partition_of(name: str) -> int:
    partition: int = DefaultPartitioner()(name.encode(), _PARTITIONS, _PARTITIONS)
    return partition


def to_record(entry: Entry) -> IdempotencyEntryRecord:
    return {
        "team_id": entry.team_id,
        "key": entry.key,
        "request_hash": entry.request_hash,
        "status": entry.status,
        "headers": [[n, v] for n, v in entry.headers],
        "body": entry.body,
        "body_bytes": entry.body_bytes,
        "created_at_ms": entry.created_at_ms,
        "expires_at_ms": entry.expires_at_ms,
    }


def from_record(record: IdempotencyEntryRecord) -> Entry:
    return Entry(
        team_id=record["team_id"],
        key=record["key"],
        request_hash=record["request_hash"],
        status=record["status"],
        headers=tuple((n, v) for n, v in record["headers"]),
        body=record["body"],
        body_bytes=record["body_bytes"],
        created_at_ms=record["created_at_ms"],
        expires_at_ms=record["expires_at_ms"],
    )


def keeps(current: _Indexed | None, candidate: _Indexed) -> bool:
    """Whether `candidate` replaces `current` for the same key: the first unexpired
    record in log order wins (an expired one gives way to anything written after it)."""
    if current is None or current.offset == candidate.offset:
        return current is None
    if current.expires_at_ms <= candidate.created_at_ms:
        return candidate.offset > current.offset  # a new life of the key after expiry
    return candidate.offset < current.offset  # racing writers: the earlier record wins


class KafkaIdempotencyStore:
    """`IdempotencyStore` over tollway.idempotency. Clients are created in `start()`."""

    _producer: AIOKafkaProducer
    _follower: AIOKafkaConsumer
    _fetcher: AIOKafkaConsumer
    _offsets: AIOKafkaConsumer

    def __init__(
        self,
        kafka: KafkaSettings,
        settings: IdempotencySettings,
        *,
        client_id: str = "tollway-ingress-idempotency",
        clock_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self._kafka = kafka
        self.settings = settings
        self._client_id = client_id
        self.clock_ms = clock_ms
        self.index: OrderedDict[str, _Indexed] = OrderedDict()
        self.evicted = 0
        self._tps = [TopicPartition(_TOPIC.name, p) for p in _PARTITIONS]
        self._caught_up = False
        self._started = False
        self._task: asyncio.Task[None] | None = None
        self._fetch_lock = asyncio.Lock()
        self._tick = asyncio.Event()  # set (and replaced) after every read of the follower

    async def start(self) -> None:
        common = {"bootstrap_servers": self._kafka.bootstrap, "client_id": self._client_id}
        self._producer = AIOKafkaProducer(
            **common,
            enable_idempotence=True,
            acks="all",
            linger_ms=0,
            max_request_size=_MAX_RECORD_BYTES,
            request_timeout_ms=self._kafka.request_timeout_ms,
        )
        consumer_options = {
            **common,
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_partition_fetch_bytes": 2 * _MAX_RECORD_BYTES,
        }
        self._follower = AIOKafkaConsumer(**consumer_options)
        self._fetcher = AIOKafkaConsumer(**consumer_options)
        # End offsets are asked on a client of their own: a broker answers the requests of
        # one connection in order, so behind the follower's long-polling fetch (up to
        # 500 ms) they would wait for it. Measured: ~500 ms per new key, ~2 ms apart.
        self._offsets = AIOKafkaConsumer(**consumer_options)
        await self._producer.start()
        for consumer in (self._follower, self._fetcher, self._offsets):
            await consumer.start()
        self._follower.assign(self._tps)
        await self._follower.seek_to_beginning(*self._tps)
        ends = await self._follower.end_offsets(self._tps)
        self._task = asyncio.create_task(self._follow(ends), name="idempotency-index")
        self._started = True

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for consumer in (self._follower, self._fetcher, self._offsets):
            await consumer.stop()
        await self._producer.stop()

    def ready(self) -> bool:
        """True once every record present at start has been indexed."""
        return self._caught_up

    # --- IdempotencyStore ------------------------------------------------------------------

    async def lookup(self, team_id: str, key: str, now_ms: int) -> Entry | None:
        name = store_key(team_id, key)
        found = self._live(name, now_ms)
        if found is None:
            await self._catch_up(partition_of(name))
            found = self._live(name, now_ms)
        if found is None:
            return None
        return await self._fetch(name, found)

    async def save(self, entry: Entry) -> bool:
        name = store_key(entry.team_id, entry.key)
        partition = partition_of(name)
        await self._catch_up(partition)
        if self._live(name, entry.created_at_ms) is not None:
            return False
        value = codec.encode("idempotency_entry", to_record(entry))
        try:
            metadata = await asyncio.wait_for(
                self._producer.send_and_wait(
                    _TOPIC.name, value, key=name.encode(), partition=partition
                ),
                self._kafka.request_timeout_ms / 1000,
            )
        except (KafkaError, TimeoutError) as exc:
            raise ServiceUnavailable("The idempotency entry could not be written.") from exc
        indexed = _Indexed(
            entry.request_hash, entry.created_at_ms, entry.expires_at_ms, metadata.offset
        )
        self._apply(name, indexed)
        return True

    # --- the index -------------------------------------------------------------------------

    def _live(self, name: str, now_ms: int) -> _Indexed | None:
        found = self.index.get(name)
        return None if found is None or now_ms >= found.expires_at_ms else found

    def _apply(self, name: str, candidate: _Indexed) -> None:
        if not keeps(self.index.get(name), candidate):
            return
        self.index[name] = candidate
        self.index.move_to_end(name)
        if len(self.index) > self.settings.index_max:
            self.index.popitem(last=False)
            self.evicted += 1
            if self.evicted % 10_000 == 1:
                log.warning(
                    "idempotency index full (%d keys): %d unexpired keys forgotten so far; "
                    "raise TOLLWAY_IDEMPOTENCY_INDEX_MAX",
                    self.settings.index_max,
                    self.evicted,
                )

    def _purge(self, now_ms: int) -> None:
        """Drop expired keys from the front (the index is in order of last write)."""
        while self.index:
            name, oldest = next(iter(self.index.items()))
            if now_ms < oldest.expires_at_ms:
                return
            del self.index[name]

    async def _catch_up(self, partition: int) -> None:
        """Return once the index has read `partition` up to its end offset of now."""
        if not self._started:
            raise ServiceUnavailable("Kafka is not connected yet.", retry_after_s=1)
        tp = self._tps[partition]
        try:
            async with asyncio.timeout(self.settings.catch_up_timeout_s):
                end = (await self._offsets.end_offsets([tp]))[tp]
                while True:
                    tick = self._tick  # taken before the check: no wake-up is missed
                    if await self._follower.position(tp) >= end:
                        break
                    await tick.wait()
        except (KafkaError, TimeoutError) as exc:
            raise ServiceUnavailable(
                "Idempotency keys cannot be checked right now (Kafka); retry later.",
                retry_after_s=1,
            ) from exc

    async def _fetch(self, name: str, found: _Indexed) -> Entry | None:
        """The kept record, read back from Kafka at its offset."""
        tp = self._tps[partition_of(name)]
        key = name.encode()
        try:
            async with self._fetch_lock:
                self._fetcher.assign([tp])
                self._fetcher.seek(tp, found.offset)
                for _ in range(3):  # after compaction the record may sit a little further on
                    batch = await self._fetcher.getmany(tp, timeout_ms=5_000, max_records=50)
                    for record in batch.get(tp, []):
                        if record.key == key and record.value is not None:
                            return from_record(codec.decode("idempotency_entry", record.value))
        except (KafkaError, CorruptRecord) as exc:
            raise ServiceUnavailable(
                "The kept response of this Idempotency-Key could not be read; retry later.",
                retry_after_s=1,
            ) from exc
        return None

    async def _follow(self, ends: dict[TopicPartition, int]) -> None:
        pending = {tp: end for tp, end in ends.items() if end > 0}
        self._caught_up = not pending
        next_purge_ms = 0
        while True:
            try:
                batch = await self._follower.getmany(timeout_ms=500, max_records=5_000)
            except KafkaError as exc:
                log.warning("idempotency index: %r", exc)
                await asyncio.sleep(1.0)
                continue
            tick, self._tick = self._tick, asyncio.Event()
            for records in batch.values():
                for record in records:
                    if record.key is None or record.value is None:
                        continue
                    try:
                        entry = codec.decode("idempotency_entry", record.value)
                    except CorruptRecord:
                        log.exception("undecodable idempotency entry at offset %s", record.offset)
                        continue
                    self._apply(
                        record.key.decode(errors="replace"),
                        _Indexed(
                            entry["request_hash"],
                            entry["created_at_ms"],
                            entry["expires_at_ms"],
                            record.offset,
                        ),
                    )
            tick.set()
            if not self._caught_up:
                for tp in list(pending):
                    if await self._follower.position(tp) >= pending[tp]:
                        del pending[tp]
                self._caught_up = not pending
            now = self.clock_ms()
            if now >= next_purge_ms:
                self._purge(now)
                next_purge_ms = now + 60_000
