"""Small helpers to write and read Tollway topics in integration tests."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas import codec, topics
from schemas.records import Mode, RequestEnvelope
from schemas.topics import ALL_TOPICS


def envelope(
    model: str = "gpt-4o-mini", mode: Mode = "async", **overrides: object
) -> RequestEnvelope:
    now = time.time_ns() // 1_000_000
    body = b'{"model": "' + model.encode() + b'", "messages": [{"role": "user", "content": "hi"}]}'
    env: RequestEnvelope = {
        "request_id": f"req_it_{uuid.uuid4().hex}",
        "team_id": "default",
        "key_id": None,
        "mode": mode,
        "endpoint": "/v1/chat/completions",
        "model": model,
        "body": body,
        "received_at_ms": now,
        "deadline_ms": now + 60_000,
        "ingress_id": "it",
        "reply_partition": None,
        "metadata": {},
    }
    env.update(overrides)  # type: ignore[typeddict-item]  # tests override a few fields by name
    return env


async def produce(
    bootstrap: str,
    topic: str,
    values: list[tuple[bytes, bytes]],
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=key, headers=headers) for key, value in values
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


class TopicReader:
    """Reads a topic from the end offsets seen at `start()`: only what a test produced after."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)

    async def start(self) -> TopicReader:
        await self.consumer.start()
        count = next(t.partitions for t in ALL_TOPICS if t.name == self.topic)
        tps = [TopicPartition(self.topic, p) for p in range(count)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:
            await self.consumer.position(tp)
        return self

    async def stop(self) -> None:
        await self.consumer.stop()

    async def collect(
        self,
        name: Literal["result", "attempt"] | None,
        want_ids: set[str],
        *,
        count: int | None = None,
        timeout_s: float = 30.0,
    ) -> list[tuple[str, object]]:
        """(key, decoded value) pairs for keys in `want_ids`, until `count` (default: 1 per id)."""
        needed = count if count is not None else len(want_ids)
        found: list[tuple[str, object]] = []
        deadline = time.monotonic() + timeout_s
        while len(found) < needed and time.monotonic() < deadline:
            batch = await self.consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    key = (record.key or b"").decode()
                    if key in want_ids:
                        value: object = record.value
                        if name is not None:
                            value = codec.decode(name, record.value or b"")
                        found.append((key, value))
        return found


async def skip_backlog(bootstrap: str, group_id: str) -> None:
    """Commit the router group's offsets at the end of the request topics.

    The broker is shared by every test (and developer) run: without this, a router
    group would first execute every request published since its last run.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [
            TopicPartition(t.name, p)
            for t in (topics.REQUESTS_INTERACTIVE, topics.REQUESTS_BATCH)
            for p in range(t.partitions)
        ]
        consumer.assign(tps)
        await consumer.commit(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()
