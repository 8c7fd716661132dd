"""tollway.cache: every router's answers, shared; each router's bounded copy of them.

    in:  tollway.cache, every partition from the start (no group; workers/topic_follower.py)
    out: tollway.cache, one record per stored answer, key `<scope>/<sha256>`, value schema
         `cache_entry` (acks=all, idempotent producer, not awaited by the request)

Guarantee: best effort, by design. An answer is served from the local cache at once;
its record reaches the other routers within the follower's poll interval. A record
lost (producer failure) or not yet read only costs a miss. Each router admits what it
reads into its own `ResponseCache`, whose bounds (entries, bytes) and per-entry expiry
hold whatever the topic contains; expired records are skipped on read. The topic is
compacted (one record per key) with a 7-day delete retention, the TTL's upper bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas import codec, topics
from schemas.errors import CorruptRecord
from schemas.records import CacheEntryRecord
from schemas.settings import KafkaSettings
from workers.cache.cache import ResponseCache
from workers.cache.store import CachedAnswer
from workers.topic_follower import TopicFollower

log = logging.getLogger("tollway.cache")


def to_record(answer: CachedAnswer) -> CacheEntryRecord:
    return {
        "key": answer.key,
        "scope": answer.scope,
        "model": answer.model,
        "semantic_scope": answer.semantic_scope,
        "embedding": answer.embedding,
        "embedder": answer.embedder,
        "semantic_guard": answer.semantic_guard,
        "body": answer.body,
        "provider": answer.provider,
        "upstream_model": answer.upstream_model,
        "served_model": answer.served_model,
        **answer.usage,
        "created_at_ms": answer.created_at_ms,
        "expires_at_ms": answer.expires_at_ms,
    }


def from_record(record: CacheEntryRecord) -> CachedAnswer:
    return CachedAnswer(
        key=record["key"],
        scope=record["scope"],
        model=record["model"],
        body=record["body"],
        provider=record["provider"],
        upstream_model=record["upstream_model"],
        served_model=record["served_model"],
        usage={
            "prompt_tokens": record["prompt_tokens"],
            "completion_tokens": record["completion_tokens"],
            "cached_tokens": record["cached_tokens"],
            "reasoning_tokens": record["reasoning_tokens"],
            "cache_write_tokens": record["cache_write_tokens"],
        },
        created_at_ms=record["created_at_ms"],
        expires_at_ms=record["expires_at_ms"],
        semantic_scope=record["semantic_scope"],
        embedding=record["embedding"],
        embedder=record["embedder"],
        semantic_guard=record["semantic_guard"],
    )


class KafkaCacheSync:
    """Publishes this router's answers and admits every router's into `cache`."""

    _producer: AIOKafkaProducer

    def __init__(
        self,
        kafka: KafkaSettings,
        cache: ResponseCache,
        *,
        clock_ms: Callable[[], int],
        purge_interval_s: float = 30.0,
        client_id: str = "tollway-router-cache",
    ) -> None:
        self._kafka = kafka
        self.cache = cache
        self.clock_ms = clock_ms
        self._purge_interval_s = purge_interval_s
        self._client_id = client_id
        self.follower = TopicFollower(
            kafka,
            [topics.CACHE],
            self._on_record,
            client_id=client_id,
            name="cache-index",
            max_partition_fetch_bytes=2 * topics.CACHE_RECORD_MAX_BYTES,
        )
        self._purger: asyncio.Task[None] | None = None
        self.read = 0
        self.skipped = 0
        self.publish_failures = 0

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._kafka.bootstrap,
            client_id=self._client_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,  # entries are not awaited: let them batch
            max_request_size=topics.CACHE_RECORD_MAX_BYTES,
            request_timeout_ms=self._kafka.request_timeout_ms,
        )
        await self._producer.start()
        await self.follower.start()
        self._purger = asyncio.create_task(self._purge_forever(), name="cache-purge")

    async def stop(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
        await self.follower.stop()
        with contextlib.suppress(KafkaError):
            await self._producer.flush()
        await self._producer.stop()

    def ready(self) -> bool:
        return self.follower.ready()

    async def publish(self, answer: CachedAnswer) -> None:
        """Queue `answer`'s record; delivery is not awaited (a failure is logged)."""
        value = codec.encode("cache_entry", to_record(answer))
        if len(value) > topics.CACHE_RECORD_MAX_BYTES:
            return
        try:
            delivery = await self._producer.send(topics.CACHE.name, value, key=answer.key.encode())
        except KafkaError as exc:
            self._failed(exc)
            return
        delivery.add_done_callback(self._delivered)

    def _delivered(self, delivery: asyncio.Future[Any]) -> None:
        if not delivery.cancelled() and delivery.exception() is not None:
            self._failed(delivery.exception())

    def _failed(self, exc: BaseException | None) -> None:
        self.publish_failures += 1
        if self.publish_failures % 100 == 1:
            log.warning("cache entry not published (%r); %d so far", exc, self.publish_failures)

    def _on_record(self, record: Any) -> None:
        if record.value is None:
            return
        try:
            answer = from_record(codec.decode("cache_entry", record.value))
        except CorruptRecord:
            log.exception("undecodable cache entry at %s:%s", record.partition, record.offset)
            return
        self.read += 1
        now = self.clock_ms()
        held = self.cache.store.peek(answer.key)
        if held is not None and held.created_at_ms == answer.created_at_ms:
            return  # our own record read back (or a duplicate): already held
        if not answer.live(now) or not self.cache.admit(answer, now):
            self.skipped += 1

    async def _purge_forever(self) -> None:
        while True:
            await asyncio.sleep(self._purge_interval_s)
            self.cache.purge(self.clock_ms())
