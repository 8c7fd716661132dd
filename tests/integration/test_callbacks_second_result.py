"""A re-executed request gets one webhook, for its first result, across a dispatcher restart.

Found by the chaos run (docs/reliability.md): a request ran twice (a router killed or
frozen between its result and its commit) and the second result had another status. A
dispatcher delivered the first result's webhook and committed; its successor, started
between the two results, did not know the first one and delivered the second too (same
webhook-id, another status). A dispatcher that takes a tollway.results partition over
now reads back the request ids of the partition's recent results below its start
position before it delivers any of that partition's results.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from deploy.topics import ensure_topics
from schemas import codec, topics
from schemas.batch_topics import ALL_BATCH_AND_CALLBACK_TOPICS
from schemas.kafka_partitioner import partition_for_key
from schemas.records import Result
from tests.integration.conftest import free_port
from tests.integration.kafka_io import produce
from tests.integration.test_callbacks import Receiver, config
from tests.integration.test_callbacks_restart import run_dispatcher, stop
from workers.callbacks.events import CALLBACK_URL_KEY

pytestmark = pytest.mark.kafka


def result(request_id: str, status: str, callback_url: str) -> Result:
    now_ms = time.time_ns() // 1_000_000
    failed = status == "failed"
    body = b'{"error": {"message": "timed out"}}' if failed else b'{"object": "chat.completion"}'
    return {
        "request_id": request_id,
        "team_id": "default",
        "key_id": None,
        "mode": "async",
        "execution_id": uuid.uuid4().hex[:16],
        "status": status,  # type: ignore[typeddict-item]  # a Status literal, given as str
        "http_status": 504 if failed else 200,
        "body": body,
        "error_type": "timeout" if failed else None,
        "requested_model": "gpt-4o-mini",
        "served_model": None if failed else "gpt-4o-mini",
        "provider": "mock",
        "deployment": "mock",
        "attempts": 1,
        "prompt_tokens": 0 if failed else 5,
        "completion_tokens": 0 if failed else 5,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "received_at_ms": now_ms - 1_000,
        "finished_at_ms": now_ms,
        "metadata": {CALLBACK_URL_KEY: callback_url},
    }


def same_partition_id(request_id: str) -> str:
    """Another request id whose results land on `request_id`'s results partition."""
    partitions = topics.RESULTS.partitions
    wanted = partition_for_key(request_id.encode(), partitions)
    while True:
        other = f"req_it_{uuid.uuid4().hex}"
        if partition_for_key(other.encode(), partitions) == wanted:
            return other


async def publish(bootstrap: str, *results: Result) -> None:
    await produce(
        bootstrap,
        topics.RESULTS.name,
        [(r["request_id"].encode(), codec.encode("result", r)) for r in results],
    )


def delivered(receiver: Receiver) -> list[tuple[str, str, str]]:
    """(request id, status, webhook-id) of every delivery, in order."""
    out = []
    for headers, body in receiver.received:
        data = json.loads(body)["data"]
        out.append((data["id"], data["status"], headers["webhook-id"]))
    return out


async def test_a_second_result_read_after_a_dispatcher_restart_gets_no_webhook(
    kafka_bootstrap: str,
) -> None:
    await ensure_topics(kafka_bootstrap, ALL_BATCH_AND_CALLBACK_TOPICS)
    group = f"tollway-callbacks-second-{uuid.uuid4().hex[:8]}"
    receiver = await Receiver(free_port()).start()
    twice = f"req_it_{uuid.uuid4().hex}"
    sentinel = same_partition_id(twice)  # written after the second result: read after it
    try:
        first = await run_dispatcher(kafka_bootstrap, group, config([]))
        await publish(kafka_bootstrap, result(twice, "succeeded", receiver.url))
        await receiver.wait(1)
        await stop(first)  # committed past the first result

        # The re-execution's result (another status), then the sentinel, while no
        # dispatcher runs; the next one starts right after the first result.
        await publish(
            kafka_bootstrap,
            result(twice, "failed", receiver.url),
            result(sentinel, "succeeded", receiver.url),
        )
        second = await run_dispatcher(kafka_bootstrap, group, config([]))
        try:
            await receiver.wait(2)  # the sentinel's, or (the bug) the second result's
            await asyncio.sleep(0.5)  # and whatever would come next
        finally:
            await stop(second)
        seen = delivered(receiver)
        assert [(rid, status) for rid, status, _ in seen] == [
            (twice, "succeeded"),
            (sentinel, "succeeded"),
        ], seen
    finally:
        await receiver.stop()
