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
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from ingress.idempotency import Entry, store_key
from ingress.idempotency_middleware import IdempotencySettings
from schemas import codec, topics
from schemas.errors import CorruptRecord, ServiceUnavailable
from schemas.records import IdempotencyEntryRecord
from schemas.settings import KafkaSettings
from workers.topic_follower import TopicFollower

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
    _fetcher: AIOKafkaConsumer

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
        self._started = False
        self._fetch_lock = asyncio.Lock()
        self._next_purge_ms = 0
        self._follower = TopicFollower(
            kafka,
            (_TOPIC,),
            self._on_record,
            client_id=client_id,
            name="idempotency-index",
            max_partition_fetch_bytes=2 * _MAX_RECORD_BYTES,
            after_poll=self._after_poll,
        )

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
        self._fetcher = AIOKafkaConsumer(
            **common,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=2 * _MAX_RECORD_BYTES,
        )
        await self._producer.start()
        await self._fetcher.start()
        await self._follower.start()
        self._started = True

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        await self._follower.stop()
        await self._fetcher.stop()
        await self._producer.stop()

    def ready(self) -> bool:
        """True once every record present at start has been indexed."""
        return self._follower.ready()

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
            async with asyncio.timeout(self._kafka.request_timeout_ms / 1000):
                metadata = await self._producer.send_and_wait(
                    _TOPIC.name, value, key=name.encode(), partition=partition
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
        try:
            async with asyncio.timeout(self.settings.catch_up_timeout_s):
                await self._follower.catch_up([self._tps[partition]])
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

    def _on_record(self, record: Any) -> None:
        if record.key is None or record.value is None:
            return
        try:
            entry = codec.decode("idempotency_entry", record.value)
        except CorruptRecord:
            log.exception("undecodable idempotency entry at offset %s", record.offset)
            return
        self._apply(
            record.key.decode(errors="replace"),
            _Indexed(
                entry["request_hash"], entry["created_at_ms"], entry["expires_at_ms"], record.offset
            ),
        )

    def _after_poll(self) -> None:
        now = self.clock_ms()
        if now >= self._next_purge_ms:
            self._purge(now)
            self._next_purge_ms = now + 60_000
