"""End-to-end check of the broker that kafka.sh starts, with Tollway's Kafka client (aiokafka).

    python deploy/kafka/smoke_check.py write   # topics, idempotent + transactional produce, group
    python deploy/kafka/smoke_check.py verify  # after a restart: topics, data and offsets survived

Bootstrap address from TOLLWAY_KAFKA_BOOTSTRAP (default 127.0.0.1:19092). Exits non-zero on failure.
"""

import asyncio
import contextlib
import os
import sys
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

BOOTSTRAP = os.environ.get("TOLLWAY_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
EVENTS, STATE, TXN = "smoke.events", "smoke.state", "smoke.txn"
GROUP, N = "smoke-group", 30


async def consume(topic: str, want: int, **kw: Any) -> list[Any]:
    """Read at least `want` records from the start of `topic` (30 s at most)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=BOOTSTRAP, auto_offset_reset="earliest", **kw
    )
    await consumer.start()
    got: list[Any] = []
    try:
        deadline = time.monotonic() + 30
        while len(got) < want and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                got.extend(records)
        if kw.get("group_id"):
            await consumer.commit()
    finally:
        await consumer.stop()
    return got


async def write() -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        for topic in (
            NewTopic(EVENTS, num_partitions=3, replication_factor=1),
            NewTopic(STATE, 1, 1, topic_configs={"cleanup.policy": "compact"}),
            NewTopic(TXN, num_partitions=1, replication_factor=1),
        ):
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([topic])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for i in range(N):
            await producer.send_and_wait(EVENTS, f"event-{i}".encode(), key=f"k{i % 7}".encode())
        for i in range(5):
            await producer.send_and_wait(STATE, f"v{i}".encode(), key=b"same-key")
    finally:
        await producer.stop()
    events = await consume(EVENTS, N, group_id=GROUP, enable_auto_commit=False)
    assert len(events) == N, f"consumed {len(events)} of {N} events"
    assert {r.partition for r in events} == {0, 1, 2}, "keys should spread over 3 partitions"

    txn = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, transactional_id="smoke-txn")
    await txn.start()
    try:
        async with txn.transaction():
            for i in range(5):
                await txn.send(TXN, f"committed-{i}".encode())
        await txn.begin_transaction()
        await txn.send(TXN, b"aborted")
        await txn.abort_transaction()
        async with txn.transaction():
            await txn.send(TXN, b"committed-last")
    finally:
        await txn.stop()
    seen = [r.value for r in await consume(TXN, 6, isolation_level="read_committed")]
    assert b"aborted" not in seen, seen
    assert len(seen) % 6 == 0, seen
    assert seen[-1] == b"committed-last", seen
    print(
        f"write ok: {N} idempotent events over 3 partitions read by group {GROUP!r}, "
        f"compacted topic, transactions ({len(seen)} committed records visible, aborted hidden)"
    )


async def verify() -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        topics = {t["topic"]: t for t in await admin.describe_topics([EVENTS, STATE])}
        assert len(topics[EVENTS]["partitions"]) == 3, topics[EVENTS]
        (resp,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, STATE)])
        configs = {c[0]: c[1] for c in resp.resources[0][4]}
        assert configs["cleanup.policy"] == "compact", configs["cleanup.policy"]
        offsets = await admin.list_consumer_group_offsets(GROUP)
        committed = sum(o.offset for tp, o in offsets.items() if tp.topic == EVENTS)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(EVENTS, p) for p in range(3)])
    finally:
        await consumer.stop()
    stored = sum(ends.values())
    assert stored >= N, stored
    assert committed == stored, (stored, committed)
    print(f"verify ok: {stored} events kept, group {GROUP!r} committed {committed}")


if __name__ == "__main__":
    asyncio.run({"write": write, "verify": verify}[sys.argv[1]]())
