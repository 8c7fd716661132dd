"""The router against the real broker and the mock provider over loopback HTTP."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas import codec, topics
from schemas.records import Attempt, Result
from tests.integration.kafka_io import TopicReader, envelope, produce

pytestmark = pytest.mark.kafka

GROUP = "tollway-router-it"


async def test_router_answers_each_request_with_one_result_and_its_attempts(
    kafka_bootstrap: str, run_router: Any
) -> None:
    results = await TopicReader(kafka_bootstrap, topics.RESULTS.name).start()
    attempts = await TopicReader(kafka_bootstrap, topics.ATTEMPTS.name).start()
    envs = [envelope() for _ in range(50)] + [envelope(model="fallback-model") for _ in range(5)]
    ids = {e["request_id"] for e in envs}
    run_router(GROUP)
    await produce(
        kafka_bootstrap,
        topics.REQUESTS_INTERACTIVE.name,
        [(e["request_id"].encode(), codec.encode("request", e)) for e in envs],
    )
    got = await results.collect("result", ids)
    tried = await attempts.collect("attempt", ids, count=50 + 5 * 3)
    await results.stop()
    await attempts.stop()

    by_id = {key: cast("Result", value) for key, value in got}
    assert set(by_id) == ids
    assert all(r["status"] == "succeeded" and r["http_status"] == 200 for r in by_id.values())
    assert all(r["completion_tokens"] > 0 for r in by_id.values())
    fallback_ids = {e["request_id"] for e in envs if e["model"] == "fallback-model"}
    for request_id in fallback_ids:
        assert by_id[request_id]["deployment"] == "mock"
        # connection refused is retriable: one retry on `down`, then failover to `mock`
        assert by_id[request_id]["attempts"] == 3
        mine = sorted(
            (cast("Attempt", a) for k, a in tried if k == request_id), key=lambda a: a["attempt"]
        )
        assert [a["deployment"] for a in mine] == ["down", "down", "mock"]
        assert [a["outcome"] for a in mine] == ["error", "error", "ok"]
        assert mine[0]["error_type"] == "ProviderConnectionError"


async def test_router_commits_offsets_only_for_finished_records(
    kafka_bootstrap: str, run_router: Any
) -> None:
    results = await TopicReader(kafka_bootstrap, topics.RESULTS.name).start()
    envs = [envelope() for _ in range(20)]
    run_router(GROUP)
    await produce(
        kafka_bootstrap,
        topics.REQUESTS_INTERACTIVE.name,
        [(e["request_id"].encode(), codec.encode("request", e)) for e in envs],
    )
    await results.collect("result", {e["request_id"] for e in envs})
    await results.stop()
    await asyncio.sleep(0.5)  # two commit ticks

    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, group_id=GROUP, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [
            TopicPartition(topics.REQUESTS_INTERACTIVE.name, p)
            for p in range(topics.REQUESTS_INTERACTIVE.partitions)
        ]
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            committed = await consumer.committed(tp)
            assert committed == ends[tp], f"{tp}: committed {committed}, end {ends[tp]}"
    finally:
        await consumer.stop()


async def test_garbage_goes_to_dead_letters_and_the_router_keeps_going(
    kafka_bootstrap: str, run_router: Any
) -> None:
    dead = await TopicReader(kafka_bootstrap, topics.DEAD_LETTERS.name).start()
    results = await TopicReader(kafka_bootstrap, topics.RESULTS.name).start()
    good = envelope()
    run_router(GROUP)
    await produce(
        kafka_bootstrap,
        topics.REQUESTS_INTERACTIVE.name,
        [
            (b"garbage-1", b"\x00\x00\x00\x00\x01not avro at all"),
            (b"garbage-2", b'{"json": true}'),
            (good["request_id"].encode(), codec.encode("request", good)),
        ],
    )
    letters = await dead.collect(None, {"garbage-1", "garbage-2"})
    answered = await results.collect("result", {good["request_id"]})
    await dead.stop()
    await results.stop()
    assert {key for key, _ in letters} == {"garbage-1", "garbage-2"}
    assert len(answered) == 1


async def test_sync_request_past_its_deadline_is_not_sent_to_the_provider(
    kafka_bootstrap: str, run_router: Any
) -> None:
    results = await TopicReader(kafka_bootstrap, topics.RESULTS.name).start()
    late = envelope(mode="sync", deadline_ms=1)
    run_router(GROUP)
    await produce(
        kafka_bootstrap,
        topics.REQUESTS_INTERACTIVE.name,
        [(late["request_id"].encode(), codec.encode("request", late))],
    )
    got = await results.collect("result", {late["request_id"]})
    await results.stop()
    result = cast("Result", got[0][1])
    assert result["status"] == "failed"
    assert result["http_status"] == 504
    assert result["attempts"] == 0
