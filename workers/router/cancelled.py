"""Cancelled batches, as the routers see them: queued lines of a cancelled batch are skipped.

    in: tollway.batch-state, every partition from the start (no group); only the
        `<batch_id>/cancel` command records matter (workers/batches/kafka.py), and their
        keys say everything: values are not even decoded

A batch line (`mode` batch) of a batch in the set gets a failed Result with code
`batch_cancelled` and no provider call; the batch worker writes it to the error file
exactly like the lines it marks itself when it finalises the cancellation
(`assembler.CANCELLED_ERROR_TYPE`). Best effort, by design: a line already running
when the cancel arrives runs on, and lines read before this view has caught up with
the topic (at start) run; the batch worker's grace period covers both
(docs/decisions/0006-batches.md). Memory: one id per cancelled batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from schemas.batch_topics import BATCH_STATE
from schemas.errors import TollwayError
from schemas.records import META_BATCH_ID, RequestEnvelope
from schemas.settings import KafkaSettings
from workers.batches.kafka import COMMAND_SEPARATOR

log = logging.getLogger("tollway.router.cancelled")

_CANCEL_SUFFIX: Final = f"{COMMAND_SEPARATOR}cancel".encode()


class BatchCancelled(TollwayError):
    """The line's batch was cancelled before the line ran."""

    http_status = 409
    error_type = "invalid_request_error"
    code = "batch_cancelled"


class CancelledBatches:
    """The ids of cancelled batches, kept current by a background consumer."""

    def __init__(self, kafka: KafkaSettings, *, client_id: str = "tollway-router-cancels") -> None:
        self._kafka = kafka
        self._client_id = client_id
        self.ids: set[str] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    def skips(self, envelope: RequestEnvelope) -> bool:
        """Whether `envelope` is a line of a batch cancelled already."""
        return envelope["mode"] == "batch" and envelope["metadata"].get(META_BATCH_ID) in self.ids

    @staticmethod
    def error() -> BatchCancelled:
        return BatchCancelled("The batch was cancelled before this request ran.")

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._kafka.bootstrap,
            client_id=self._client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await consumer.start()
        self._consumer = consumer
        tps = [TopicPartition(BATCH_STATE.name, p) for p in range(BATCH_STATE.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._follow(consumer), name="cancelled-batches")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=1_000, max_records=10_000)
            except KafkaError as exc:  # reconnects by itself; lines run meanwhile
                log.warning("cancelled batches: %r", exc)
                await asyncio.sleep(1.0)
                continue
            for records in batch.values():
                for record in records:
                    key = record.key or b""
                    if key.endswith(_CANCEL_SUFFIX) and record.value is not None:
                        self.ids.add(key[: -len(_CANCEL_SUFFIX)].decode(errors="replace"))
