"""POST /v1/async/bulk/chat/completions on the real broker (KafkaBus, acks=all).

1,000 items in one call: every queued id is on tollway.requests.interactive exactly
once, carrying its own item (the entry's index maps to the right body), and a refused
item is not on the topic at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from ingress.app import build_app
from ingress.bulk import BULK_PATH
from ingress.bulk_api import bulk_routes
from ingress.kafka_bus import KafkaBus
from ingress.settings import IngressSettings
from schemas import codec, topics
from schemas.records import RequestEnvelope
from schemas.settings import KafkaSettings
from tests.integration.conftest import routes_for
from tests.integration.kafka_io import TopicReader

pytestmark = pytest.mark.kafka

N_ITEMS = 1_000


def _item(index: int) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"item {index}"}]}


@pytest.fixture
async def ingress(kafka_bootstrap: str) -> AsyncIterator[httpx.AsyncClient]:
    """The ingress app (no router: acceptance only) on the broker."""
    bus = KafkaBus(
        KafkaSettings(bootstrap=kafka_bootstrap), client_id="it-bulk", result_index_max=10_000
    )
    await bus.start()
    app = build_app(
        IngressSettings(), routes_for("http://127.0.0.1:9/v1"), bus, extra_routes=[bulk_routes]
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://ingress", timeout=60
    ) as client:
        for _ in range(100):
            if (await client.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.1)
        yield client
    await bus.stop()


async def _on_topic(reader: TopicReader, ids: set[str], count: int) -> list[tuple[str, object]]:
    found = await reader.collect(None, ids, count=count, timeout_s=60)
    more = await reader.collect(None, ids, count=1, timeout_s=3)  # a duplicate would show here
    return found + more


async def test_a_thousand_items_are_each_on_the_topic_exactly_once(
    kafka_bootstrap: str, ingress: httpx.AsyncClient
) -> None:
    reader = await TopicReader(kafka_bootstrap, topics.REQUESTS_INTERACTIVE.name).start()
    try:
        response = await ingress.post(
            BULK_PATH, json={"requests": [_item(i) for i in range(N_ITEMS)]}
        )
        assert response.status_code == 202, response.text[:500]
        body = response.json()
        assert (body["queued"], body["refused"]) == (N_ITEMS, 0)
        ids = [entry["id"] for entry in body["data"]]
        assert [entry["index"] for entry in body["data"]] == list(range(N_ITEMS))
        assert len(set(ids)) == N_ITEMS
        found = await _on_topic(reader, set(ids), N_ITEMS)
    finally:
        await reader.stop()
    keys = [key for key, _ in found]
    assert sorted(keys) == sorted(ids)  # each id once: none missing, none twice
    by_id = {
        key: codec.decode("request", value) for key, value in found if isinstance(value, bytes)
    }
    assert len(by_id) == N_ITEMS
    for index, request_id in enumerate(ids):
        envelope = by_id[request_id]
        assert envelope["mode"] == "async"
        content = orjson.loads(envelope["body"])["messages"][0]["content"]
        assert content == f"item {index}"


async def test_a_refused_item_is_not_on_the_topic(
    kafka_bootstrap: str, ingress: httpx.AsyncClient
) -> None:
    reader = await TopicReader(kafka_bootstrap, topics.REQUESTS_INTERACTIVE.name).start()
    try:
        items = [_item(0), {**_item(1), "model": "no-such-model"}, _item(2)]
        response = await ingress.post(BULK_PATH, json={"requests": items})
        assert response.status_code == 202
        data = response.json()["data"]
        assert data[1]["error"]["code"] == "model_not_found"
        queued = {data[0]["id"], data[2]["id"]}
        written = await _everything(reader, until=2)
    finally:
        await reader.stop()
    assert sorted(envelope["request_id"] for envelope in written) == sorted(queued)
    contents = {orjson.loads(e["body"])["messages"][0]["content"] for e in written}
    assert contents == {"item 0", "item 2"}


async def _everything(reader: TopicReader, *, until: int) -> list[RequestEnvelope]:
    """Every record written since the reader started: `until` of them, then 3 s more."""
    out: list[RequestEnvelope] = []
    deadline = time.monotonic() + 60
    quiet_until: float | None = None
    while time.monotonic() < (quiet_until or deadline):
        batch = await reader.consumer.getmany(timeout_ms=200)
        for records in batch.values():
            out.extend(codec.decode("request", record.value or b"") for record in records)
        if quiet_until is None and len(out) >= until:
            quiet_until = time.monotonic() + 3
    return out
