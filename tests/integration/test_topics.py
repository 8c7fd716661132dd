"""Topic bootstrap against the real broker."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from deploy.topics import ensure_topics
from schemas.topics import ALL_TOPICS

pytestmark = pytest.mark.kafka


async def test_topics_exist_with_their_partitions_and_creation_is_idempotent(
    kafka_bootstrap: str,
) -> None:
    assert await ensure_topics(kafka_bootstrap) == []  # the session fixture created them
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([t.name for t in ALL_TOPICS])
    finally:
        await admin.close()
    partitions = {d["topic"]: len(d["partitions"]) for d in described}
    assert partitions == {t.name: t.partitions for t in ALL_TOPICS}
