"""The response cache with routers on the real broker and the mock provider over HTTP.

Exact hit (the mock is called once for two requests), entries shared through
tollway.cache (a router that never saw the request answers it from the topic), team
isolation, a streamed request served from the cache, TTL expiry.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import pytest

from schemas import codec, topics
from schemas.records import Attempt, RequestEnvelope, Result
from schemas.routes import Deployment
from schemas.settings import KafkaSettings
from tests.integration.conftest import routes_for
from tests.integration.kafka_io import TopicReader, envelope, produce
from workers.cache.service import CacheService
from workers.cache.settings import CacheSettings
from workers.providers.base import ProviderReply
from workers.providers.registry import build_registry
from workers.router.consumer import Router
from workers.router.execution import Executor
from workers.router.settings import RouterSettings

pytestmark = pytest.mark.kafka


class CountingProvider:
    """The real provider registry, counting the calls that reach the mock per prompt (the
    request topic also holds other tests' records, which a new group reads too)."""

    def __init__(self) -> None:
        self.inner = build_registry({})
        self.prompts: list[str] = []

    def calls(self, text: str) -> int:
        return self.prompts.count(text)

    async def chat(self, deployment: Deployment, request: dict[str, Any]) -> ProviderReply:
        self.prompts.append(str(request["messages"][-1]["content"]))
        reply: ProviderReply = await self.inner.chat(deployment, request)
        return reply

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Stack:
    kafka: KafkaSettings
    mock_url: str
    provider: CountingProvider = field(default_factory=CountingProvider)
    running: list[tuple[Router, asyncio.Task[None], CacheService]] = field(default_factory=list)

    async def router(self, group: str, **cache: Any) -> CacheService:
        routes = routes_for(self.mock_url)
        service = CacheService(
            self.kafka,
            routes,
            CacheSettings(enabled=True, semantic=False, purge_interval_s=0.2, **cache),
        )
        await service.start()
        assert service.sync is not None
        assert await service.sync.follower.wait_ready(30)
        executor = Executor(
            routes=routes,
            provider=self.provider,
            router_id=f"cache-it-{uuid.uuid4().hex[:6]}",
            cache=service.hook,
        )
        router = Router(self.kafka, RouterSettings(group_id=group, commit_interval_ms=50), executor)
        self.running.append((router, asyncio.create_task(router.run()), service))
        return service

    async def stop_all(self) -> None:
        for router, task, service in self.running:
            router.stop()
            await asyncio.gather(task, return_exceptions=True)
            await service.stop()
        self.running.clear()


@pytest.fixture
async def stack(kafka_bootstrap: str, mock_url: str) -> AsyncIterator[Stack]:
    s = Stack(KafkaSettings(bootstrap=kafka_bootstrap), mock_url)
    yield s
    await s.stop_all()


def request(
    text: str, *, team: str = "default", stream: bool = False, **kw: Any
) -> RequestEnvelope:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": text}],
        "temperature": 0,
    }
    if stream:
        body["stream"] = True
    return envelope(body=orjson.dumps(body), team_id=team, **kw)


async def answer(bootstrap: str, env: RequestEnvelope) -> tuple[Result, list[Attempt]]:
    results = await TopicReader(bootstrap, topics.RESULTS.name).start()
    attempts = await TopicReader(bootstrap, topics.ATTEMPTS.name).start()
    try:
        await produce(
            bootstrap,
            topics.REQUESTS_INTERACTIVE.name,
            [(env["request_id"].encode(), codec.encode("request", env))],
        )
        [(_, result)] = await results.collect("result", {env["request_id"]})
        tried = await attempts.collect("attempt", {env["request_id"]}, timeout_s=5)
    finally:
        await results.stop()
        await attempts.stop()
    return cast("Result", result), [cast("Attempt", a) for _, a in tried]


def cache_status(result: Result) -> str | None:
    return result["metadata"].get("tollway.cache")


