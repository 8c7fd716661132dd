"""Read whole topics from their beginning and then forever, without a consumer group.

    in: every partition of the given topics, from offset 0, by every replica that holds
        a materialised view (no group: each replica needs all of it, none commits)

The shared reader of the in-memory views over compacted topics: the idempotency index
(ingress/idempotency_kafka.py) and the tenancy config (workers/tenancy/config_kafka.py).
The follower hands each record to `on_record` in log order per partition; what a
record means is the caller's business.

Guarantees:
- `ready()` turns true once every partition has been read up to the end offset it had
  when `start()` ran (compaction can leave that offset unreachable: the consumer's
  position, which skips gaps and transaction markers, is what is compared).
- `catch_up(tps)` returns once the view has read `tps` up to their end offsets of NOW:
  a record acknowledged anywhere before the call is applied when it returns. Callers
  bound it with `asyncio.timeout`.
- A change reaches `on_record` within about `poll_timeout_ms` of its write plus the
  fetch round trip (the fetch long-poll is bounded by the same value).

End offsets are asked on a client of their own: a broker answers the requests of one
connection in order, so behind the follower's long-polling fetch they would wait for it
(measured on the idempotency index: ~500 ms per lookup of a new key, ~2 ms apart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from schemas.settings import KafkaSettings
from schemas.topics import Topic

log = logging.getLogger("tollway.follower")

OnRecord = Callable[[Any], None]
"""Called with each aiokafka `ConsumerRecord` (topic, partition, offset, key, value)."""


class TopicFollower:
    """One background task reading `topics` into `on_record`. Clients are made in `start()`."""

    _consumer: AIOKafkaConsumer
    _offsets: AIOKafkaConsumer

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: Sequence[Topic],
        on_record: OnRecord,
        *,
        client_id: str,
        name: str,
        poll_timeout_ms: int = 500,
        max_partition_fetch_bytes: int = 1024 * 1024,
        isolation_level: Literal["read_uncommitted", "read_committed"] = "read_uncommitted",
        after_poll: Callable[[], None] | None = None,
    ) -> None:
        self._kafka = kafka
        self._on_record = on_record
        self._after_poll = after_poll
        self._client_id = client_id
        self._name = name
        self._poll_timeout_ms = poll_timeout_ms
        self._max_partition_fetch_bytes = max_partition_fetch_bytes
        self._isolation_level = isolation_level
        self.tps = [TopicPartition(t.name, p) for t in topics for p in range(t.partitions)]
        self._ready = asyncio.Event()
        self._tick = asyncio.Event()  # set (and replaced) after every poll
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self.polled_at_s: float | None = None
        """`time.monotonic()` of the last successful poll (None before the first)."""

    @property
    def started(self) -> bool:
        return self._started

    async def start(self) -> None:
        options: dict[str, Any] = {
            "bootstrap_servers": self._kafka.bootstrap,
            "client_id": self._client_id,
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_partition_fetch_bytes": self._max_partition_fetch_bytes,
            "fetch_max_wait_ms": self._poll_timeout_ms,
            "isolation_level": self._isolation_level,
        }
        self._consumer = AIOKafkaConsumer(**options)
        self._offsets = AIOKafkaConsumer(**options)
        await self._consumer.start()
        await self._offsets.start()
        self._consumer.assign(self.tps)
        await self._consumer.seek_to_beginning(*self.tps)
        ends: dict[TopicPartition, int] = await self._consumer.end_offsets(self.tps)
        self._task = asyncio.create_task(self._follow(ends), name=self._name)
        self._started = True

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()
        await self._offsets.stop()

    def ready(self) -> bool:
        """True once every record present at start has been handed to `on_record`."""
        return self._ready.is_set()

    async def wait_ready(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()
        return self.ready()

    async def catch_up(self, tps: Sequence[TopicPartition]) -> None:
        """Return once `tps` have been read up to their end offsets of now (KafkaError if
        the broker cannot say). Unbounded: wrap it in `asyncio.timeout`."""
        ends: dict[TopicPartition, int] = await self._offsets.end_offsets(list(tps))
        for tp, end in ends.items():
            while True:
                tick = self._tick  # taken before the check: no wake-up is missed
                if await self._consumer.position(tp) >= end:
                    break
                await tick.wait()

    async def _follow(self, ends: dict[TopicPartition, int]) -> None:
        pending = {tp: end for tp, end in ends.items() if end > 0}
        if not pending:
            self._ready.set()
        while True:
            try:
                batch = await self._consumer.getmany(
                    timeout_ms=self._poll_timeout_ms, max_records=5_000
                )
            except KafkaError as exc:  # the client reconnects by itself; the view ages meanwhile
                log.warning("%s: %r", self._name, exc)
                await asyncio.sleep(1.0)
                continue
            tick, self._tick = self._tick, asyncio.Event()
            self.polled_at_s = time.monotonic()
            for records in batch.values():
                for record in records:
                    try:
                        self._on_record(record)
                    except Exception:  # one bad record must not stop the view for good
                        log.exception(
                            "%s: record at %s:%s", self._name, record.topic, record.offset
                        )
            if self._after_poll is not None:
                self._after_poll()
            tick.set()
            if pending:
                for tp in list(pending):
                    if await self._consumer.position(tp) >= pending[tp]:
                        del pending[tp]
                if not pending:
                    log.info("%s: caught up", self._name)
                    self._ready.set()
