"""The tenancy config over Kafka: the view every service holds, and the admin's writer.

    in:  tollway.config.teams, .keys, .policies: every partition from the start, no group,
         read_committed (only changes whose transaction committed), into a TenancyStore
    out: tollway.config.* (the change) + tollway.audit (its event), one Kafka transaction
         per admin call (acks=all, idempotent producer), awaited before the API answers

`KafkaTenancyView` is ready once it has read every config topic up to the end offsets
it saw at start; after that a change written anywhere is applied within the poll
bound (250 ms) plus a fetch round trip: measured < 1 s end to end (tests/integration/
test_tenancy_config.py). A record that cannot be decoded but names a valid entity
removes that entity from the view (fail closed: a key whose record we cannot read must
not authenticate) and is logged with its offset, never its content.

`KafkaConfigWriter` commits the config records and the audit events of one change in
one transaction, so a change is never visible without its audit event, and an audit
event never describes a change that did not happen. A failed or timed-out transaction
answers 503; the producer is then replaced (a fresh transactional id), because a
producer whose transaction failed midway may refuse further work. One caveat: a commit
that times out on our side may still have completed on the broker; the 503 then
describes a change that took effect (the audit shows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas import topics
from schemas.errors import CorruptRecord, ServiceUnavailable
from schemas.settings import KafkaSettings
from workers.tenancy.audit import AuditEvent
from workers.tenancy.model import KeyRecord, TagPolicy, TeamRecord
from workers.tenancy.store import ConfigChange, TenancyStore
from workers.tenancy.wire import decode_change, encode_audit, encode_change, entity_of
from workers.topic_follower import TopicFollower

log = logging.getLogger("tollway.tenancy.config")

POLL_TIMEOUT_MS = 250
"""Bound of one poll of the config topics (and of the fetch long-poll behind it)."""


class KafkaTenancyView:
    """`TenancyView` kept current from the config topics. Clients are made in `start()`."""

    def __init__(self, kafka: KafkaSettings, *, client_id: str = "tollway-tenancy") -> None:
        self.store = TenancyStore()
        self.corrupt = 0
        self._follower = TopicFollower(
            kafka,
            topics.CONFIG_TOPICS,
            self._on_record,
            client_id=client_id,
            name="tenancy-config",
            poll_timeout_ms=POLL_TIMEOUT_MS,
            isolation_level="read_committed",
        )

    async def start(self) -> None:
        await self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()

    def ready(self) -> bool:
        """True once every config record present at start has been applied."""
        return self._follower.ready()

    async def wait_ready(self, timeout_s: float) -> bool:
        return await self._follower.wait_ready(timeout_s)

    @property
    def polled_at_s(self) -> float | None:
        """`time.monotonic()` of the last successful poll: how fresh the view is."""
        return self._follower.polled_at_s

    async def catch_up(self, timeout_s: float) -> None:
        """Return once every change acknowledged before the call is applied here;
        `ServiceUnavailable` (503) if that takes longer than `timeout_s`."""
        if not self._follower.started:
            raise ServiceUnavailable("Kafka is not connected yet.", retry_after_s=1)
        try:
            async with asyncio.timeout(timeout_s):
                await self._follower.catch_up(self._follower.tps)
        except (KafkaError, TimeoutError) as exc:
            raise ServiceUnavailable(
                "The tenancy config cannot be read right now (Kafka); retry later.",
                retry_after_s=1,
            ) from exc

    # --- TenancyView --------------------------------------------------------------------

    def key_by_digest(self, key_digest: str) -> KeyRecord | None:
        return self.store.key_by_digest(key_digest)

    def key(self, key_id: str) -> KeyRecord | None:
        return self.store.key(key_id)

    def team(self, team_id: str) -> TeamRecord | None:
        return self.store.team(team_id)

    def tag_policy(self, tag: str) -> TagPolicy | None:
        return self.store.tag_policy(tag)

    def active_key(self, key_digest: str, now_ms: int) -> KeyRecord | None:
        return self.store.active_key(key_digest, now_ms)

    # --- the follower's callback --------------------------------------------------------

    def _on_record(self, record: Any) -> None:
        try:
            change = decode_change(record.topic, record.key, record.value)
        except CorruptRecord as exc:
            self.corrupt += 1
            entity = entity_of(record.topic, record.key)
            log.error(  # noqa: TRY400  # the reason is the message; no traceback to add
                "tenancy config: %s at offset %s; %s",
                exc,
                record.offset,
                "the entity is removed (fail closed)" if entity else "skipped",
            )
            if entity is None:
                return
            change = ConfigChange(entity[0], entity[1], None)
        self.store.apply(change)


class KafkaConfigWriter:
    """Writes config changes with their audit events in one transaction (see module doc)."""

    def __init__(
        self, kafka: KafkaSettings, *, client_id: str = "tollway-admin", timeout_s: float = 10.0
    ) -> None:
        self._kafka = kafka
        self._client_id = client_id
        self._timeout_s = timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()  # one transaction at a time per producer

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self._kafka.bootstrap,
            client_id=self._client_id,
            transactional_id=f"{self._client_id}-{uuid.uuid4().hex[:12]}",
            enable_idempotence=True,
            acks="all",
            linger_ms=0,
            request_timeout_ms=self._kafka.request_timeout_ms,
        )

    async def start(self) -> None:
        async with self._lock:
            await self._ensure()

    async def stop(self) -> None:
        async with self._lock:
            await self._drop()

    async def _ensure(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = self._new_producer()
            await producer.start()
            self._producer = producer
        return self._producer

    async def _drop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(KafkaError, TimeoutError):
                async with asyncio.timeout(self._timeout_s):
                    await producer.stop()

    async def write(self, changes: Sequence[ConfigChange], events: Sequence[AuditEvent]) -> None:
        """Commit `changes` and `events` together; returns once the commit is acknowledged."""
        messages = [encode_change(c) for c in changes]
        messages.extend((topics.AUDIT.name, *encode_audit(e)) for e in events)
        async with self._lock:
            try:
                async with asyncio.timeout(self._timeout_s):
                    producer = await self._ensure()
                    async with producer.transaction():
                        sent = [
                            await producer.send(topic, value, key=key)
                            for topic, key, value in messages
                        ]
                        await asyncio.gather(*sent)
            except (KafkaError, TimeoutError) as exc:
                await self._drop()
                raise ServiceUnavailable(
                    "Kafka did not confirm the config change; retry later (a GET shows "
                    "whether it took effect).",
                    retry_after_s=1,
                ) from exc
