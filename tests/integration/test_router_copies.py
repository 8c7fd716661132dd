"""A router runs a request id once: a copy of an async or batch request is not run again.

Found by the long chaos run (seed 617570): a batch worker killed mid-expansion publishes
the lines since its last checkpoint again, under the same request ids (0006); the router
ran both copies, 50 duplicate provider calls in one run. A router now skips a copy of an
async or batch request whose result it published (waiting for the first copy if that one
is still running). Sync requests always run: their ingress waits for the reply.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas import codec, topics
from schemas.kafka_partitioner import partition_for_key
from schemas.settings import KafkaSettings
from tests.integration.conftest import routes_for
from tests.integration.kafka_io import TopicReader, envelope, produce, skip_backlog
from workers.providers.registry import build_registry
from workers.router.consumer import Router
from workers.router.execution import Executor
from workers.router.settings import RouterSettings

pytestmark = pytest.mark.kafka

TOPIC = topics.REQUESTS_INTERACTIVE.name


async def committed(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        position: int | None = await consumer.committed(tp)
        return position
    finally:
        await consumer.stop()


async def end_offset(bootstrap: str, tp: TopicPartition) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        end: int = (await consumer.end_offsets([tp]))[tp]
        return end
    finally:
        await consumer.stop()


async def test_a_copy_of_an_answered_request_is_not_run_again(
    kafka_bootstrap: str, mock_url: str
) -> None:
    group = f"tollway-router-it-copies-{uuid.uuid4().hex[:8]}"
    await skip_backlog(kafka_bootstrap, group)
    slow = envelope(model="mock-slow-500")  # the copy arrives while the first still runs
    fast = envelope()
    sync = envelope(mode="sync")  # no reply partition: nobody waits, but it is sync
    records = [(e["request_id"].encode(), codec.encode("request", e)) for e in (slow, fast, sync)]
    results = await TopicReader(kafka_bootstrap, topics.RESULTS.name).start()
    router = Router(
        KafkaSettings(bootstrap=kafka_bootstrap),
        RouterSettings(group_id=group, commit_interval_ms=50),
        Executor(routes=routes_for(mock_url), provider=build_registry({}), router_id=group),
    )
    task = asyncio.create_task(router.run())
    try:
        await produce(kafka_bootstrap, TOPIC, records)
        await asyncio.sleep(0.2)
        await produce(kafka_bootstrap, TOPIC, records)  # the copies, same ids
        every = {slow["request_id"], fast["request_id"], sync["request_id"]}
        found = await results.collect("result", every, count=4, timeout_s=20.0)
        assert sorted(key for key, _ in found) == sorted([*every, sync["request_id"]])
        assert await results.collect("result", every, count=1, timeout_s=1.5) == []
        # Every copy is committed past, skipped or run.
        tps = {
            TopicPartition(TOPIC, partition_for_key(k, topics.REQUESTS_INTERACTIVE.partitions))
            for k, _ in records
        }
        for tp in tps:
            end = await end_offset(kafka_bootstrap, tp)
            for _ in range(100):
                if await committed(kafka_bootstrap, group, tp) == end:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"{tp} not committed to its end {end}")
    finally:
        router.stop()
        await task
        await results.stop()