async def test_exact_hit_is_answered_without_calling_the_provider(
    kafka_bootstrap: str, stack: Stack
) -> None:
    await stack.router("cache-it-exact")
    text = f"What is 2 + 2? ({uuid.uuid4().hex})"
    first, _ = await answer(kafka_bootstrap, request(text))
    second, attempts = await answer(kafka_bootstrap, request(text))
    assert stack.provider.calls(text) == 1
    assert (cache_status(first), cache_status(second)) == ("miss", "hit")
    assert second["status"] == "succeeded"
    assert second["body"] == first["body"]
    assert second["deployment"] == "cache"
    assert [a["outcome"] for a in attempts] == ["cache_hit"]
    assert attempts[0]["completion_tokens"] == first["completion_tokens"] > 0


async def test_entries_are_shared_through_the_topic_and_isolated_by_team(
    kafka_bootstrap: str, stack: Stack
) -> None:
    text = f"Name a prime number. ({uuid.uuid4().hex})"
    await stack.router("cache-it-shared")
    first, _ = await answer(kafka_bootstrap, request(text))
    assert cache_status(first) == "miss"
    await stack.stop_all()  # the router that made the entry is gone
    fresh = await stack.router("cache-it-shared")  # a new router, an empty cache, the topic
    assert fresh.sync is not None
    async with asyncio.timeout(10):  # the entry read from tollway.cache
        await fresh.sync.follower.catch_up(fresh.sync.follower.tps)
    assert len(fresh.cache.store) >= 1
    second, _ = await answer(kafka_bootstrap, request(text))
    assert cache_status(second) == "hit"
    assert second["body"] == first["body"]
    assert stack.provider.calls(text) == 1
    other_team, _ = await answer(kafka_bootstrap, request(text, team="other-team"))
    assert cache_status(other_team) == "miss"
    assert other_team["body"] != first["body"]  # the mock's ids differ per answer
    assert stack.provider.calls(text) == 2


async def test_a_streamed_request_is_served_from_the_cache(
    kafka_bootstrap: str, stack: Stack
) -> None:
    await stack.router("cache-it-stream")
    text = f"Tell me a fact about owls. ({uuid.uuid4().hex})"
    first, _ = await answer(kafka_bootstrap, request(text))
    partition = 3
    replies = await TopicReader(kafka_bootstrap, topics.REPLIES.name).start()
    try:
        env = request(text, stream=True, mode="sync", reply_partition=partition)
        await produce(
            kafka_bootstrap,
            topics.REQUESTS_INTERACTIVE.name,
            [(env["request_id"].encode(), codec.encode("request", env))],
        )
        items: list[tuple[str, object]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
            codec.record_name(cast("bytes", v)) == "result" for _, v in items
        ):
            items += await replies.collect(None, {env["request_id"]}, count=1, timeout_s=1)
    finally:
        await replies.stop()
    decoded = [cast("bytes", v) for _, v in items]
    chunks = [
        codec.decode("stream_chunk", v) for v in decoded if codec.record_name(v) == "stream_chunk"
    ]
    final = codec.decode("result", decoded[-1])
    assert stack.provider.calls(text) == 1
    assert cache_status(final) == "hit"
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    text_out = "".join(
        (orjson.loads(c["data"])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
        for c in chunks
    )
    assert text_out == orjson.loads(first["body"])["choices"][0]["message"]["content"]


async def test_an_entry_is_not_served_after_its_ttl(kafka_bootstrap: str, stack: Stack) -> None:
    # 5 s: long enough that the second request lands before expiry on a loaded machine.
    service = await stack.router("cache-it-ttl", ttl_s=5)
    text = f"Spell 'cat'. ({uuid.uuid4().hex})"
    first, _ = await answer(kafka_bootstrap, request(text))
    second, _ = await answer(kafka_bootstrap, request(text))
    assert (cache_status(first), cache_status(second)) == ("miss", "hit")
    await asyncio.sleep(5.2)
    third, _ = await answer(kafka_bootstrap, request(text))
    assert cache_status(third) == "miss"
    assert stack.provider.calls(text) == 2
    assert service.cache.store.expirations >= 1  # dropped by the purge or by the lookup
