"""Replace an idempotent Kafka producer that can no longer send.

After a broker restart an idempotent aiokafka producer can get
`OutOfOrderSequenceNumber` on every send from then on: the broker lost the producer's
sequence state, and aiokafka (0.14, aio-libs/aiokafka#1017) neither bumps the epoch nor
asks for a new producer id, so retrying on the same producer fails forever. The chaos
suite saw a router retry 3,613 times in 2.6 minutes while its finished records stayed
uncommitted and were executed again by each rebalance (docs/reliability.md).

The cure is a new producer (a new producer id, sequences from 0). Records the old one
had not acknowledged are sent again by the new one; the consumers of every topic
Tollway writes already drop a record they have seen (first result wins, attempts and
usage are keyed), so the renewal costs at most a duplicate record, never a lost one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    KafkaError,
    OutOfOrderSequenceNumber,
    UnknownProducerId,
)

log = logging.getLogger("tollway.kafka")

PRODUCER_STATE_LOST: Final = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
)
"""Broker answers that mean this producer's idempotence state is gone for good."""

OLD_PRODUCER_STOP_S: Final = 5.0
"""How long the replaced producer may take to stop; its unsent records are abandoned."""


def producer_state_lost(exc: BaseException) -> bool:
    """True if `exc` means the producer must be replaced rather than retried."""
    return isinstance(exc, PRODUCER_STATE_LOST)


class RenewableProducer:
    """The current producer of a process, replaced once per loss of its state.

    Every sender reads `current` for each send. Concurrent senders that all saw the same
    producer fail call `renew(failed)` with it; only the first replaces it.
    """

    def __init__(self, make: Callable[[], AIOKafkaProducer]) -> None:
        self._make = make
        self.current = make()
        self.renewals = 0
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await self.current.start()

    async def stop(self) -> None:
        await self.current.stop()

    async def renew_if_lost(self, failed: AIOKafkaProducer, exc: BaseException) -> bool:
        """After a failed send on `failed`: renew it if `exc` means its state is lost.
        True when it was (the caller sends what was not acknowledged again)."""
        if not producer_state_lost(exc):
            return False
        await self.renew(failed, exc)
        return True

    async def renew(self, failed: AIOKafkaProducer, cause: KafkaError) -> None:
        """Start a new producer in place of `failed` (no-op if that already happened)."""
        async with self._lock:
            if self.current is not failed:
                return
            log.error("Kafka producer lost its idempotence state (%r); starting a new one", cause)
            fresh = self._make()
            await fresh.start()
            self.current = fresh
            self.renewals += 1
        with contextlib.suppress(Exception):  # it is broken; stopping is best effort
            async with asyncio.timeout(OLD_PRODUCER_STOP_S):
                await failed.stop()
