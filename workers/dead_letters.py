"""The dead-letter record: a consumed record no retry can fix, kept whole with the reason.

`tollway.dead-letters` receives the record's key and value unchanged, and three headers
that say what happened: `tollway-error` (the `DeadLetter` class, e.g. CorruptRecord),
`tollway-reason` (its message) and `tollway-source` (`topic/partition/offset`). Every
consumer that skips a record for being unreadable writes it here first, and only then
lets its offset be committed: nothing is skipped silently.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas import topics
from schemas.errors import DeadLetter
from workers.telemetry.metrics import dead_letter_metrics

log = logging.getLogger("tollway.dead-letters")

RETRY_DELAY_S: Final = 0.5

Headers = list[tuple[str, bytes]]


def dead_letter_headers(source: str, exc: DeadLetter) -> Headers:
    """The headers of the dead letter of the record at `source` (`topic/partition/offset`)."""
    return [
        ("tollway-error", type(exc).__name__.encode()),
        ("tollway-reason", str(exc).encode()),
        ("tollway-source", source.encode()),
    ]


def source_of(topic: str, partition: int, offset: int) -> str:
    return f"{topic}/{partition}/{offset}"


async def send_dead_letter(
    producer: AIOKafkaProducer, source: str, key: bytes | None, value: bytes | None, exc: DeadLetter
) -> None:
    """Write one dead letter and wait for acks=all, retrying until Kafka takes it."""
    log.error("dead letter from %s: %s", source, exc)
    headers = dead_letter_headers(source, exc)
    while True:
        try:
            await producer.send_and_wait(
                topics.DEAD_LETTERS.name,
                value,
                key=key,
                headers=headers,  # None stays a tombstone
            )
        except KafkaError as error:
            log.warning("dead letter of %s not written (%s); retrying", source, error)
            await asyncio.sleep(RETRY_DELAY_S)
        else:
            dead_letter_metrics().published.labels(topics.DEAD_LETTERS.name).inc()
            return
