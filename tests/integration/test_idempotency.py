"""Idempotency-Key on the real broker: two ingress replicas share tollway.idempotency.

Each replica is the real app (KafkaBus) behind the middleware with its own
`KafkaIdempotencyStore`; a router task answers from the in-process mock provider.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from deploy.topics import ensure_topics
from ingress.app import REQUEST_ID_HEADER, build_app
from ingress.idempotency import store_key
from ingress.idempotency_kafka import KafkaIdempotencyStore, partition_of
from ingress.idempotency_middleware import IdempotencySettings, with_idempotency
from ingress.kafka_bus import KafkaBus
from ingress.settings import IngressSettings
from schemas import codec, topics
from schemas.settings import KafkaSettings
from tests.integration.conftest import routes_for
from tests.integration.kafka_io import skip_backlog

pytestmark = pytest.mark.kafka

ROUTER_GROUP = "tollway-router-idempotency-it"


def chat(text: str) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}


class Replica:
    def __init__(self, bootstrap: str, mock_url: str, name: str) -> None:
        kafka = KafkaSettings(bootstrap=bootstrap)
        self.bus = KafkaBus(kafka, client_id=f"it-{name}", result_index_max=10_000)
        self.store = KafkaIdempotencyStore(kafka, IdempotencySettings(), client_id=f"it-{name}")
        app = build_app(IngressSettings(sync_timeout_s=30), routes_for(mock_url), self.bus)
        wrapped = with_idempotency(
            app, self.store, IdempotencySettings(), max_body_bytes=1 << 20, max_upload_bytes=1 << 20
        )
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=wrapped), base_url="http://ingress", timeout=30
        )

    async def start(self) -> None:
        await self.bus.start()
        await self.store.start()

    async def stop(self) -> None:
        await self.client.aclose()
        await self.store.stop()
        await self.bus.stop()

    async def post(self, path: str, body: Any, key: str) -> httpx.Response:
        return await self.client.post(path, json=body, headers={"Idempotency-Key": key})


@pytest.fixture
async def replicas(
    kafka_bootstrap: str, mock_url: str, run_router: Any
) -> AsyncIterator[Callable[[str], Any]]:
    await ensure_topics(kafka_bootstrap, (topics.IDEMPOTENCY,))
    await skip_backlog(kafka_bootstrap, ROUTER_GROUP)
    run_router(ROUTER_GROUP)
    started: list[Replica] = []

    async def start(name: str) -> Replica:
        replica = Replica(kafka_bootstrap, mock_url, name)
        await replica.start()
        started.append(replica)
        return replica

    yield start
    for replica in started:
        await replica.stop()


async def test_a_key_answered_by_one_replica_is_replayed_by_another(
    replicas: Callable[[str], Any],
) -> None:
    one: Replica = await replicas("one")
    two: Replica = await replicas("two")
    key = f"it-{uuid.uuid4()}"

    first = await one.post("/v1/async/chat/completions", chat("hello"), key)
    assert first.status_code == 202, first.text
    replay = await two.post("/v1/async/chat/completions", chat("hello"), key)
    assert replay.status_code == 202
    assert replay.content == first.content
    assert replay.headers[REQUEST_ID_HEADER] == first.headers[REQUEST_ID_HEADER]
    assert replay.headers["idempotent-replayed"] == "true"

    other = await two.post("/v1/async/chat/completions", chat("another"), key)
    assert (other.status_code, other.json()["error"]["code"]) == (422, "idempotency_key_reused")

    sync_key = f"it-sync-{uuid.uuid4()}"
    answered = await two.post("/v1/chat/completions", chat("sync"), sync_key)
    assert answered.status_code == 200, answered.text
    again = await one.post("/v1/chat/completions", chat("sync"), sync_key)
    assert (again.status_code, again.content) == (200, answered.content)
    assert again.headers["x-tollway-deployment"] == answered.headers["x-tollway-deployment"]

    late: Replica = await replicas("late")  # started afterwards: indexes the topic from its start
    from_late = await late.post("/v1/async/chat/completions", chat("hello"), key)
    assert (from_late.status_code, from_late.content) == (202, first.content)


async def test_replicas_racing_on_a_new_key_publish_one_request_id_and_keep_one_entry(
    replicas: Callable[[str], Any], kafka_bootstrap: str
) -> None:
    one: Replica = await replicas("race-one")
    two: Replica = await replicas("race-two")
    key = f"it-race-{uuid.uuid4()}"

    answers = await asyncio.gather(
        one.post("/v1/async/chat/completions", chat("race"), key),
        two.post("/v1/async/chat/completions", chat("race"), key),
    )
    assert [a.status_code for a in answers] == [202, 202]
    request_ids = {a.json()["id"] for a in answers}
    assert len(request_ids) == 1  # both ran, as one request downstream

    after = await asyncio.gather(
        one.post("/v1/async/chat/completions", chat("race"), key),
        two.post("/v1/async/chat/completions", chat("race"), key),
    )
    assert {a.json()["id"] for a in after} == request_ids
    assert all(a.headers["idempotent-replayed"] == "true" for a in after)

    # The topic holds at most two entries for the key (the race), and both replicas
    # index the same one: the first in the log.
    name = store_key("default", key)
    tp = TopicPartition(topics.IDEMPOTENCY.name, partition_of(name))
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        offsets: list[int] = []
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1_000)
            for record in batch.get(tp, []):
                if record.key == name.encode():
                    entry = codec.decode("idempotency_entry", record.value or b"")
                    assert entry["status"] == 202
                    offsets.append(record.offset)
    finally:
        await consumer.stop()
    assert 1 <= len(offsets) <= 2
    assert one.store.index[name].offset == two.store.index[name].offset == offsets[0]


async def test_polling_the_deterministic_id_finds_the_result(
    replicas: Callable[[str], Any],
) -> None:
    one: Replica = await replicas("poll")
    key = f"it-poll-{uuid.uuid4()}"
    request_id = (await one.post("/v1/async/chat/completions", chat("poll"), key)).json()["id"]
    for _ in range(200):
        polled = (await one.client.get(f"/v1/async/requests/{request_id}")).json()
        if polled["status"] != "queued":
            break
        await asyncio.sleep(0.05)
    assert polled["status"] == "succeeded"
