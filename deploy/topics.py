"""Create Tollway's topics explicitly, with their partitions and configs. Idempotent.

Brokers run with auto-creation off, so a typo in a topic name fails loudly
instead of creating a stray one-partition topic.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from schemas.topics import ALL_TOPICS, Topic

log = logging.getLogger("tollway.topics")


async def ensure_topics(
    bootstrap: str,
    wanted: tuple[Topic, ...] = ALL_TOPICS,
    *,
    replication_factor: int = 1,
    timeout_s: float = 60.0,
) -> list[str]:
    """Create the missing topics; returns the names created. Retries until `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="tollway-topics")
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [t for t in wanted if t.name not in existing]
            if missing:
                await admin.create_topics(
                    [
                        NewTopic(
                            t.name, t.partitions, replication_factor, topic_configs=dict(t.config)
                        )
                        for t in missing
                    ]
                )
            return [t.name for t in missing]
        except KafkaError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise
            log.info("topics: broker not ready (%s), retrying", type(exc).__name__)
            await asyncio.sleep(1.0)
        finally:
            await admin.close()
