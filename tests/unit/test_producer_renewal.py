"""A producer that lost its idempotence state is replaced once, and only for that error."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaTimeoutError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    UnknownProducerId,
)

from workers.producer_renewal import RenewableProducer, producer_state_lost


class FakeProducer:
    def __init__(self, number: int, *, hang_on_stop: bool = False) -> None:
        self.number = number
        self.started = False
        self.stopped = False
        self.hang_on_stop = hang_on_stop

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        if self.hang_on_stop:
            await asyncio.Event().wait()
        self.stopped = True


def factory(**kwargs: Any) -> tuple[list[FakeProducer], Any]:
    made: list[FakeProducer] = []

    def make() -> AIOKafkaProducer:
        made.append(FakeProducer(len(made), **kwargs))
        return cast(AIOKafkaProducer, made[-1])

    return made, make


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        (OutOfOrderSequenceNumber(), True),
        (UnknownProducerId(), True),
        (NotLeaderForPartitionError(), False),  # retriable: the same producer recovers
        (KafkaTimeoutError(), False),
        (ValueError("not Kafka"), False),
    ],
)
def test_only_a_lost_producer_state_asks_for_a_new_producer(
    error: BaseException, lost: bool
) -> None:
    assert producer_state_lost(error) is lost


async def test_concurrent_failures_of_one_producer_replace_it_once() -> None:
    made, make = factory()
    producers = RenewableProducer(make)
    await producers.start()
    failed = producers.current
    await asyncio.gather(*(producers.renew(failed, OutOfOrderSequenceNumber()) for _ in range(5)))
    assert len(made) == 2
    assert producers.current is cast(AIOKafkaProducer, made[1])
    assert made[1].started
    assert made[0].stopped
    assert producers.renewals == 1
    # A late report about the producer already replaced changes nothing.
    await producers.renew(failed, OutOfOrderSequenceNumber())
    assert len(made) == 2


async def test_a_broken_producer_that_never_stops_does_not_block_the_renewal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("workers.producer_renewal.OLD_PRODUCER_STOP_S", 0.05)
    made, make = factory(hang_on_stop=True)
    producers = RenewableProducer(make)
    await asyncio.wait_for(producers.renew(producers.current, UnknownProducerId()), 2)
    assert producers.current is cast(AIOKafkaProducer, made[1])
