"""Topics of the batches and callbacks stages (kept apart from `topics.py` while they settle).

    tollway.batch-state        compacted, keyed by batch id: the latest state of each batch
                               (written by its batch worker; created by the ingress), plus
                               `<batch id>/cancel` command records on the same partition
    tollway.callbacks.retry    webhook deliveries waiting for their next attempt (due time
                               inside the record)
    tollway.callbacks.dead     deliveries that gave up; `tollway webhooks replay` re-sends them
    tollway.callbacks.endpoints compacted, keyed by endpoint key: endpoints disabled by a 410

`BATCH_STATE` has the same partition count as `topics.RESULTS` on purpose: it lets a
later version co-partition batch results with their batch (docs/decisions/0006).
"""

from __future__ import annotations

from typing import Final

from schemas.topics import Topic, _cfg

_DAY_MS: Final = 24 * 3_600_000

BATCH_STATE: Final = Topic(
    "tollway.batch-state",
    partitions=6,
    config=_cfg(
        cleanup_policy="compact",
        min_cleanable_dirty_ratio="0.1",
        segment_ms=str(3_600_000),
        max_message_bytes=str(2 * 1024 * 1024),
    ),
    doc="Latest state of each batch (compacted by batch id) and its cancel commands.",
)
CALLBACKS_RETRY: Final = Topic(
    "tollway.callbacks.retry",
    partitions=3,
    config=_cfg(retention_ms=str(7 * _DAY_MS), max_message_bytes=str(2 * 1024 * 1024)),
    doc="Webhook deliveries waiting for their next attempt; the due time is in the record.",
)
CALLBACKS_DEAD: Final = Topic(
    "tollway.callbacks.dead",
    partitions=1,
    config=_cfg(retention_ms=str(30 * _DAY_MS), max_message_bytes=str(2 * 1024 * 1024)),
    doc="Webhook deliveries that gave up (retries exhausted, 410, refused address).",
)
CALLBACK_ENDPOINTS: Final = Topic(
    "tollway.callbacks.endpoints",
    partitions=1,
    config=_cfg(cleanup_policy="compact", min_cleanable_dirty_ratio="0.1"),
    doc="Webhook endpoints disabled by a 410 Gone (compacted by endpoint key).",
)

BATCH_TOPICS: Final[tuple[Topic, ...]] = (BATCH_STATE,)
CALLBACK_TOPICS: Final[tuple[Topic, ...]] = (CALLBACKS_RETRY, CALLBACKS_DEAD, CALLBACK_ENDPOINTS)
ALL_BATCH_AND_CALLBACK_TOPICS: Final[tuple[Topic, ...]] = BATCH_TOPICS + CALLBACK_TOPICS
