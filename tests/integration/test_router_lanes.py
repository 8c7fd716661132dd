"""Routers and batch lines on the real broker: a batch backlog leaves room for interactive
requests (lanes.py), and lines of a cancelled batch are not run (cancelled.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from schemas import codec, topics
from schemas.records import META_BATCH_ID
from schemas.settings import KafkaSettings
from tests.integration.conftest import routes_for
from tests.integration.kafka_io import TopicReader, envelope, produce, skip_backlog
from workers.batches.kafka import BatchPublisher, new_producer
from workers.providers.registry import build_registry
from workers.router.cancelled import CancelledBatches
from workers.router.consumer import Router
from workers.router.execution import Executor
from workers.router.settings import RouterSettings

pytestmark = pytest.mark.kafka

GROUP = "tollway-router-lanes-it"


async def test_interactive_requests_pass_a_batch_backlog(
    kafka_bootstrap: str, mock_url: str
) -> None:
    await skip_backlog(kafka_bootstrap, GROUP)
    router = Router(
        KafkaSettings(bootstrap=kafka_bootstrap),
        RouterSettings(group_id=GROUP, commit_interval_ms=50, max_in_flight=4, batch_share=0.5),
        Executor(routes=routes_for(mock_url), provider=build_registry({}), router_id="lanes-it"),
    )
    running = asyncio.create_task(router.run())
    results = await TopicReader(kafka_bootstrap, topics.RESULTS.name).start()
    try:
        backlog = [envelope(model="mock-slow-3000", mode="batch") for _ in range(12)]
        await produce(
            kafka_bootstrap,
            topics.REQUESTS_BATCH.name,
            [(e["request_id"].encode(), codec.encode("request", e)) for e in backlog],
        )
        deadline = time.monotonic() + 20
        while len(router._batch_tasks) < 2:  # the lane under test
            assert time.monotonic() < deadline, "the router never took batch work"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # time to over-fetch, were the lane not enforced
        assert len(router._batch_tasks) == 2
        assert len(router._tasks) == 2

        interactive = [envelope(model="mock-fast") for _ in range(2)]
        sent = time.monotonic()
        await produce(
            kafka_bootstrap,
            topics.REQUESTS_INTERACTIVE.name,
            [(e["request_id"].encode(), codec.encode("request", e)) for e in interactive],
        )
        got: Any = await results.collect("result", {e["request_id"] for e in interactive})
        waited_s = time.monotonic() - sent
        # Had the backlog taken all 4 slots, these would wait ~3 s for a slow call to end.
        assert waited_s < 2.0, waited_s
        assert all(value["status"] == "succeeded" for _, value in got)
        assert len(router._batch_tasks) <= 2
    finally:
        await results.stop()
        router.stop()
        await asyncio.gather(running, return_exceptions=True)


async def test_queued_lines_of_a_cancelled_batch_are_not_run(
    kafka_bootstrap: str, mock_url: str
) -> None:
    group = "tollway-router-cancels-it"
    await skip_backlog(kafka_bootstrap, group)
    kafka = KafkaSettings(bootstrap=kafka_bootstrap)
    batch_id = f"batch_{uuid.uuid4().hex}"
    publisher = BatchPublisher(new_producer(kafka, "it-cancels"))
    await publisher.producer.start()
    try:
        await publisher.command(
            {"batch_id": batch_id, "team_id": "default", "command": "cancel",
             "requested_at_ms": int(time.time() * 1000)}
        )  # fmt: skip
    finally:
        await publisher.producer.stop()
    cancelled = CancelledBatches(kafka, client_id="it-cancels")
    await cancelled.start()
    router = Router(
        kafka,
        RouterSettings(group_id=group, commit_interval_ms=50),
        Executor(routes=routes_for(mock_url), provider=build_registry({}), router_id="cancel-it"),
        cancelled,
    )
    results = await TopicReader(kafka_bootstrap, topics.RESULTS.name).start()
    attempts = await TopicReader(kafka_bootstrap, topics.ATTEMPTS.name).start()
    running = asyncio.create_task(router.run())
    try:
        deadline = time.monotonic() + 20
        while batch_id not in cancelled.ids:
            assert time.monotonic() < deadline, "the cancel command was never read"
            await asyncio.sleep(0.05)
        lines = [envelope(mode="batch", metadata={META_BATCH_ID: batch_id}) for _ in range(5)] + [
            envelope(mode="batch", metadata={META_BATCH_ID: "batch_other"})
        ]
        await produce(
            kafka_bootstrap,
            topics.REQUESTS_BATCH.name,
            [(e["request_id"].encode(), codec.encode("request", e)) for e in lines],
        )
        got: Any = dict(await results.collect("result", {e["request_id"] for e in lines}))
        skipped = [got[e["request_id"]] for e in lines[:5]]
        shapes = {(r["status"], r["error_type"], r["http_status"], r["attempts"]) for r in skipped}
        assert shapes == {("failed", "BatchCancelled", 409, 0)}  # 0: no provider call
        assert got[lines[5]["request_id"]]["status"] == "succeeded"
        tried = await attempts.collect("attempt", {lines[5]["request_id"]})
        assert len(tried) == 1  # only the other batch's line called the provider
    finally:
        await results.stop()
        await attempts.stop()
        router.stop()
        await asyncio.gather(running, return_exceptions=True)
        await cancelled.stop()
