"""A dispatcher that dies before it ever committed on a partition must not make its
successor skip that partition's events.

Found by the chaos run (tests/chaos): a batch finished, its `batch.completed` state landed
on a tollway.batch-state partition that had never had a record, the dispatcher was killed
a second later, and its successor started that partition at its END (`start_from=latest`
applies to every partition without a committed offset): the webhook was never sent. The
dispatcher now commits the position it starts from on every partition it is assigned, so
"start at the end" happens once per group, never again on a restart.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from deploy.topics import ensure_topics
from schemas import codec, topics
from schemas.batch_topics import ALL_BATCH_AND_CALLBACK_TOPICS, CALLBACKS_RETRY
from schemas.settings import KafkaSettings
from tests.integration.conftest import free_port
from tests.integration.kafka_io import produce
from tests.integration.test_callbacks import Receiver, budget_event, config
from workers.callbacks import events
from workers.callbacks.dispatcher import RETRY_GROUP_HEADER, Dispatcher
from workers.callbacks.settings import CallbacksSettings

pytestmark = pytest.mark.kafka

EVENT_TOPICS = (topics.RESULTS, topics.BUDGET_EVENTS)


async def committed(bootstrap: str, group: str) -> dict[TopicPartition, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        return {
            tp: await consumer.committed(tp)
            for t in EVENT_TOPICS
            for tp in (TopicPartition(t.name, p) for p in range(t.partitions))
        }
    finally:
        await consumer.stop()


Running = tuple[Dispatcher, "asyncio.Task[None]"]


async def run_dispatcher(bootstrap: str, group: str, webhooks: Any) -> Running:
    settings = CallbacksSettings(
        group_id=group,
        allow_http=True,
        allow_networks=("127.0.0.0/8",),
        commit_interval_ms=100,
        timeout_s=2,
    )
    dispatcher = Dispatcher(KafkaSettings(bootstrap=bootstrap), settings, webhooks)
    task = asyncio.create_task(dispatcher.run())
    await asyncio.wait_for(dispatcher.ready(), 30)
    return dispatcher, task


async def stop(running: Running) -> None:
    dispatcher, task = running
    dispatcher.stop()
    await asyncio.gather(task, return_exceptions=True)


async def test_an_event_written_between_two_dispatchers_is_delivered_by_the_second(
    kafka_bootstrap: str,
) -> None:
    await ensure_topics(kafka_bootstrap, ALL_BATCH_AND_CALLBACK_TOPICS)
    group = f"tollway-callbacks-restart-{uuid.uuid4().hex[:8]}"  # brand new: starts at the end
    receiver = await Receiver(free_port()).start()
    hook = {"id": "ops", "url": receiver.url, "events": ["budget.*"]}
    try:
        first = await run_dispatcher(kafka_bootstrap, group, config([hook]))
        await stop(first)  # it saw nothing: it had nothing of its own to commit
        positions = await committed(kafka_bootstrap, group)
        assert all(offset is not None for offset in positions.values()), positions

        event = budget_event()  # written while no dispatcher runs
        await produce(
            kafka_bootstrap,
            topics.BUDGET_EVENTS.name,
            [(b"team:default", codec.encode("budget_event", event))],
        )
        second = await run_dispatcher(kafka_bootstrap, group, config([hook]))
        try:
            await receiver.wait(1)
        finally:
            await stop(second)
        assert len(receiver.received) == 1
    finally:
        await receiver.stop()


async def test_a_group_attempts_its_own_retries_and_unmarked_ones_not_another_groups(
    kafka_bootstrap: str,
) -> None:
    """A new group starts the retry topic at its beginning ("a waiting retry is never
    skipped"); the retries another group wrote there are that group's to attempt."""
    await ensure_topics(kafka_bootstrap, ALL_BATCH_AND_CALLBACK_TOPICS)
    group = f"tollway-callbacks-owner-{uuid.uuid4().hex[:8]}"
    receiver = await Receiver(free_port()).start()
    hook = {"id": "owner", "url": receiver.url, "events": ["budget.*"]}
    webhooks = config([hook])
    due = [events.from_budget(budget_event(), webhooks, 0)[0] for _ in range(3)]
    by_owner = {
        b"someone-else": due[0]["webhook_id"],
        group.encode(): due[1]["webhook_id"],
        None: due[2]["webhook_id"],  # replayed dead letters carry no owner
    }
    for owner, delivery in zip(by_owner, due, strict=True):
        await produce(
            kafka_bootstrap,
            CALLBACKS_RETRY.name,
            [(delivery["webhook_id"].encode(), codec.encode("webhook_delivery", delivery))],
            headers=None if owner is None else [(RETRY_GROUP_HEADER, owner)],
        )
    running = await run_dispatcher(kafka_bootstrap, group, webhooks)
    try:
        await receiver.wait(2)
        await asyncio.sleep(1.0)  # the other group's retry would have come by now
    finally:
        await stop(running)
        await receiver.stop()
    sent = sorted(headers["webhook-id"] for headers, _ in receiver.received)
    assert sent == sorted([by_owner[group.encode()], by_owner[None]])
