"""A router that takes a partition over skips what its previous owner finished (0023).

Records of one partition finish out of order; the committed position cannot pass a slow
call, so without more a new owner (after a kill, a freeze or a broker restart) calls
the provider again for every record behind it. The routers commit the offsets finished
above the position in the commit's metadata, and a new owner skips them.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

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
from workers.router.offsets import decode_finished
from workers.router.settings import RouterSettings

pytestmark = pytest.mark.kafka

KEY = b"takeover-test"
TOPIC = topics.REQUESTS_INTERACTIVE.name


def start_router(
    bootstrap: str, mock_url: str, group: str, metadata_delay_s: float = 0.0
) -> tuple[Router, asyncio.Task[None]]:
    """A router of `group`; `metadata_delay_s` slows its read of the commit metadata."""
    router = Router(
        KafkaSettings(bootstrap=bootstrap),
        RouterSettings(group_id=group, commit_interval_ms=50),
        Executor(routes=routes_for(mock_url), provider=build_registry({}), router_id=group),
    )
    if metadata_delay_s:
        load = router.load_finished

        async def slow_load(assigned: set[TopicPartition]) -> None:
            await asyncio.sleep(metadata_delay_s)
            await load(assigned)

        router.load_finished = slow_load  # type: ignore[method-assign]
    return router, asyncio.create_task(router.run())


async def committed(bootstrap: str, group: str, tp: TopicPartition) -> tuple[int, str]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        entry = (await consumer._coordinator.fetch_committed_offsets([tp]))[tp]
        return entry.offset, entry.metadata
    finally:
        await consumer.stop()


@pytest.mark.parametrize("metadata_delay_s", [0.0, 1.5], ids=["metadata-fast", "metadata-slow"])
async def test_a_new_owner_skips_records_the_old_one_finished_behind_a_slow_call(
    kafka_bootstrap: str, mock_url: str, metadata_delay_s: float
) -> None:
    """metadata-slow: the records are fetched well before the metadata is read (aiokafka
    fetches before the assignment callback); they must wait for it, not run."""
    tp = TopicPartition(TOPIC, partition_for_key(KEY, topics.REQUESTS_INTERACTIVE.partitions))
    old_group, new_group = (f"tollway-router-it-takeover-{uuid.uuid4().hex[:8]}" for _ in "ab")
    for group in (old_group, new_group):
        await skip_backlog(kafka_bootstrap, group)
    slow = envelope(model="mock-slow-4000")
    fast = [envelope() for _ in range(5)]
    results = await TopicReader(kafka_bootstrap, topics.RESULTS.name).start()
    await produce(
        kafka_bootstrap, TOPIC, [(KEY, codec.encode("request", e)) for e in [slow, *fast]]
    )

    # The old owner: the fast records finish behind the slow one, and say so in the commit.
    router, task = start_router(kafka_bootstrap, mock_url, old_group)
    assert len(await results.collect("result", {e["request_id"] for e in fast})) == len(fast)
    position, metadata = 0, ""
    for _ in range(100):
        position, metadata = await committed(kafka_bootstrap, old_group, tp)
        if metadata:
            break
        await asyncio.sleep(0.05)
    finished = decode_finished(position, metadata)
    assert len(finished) == len(fast), (position, metadata)
    router.stop()
    await task

    # As if the old owner had died right then: a new group takes over from that commit.
    # No auto-commit: aiokafka's last auto-commit at stop() writes (position, "") for
    # every partition whose position it has fetched by then, erasing the metadata just
    # seeded (the new owner then ran the five records again, once in 15 loaded runs).
    seeder = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=new_group, enable_auto_commit=False
    )
    await seeder.start()
    try:
        seeder.assign([tp])
        await seeder.commit({tp: (position, metadata)})
    finally:
        await seeder.stop()
    assert await committed(kafka_bootstrap, new_group, tp) == (position, metadata)
    again: Any = await TopicReader(kafka_bootstrap, topics.RESULTS.name).start()
    router, task = start_router(kafka_bootstrap, mock_url, new_group, metadata_delay_s)
    try:
        every = {e["request_id"] for e in [slow, *fast]}
        # Run again: the slow one only (fast ones would have come first, in milliseconds).
        first = await again.collect("result", every, count=1, timeout_s=20.0)
        assert [key for key, _ in first] == [slow["request_id"]]
        assert await again.collect("result", every, count=1, timeout_s=1.0) == []
        assert router.finished_by_previous_owner == {}
        for _ in range(100):  # the skipped records are committed past, too
            if (await committed(kafka_bootstrap, new_group, tp))[0] == position + 1 + len(fast):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the new owner did not commit past the skipped records")
    finally:
        router.stop()
        await task
        await again.stop()
        await results.stop()
