"""The ingress's view of batches: a materialised view of tollway.batch-state.

    in:  tollway.batch-state, every partition from the start (no group), latest per batch
    out: tollway.batch-state, the first state of a new batch (status validating) and
         `<batch_id>/cancel` commands (acks=all before the API answers)

Any replica answers any batch: `get` of an id it has not seen yet first waits
(bounded) until it has read its partition up to the end offset of that moment, so a
batch created through another replica is found right after its creation returned.
Memory: one state per batch without the done bitmap (~1 KB).

`MemoryBatchView` is the fake for unit tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from schemas.batch_topics import BATCH_STATE
from schemas.errors import CorruptRecord, ServiceUnavailable
from schemas.records import BatchCommand, BatchState
from schemas.settings import KafkaSettings
from workers.batches.kafka import BatchPublisher, decode_state_record, new_producer, partition_for
from workers.batches.state import newer

log = logging.getLogger("tollway.batches.view")

CATCH_UP_TIMEOUT_S: Final = 3.0


class BatchView(Protocol):
    def ready(self) -> bool: ...

    async def create(self, state: BatchState) -> None:
        """Write the new batch durably (acks=all); `ServiceUnavailable` if Kafka refused."""
        ...

    async def get(self, batch_id: str) -> BatchState | None: ...

    def list(self, team_id: str, limit: int, after: str | None) -> tuple[list[BatchState], bool]:
        """Newest first, after the batch id `after`; (page, has_more)."""
        ...

    async def cancel(self, state: BatchState, now_ms: int) -> None:
        """Ask the batch's worker to cancel it (durable before returning)."""
        ...


def _page(
    states: list[BatchState], team_id: str, limit: int, after: str | None
) -> tuple[list[BatchState], bool]:
    mine = sorted(
        (s for s in states if s["team_id"] == team_id),
        key=lambda s: (s["created_at_ms"], s["batch_id"]),
        reverse=True,
    )
    start = 0
    if after is not None:
        ids = [s["batch_id"] for s in mine]
        start = ids.index(after) + 1 if after in ids else len(ids)
    page = mine[start : start + limit]
    return page, start + limit < len(mine)


class MemoryBatchView:
    def __init__(self) -> None:
        self.states: dict[str, BatchState] = {}
        self.commands: list[BatchCommand] = []
        self.available = True

    def ready(self) -> bool:
        return self.available

    async def create(self, state: BatchState) -> None:
        if not self.available:
            raise ServiceUnavailable("Kafka is unreachable: the batch was not created.")
        self.states[state["batch_id"]] = state

    async def get(self, batch_id: str) -> BatchState | None:
        return self.states.get(batch_id)

    def list(self, team_id: str, limit: int, after: str | None) -> tuple[list[BatchState], bool]:
        return _page(list(self.states.values()), team_id, limit, after)

    async def cancel(self, state: BatchState, now_ms: int) -> None:
        self.commands.append(
            {
                "batch_id": state["batch_id"],
                "team_id": state["team_id"],
                "command": "cancel",
                "requested_at_ms": now_ms,
            }
        )


class KafkaBatchView:
    """`BatchView` over Kafka. Clients are created in `start()`."""

    _consumer: AIOKafkaConsumer
    _publisher: BatchPublisher

    def __init__(self, kafka: KafkaSettings, *, client_id: str = "tollway-ingress-batches") -> None:
        self._kafka = kafka
        self._client_id = client_id
        self._states: dict[str, BatchState] = {}
        self._tps = [TopicPartition(BATCH_STATE.name, p) for p in range(BATCH_STATE.partitions)]
        self._caught_up = False
        self._started = False
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._kafka.bootstrap,
            client_id=self._client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        self._publisher = BatchPublisher(new_producer(self._kafka, self._client_id))
        await self._publisher.producer.start()
        await self._consumer.start()
        self._consumer.assign(self._tps)
        await self._consumer.seek_to_beginning(*self._tps)
        ends = await self._consumer.end_offsets(self._tps)
        self._task = asyncio.create_task(self._follow(ends))
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
        await self._publisher.producer.stop()

    def ready(self) -> bool:
        return self._caught_up

    async def create(self, state: BatchState) -> None:
        self._require_started()
        try:
            async with asyncio.timeout(self._kafka.request_timeout_ms / 1000):
                await self._publisher.state(state, retry=False)
        except (KafkaError, TimeoutError) as exc:
            raise ServiceUnavailable(
                "The batch could not be written to Kafka and was not created; retry later.",
                retry_after_s=1,
            ) from exc
        self._apply(state)

    async def get(self, batch_id: str) -> BatchState | None:
        found = self._states.get(batch_id)
        if found is None and self._started:
            await self._catch_up(TopicPartition(BATCH_STATE.name, partition_for(batch_id)))
            found = self._states.get(batch_id)
        return found

    def list(self, team_id: str, limit: int, after: str | None) -> tuple[list[BatchState], bool]:
        return _page(list(self._states.values()), team_id, limit, after)

    async def cancel(self, state: BatchState, now_ms: int) -> None:
        self._require_started()
        command: BatchCommand = {
            "batch_id": state["batch_id"],
            "team_id": state["team_id"],
            "command": "cancel",
            "requested_at_ms": now_ms,
        }
        try:
            async with asyncio.timeout(self._kafka.request_timeout_ms / 1000):
                await self._publisher.command(command)
        except (KafkaError, TimeoutError) as exc:
            raise ServiceUnavailable(
                "The cancellation could not be written to Kafka; retry later.", retry_after_s=1
            ) from exc

    def _require_started(self) -> None:
        if not self._started:
            raise ServiceUnavailable("Kafka is not connected yet.")

    def _apply(self, state: BatchState) -> None:
        slim = state.copy()
        slim["done"] = b""  # the bitmap is the worker's business
        if newer(slim, self._states.get(slim["batch_id"])):
            self._states[slim["batch_id"]] = slim

    async def _catch_up(self, tp: TopicPartition) -> None:
        try:
            async with self._lock:
                end = (await self._consumer.end_offsets([tp]))[tp]
            deadline = asyncio.get_running_loop().time() + CATCH_UP_TIMEOUT_S
            while await self._consumer.position(tp) < end:
                if asyncio.get_running_loop().time() > deadline:
                    return
                await asyncio.sleep(0.02)
        except KafkaError:
            log.warning("batch view could not catch up on %s", tp)

    async def _follow(self, ends: dict[TopicPartition, int]) -> None:
        pending = {tp: end for tp, end in ends.items() if end > 0}
        self._caught_up = not pending
        while True:
            batch = await self._consumer.getmany(timeout_ms=500, max_records=5_000)
            for records in batch.values():
                for record in records:
                    try:
                        decoded = decode_state_record(record.key, record.value)
                    except CorruptRecord:
                        log.exception("undecodable batch-state record at offset %s", record.offset)
                        continue
                    if decoded is not None and "command" not in decoded:
                        self._apply(decoded)
            if not self._caught_up:
                for tp in list(pending):
                    if await self._consumer.position(tp) >= pending[tp]:
                        del pending[tp]
                self._caught_up = not pending
