"""The router's cache path without Kafka: Executor + RouterCache + a scripted provider.

Exact hit (one provider call for two requests), isolation between teams, semantic hit
and miss, a stream served from the cache, TTL expiry on a hand-driven clock,
Cache-Control, and the hit priced by the cost processor as a saving at cost 0.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
import pytest

from schemas.records import RequestEnvelope, StreamChunk, Usage
from schemas.routes import Deployment, ModelRoute, RoutesConfig
from workers.cache.cache import Embedder, ResponseCache
from workers.cache.canonical import CACHE_CONTROL_KEY, CachePolicy
from workers.cache.hook import RouterCache
from workers.cache.minilm import MiniLM
from workers.cache.store import ExactStore
from workers.cost.catalogue import load_catalogue
from workers.cost.pricing import compute_cost, to_nano_usd
from workers.cost.usage import price_attempt
from workers.providers.base import ProviderReply
from workers.router.execution import Execution, Executor
from workers.router.stream_assembly import StreamAssembler

T0: Final = 1_700_000_000_000
OPENAI: Final = Deployment(name="oai", base_url="http://o.invalid/v1", provider="openai")
ROUTES: Final = RoutesConfig(models={"gpt-4o-mini": ModelRoute(deployments=(OPENAI,))})
USAGE: Final[Usage] = {
    "prompt_tokens": 1_000,
    "completion_tokens": 500,
    "cached_tokens": 0,
    "reasoning_tokens": 0,
    "cache_write_tokens": 0,
}


class Provider:
    """Answers every call with a numbered completion; counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def chat(self, deployment: Deployment, request: dict[str, Any]) -> ProviderReply:
        self.calls += 1
        text = f"Answer number {self.calls}: " + "lorem ipsum " * 60
        body = {
            "id": f"chatcmpl-{self.calls}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1_000, "completion_tokens": 500, "total_tokens": 1_500},
        }
        return ProviderReply(orjson.dumps(body), USAGE.copy(), "gpt-4o-mini-2024-07-18")

    async def aclose(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


@pytest.fixture(scope="module")
def minilm() -> MiniLM:
    return MiniLM.load()


def build(
    embedder: Embedder | None = None, **policy: Any
) -> tuple[Executor, Provider, Clock, ResponseCache]:
    provider, clock = Provider(), Clock()
    cache = ResponseCache(
        ExactStore(max_entries=100, max_bytes=10**7), embedder=embedder, threshold=0.9
    )
    hook = RouterCache(cache, CachePolicy(**policy), ROUTES, clock_ms=clock)
    executor = Executor(
        routes=ROUTES, provider=provider, router_id="r-1", clock_ms=clock, cache=hook
    )
    return executor, provider, clock, cache


_counter = iter(range(10**9))


def envelope(
    text: str = "What is the capital of France?",
    *,
    team: str = "team-a",
    temperature: float | None = 0,
    stream: bool = False,
    metadata: dict[str, str] | None = None,
) -> RequestEnvelope:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": text}],
    }
    if temperature is not None:
        body["temperature"] = temperature
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return {
        "request_id": f"req_{next(_counter)}",
        "team_id": team,
        "key_id": None,
        "mode": "sync",
        "endpoint": "/v1/chat/completions",
        "model": "gpt-4o-mini",
        "body": orjson.dumps(body),
        "received_at_ms": T0,
        "deadline_ms": T0 + 10**9,
        "ingress_id": "i-1",
        "reply_partition": 0,
        "metadata": dict(metadata or {}),
    }


def status(execution: Execution) -> str | None:
    return execution.result["metadata"].get("tollway.cache")


async def test_an_exact_repeat_is_answered_from_the_cache_without_a_provider_call() -> None:
    executor, provider, _, _ = build()
    first = await executor.execute(envelope())
    second = await executor.execute(envelope())
    assert provider.calls == 1
    assert status(first) == "miss"
    assert status(second) == "hit"
    assert second.result["body"] == first.result["body"]
    assert second.result["request_id"] != first.result["request_id"]
    assert second.result["deployment"] == "cache"
    assert second.result["attempts"] == 0
    assert second.result["prompt_tokens"] == 0  # no tokens were consumed
    [hit] = second.attempts
    assert hit["outcome"] == "cache_hit"
    assert (hit["provider"], hit["model"]) == ("openai", "gpt-4o-mini")
    assert hit["prompt_tokens"] == 1_000


async def test_team_b_never_gets_team_a_entry() -> None:
    executor, provider, _, _ = build()
    await executor.execute(envelope(team="team-a"))
    other = await executor.execute(envelope(team="team-b"))
    assert provider.calls == 2
    assert status(other) == "miss"
    assert status(await executor.execute(envelope(team="team-b"))) == "hit"
    assert provider.calls == 2


async def test_a_paraphrase_is_a_semantic_hit_and_an_unrelated_prompt_is_not(
    minilm: MiniLM,
) -> None:
    executor, provider, _, _ = build(minilm)
    await executor.execute(envelope("How do I reset my password?"))
    para = await executor.execute(envelope("How can I reset my password?"))
    assert status(para) == "semantic-hit"
    assert provider.calls == 1
    unrelated = await executor.execute(envelope("Write a haiku about the sea."))
    assert status(unrelated) == "miss"
    # temperature above the bound: exact matching only
    hot = await executor.execute(envelope("How can I reset my password?", temperature=0.9))
    assert status(hot) == "miss"
    assert provider.calls == 3


async def test_a_streamed_request_is_replayed_from_the_cache() -> None:
    executor, provider, _, _ = build()
    first = await executor.execute(envelope())
    chunks: list[StreamChunk] = []
    second = await executor.execute(envelope(stream=True), chunks.append)
    assert provider.calls == 1
    assert status(second) == "hit"
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert len(chunks) > 3  # role, content pieces, finish, usage
    assert [c["cache"] for c in chunks] == ["hit"] + [None] * (len(chunks) - 1)  # the header
    assembler = StreamAssembler()
    for chunk in chunks:
        assembler.add(orjson.loads(chunk["data"]))
    replayed = assembler.completion()
    original = orjson.loads(first.result["body"])
    assert (
        replayed["choices"][0]["message"]["content"] == original["choices"][0]["message"]["content"]
    )
    assert replayed["choices"][0]["finish_reason"] == "stop"
    last = orjson.loads(chunks[-1]["data"])
    assert last["choices"] == []
    assert last["usage"]["prompt_tokens"] == 1_000


async def test_a_streamed_answer_is_stored_for_the_next_request() -> None:
    executor, provider, _, _ = build()
    chunks: list[StreamChunk] = []
    await executor.execute(envelope(stream=True), chunks.append)
    assert chunks  # relayed from the provider
    assert status(await executor.execute(envelope())) == "hit"
    assert provider.calls == 1


async def test_an_entry_expires_after_its_ttl() -> None:
    executor, provider, clock, cache = build(ttl_s=60)
    await executor.execute(envelope())
    clock.now = T0 + 59_999
    assert status(await executor.execute(envelope())) == "hit"
    clock.now = T0 + 60_000
    assert status(await executor.execute(envelope())) == "miss"
    assert provider.calls == 2
    assert cache.store.expirations == 1


async def test_cache_control_no_store_and_no_cache() -> None:
    executor, provider, _, _ = build()
    no_store = {CACHE_CONTROL_KEY: "no-store"}
    await executor.execute(envelope(metadata=no_store))
    await executor.execute(envelope(metadata=no_store))
    assert provider.calls == 2
    assert status(await executor.execute(envelope())) == "miss"  # nothing was stored
    fresh = await executor.execute(envelope(metadata={CACHE_CONTROL_KEY: "no-cache"}))
    assert status(fresh) == "miss"
    assert provider.calls == 4  # no-cache: asked the provider although an entry exists
    assert status(await executor.execute(envelope())) == "hit"


async def test_a_hit_costs_nothing_and_saves_what_the_call_cost() -> None:
    executor, _, _, _ = build()
    await executor.execute(envelope())
    [hit] = (await executor.execute(envelope())).attempts
    catalogue = load_catalogue()
    usage = price_attempt(hit, catalogue, priced_at_ms=T0)
    assert usage is not None
    price = catalogue.lookup("openai", "gpt-4o-mini")
    assert price is not None
    assert usage["cost_status"] == "cache_hit"
    assert usage["cost_nano_usd"] == 0
    assert usage["saved_nano_usd"] == to_nano_usd(compute_cost(USAGE, price)) > 0
    assert usage["deployment"] == "cache"


def test_a_hit_without_tokens_is_still_recorded() -> None:
    attempt: Any = {
        "request_id": "r",
        "attempt_id": "e.1",
        "attempt": 1,
        "team_id": "t",
        "key_id": None,
        "mode": "sync",
        "deployment": "cache",
        "provider": "nowhere",
        "model": "unknown-model",
        "started_at_ms": T0,
        "latency_ms": 0.2,
        "outcome": "cache_hit",
        "http_status": 200,
        "error_type": None,
        "error_code": None,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "router_id": "r",
    }
    usage = price_attempt(attempt, load_catalogue(), priced_at_ms=T0)
    assert usage is not None
    assert (usage["cost_status"], usage["cost_nano_usd"], usage["saved_nano_usd"]) == (
        "cache_hit",
        0,
        0,
    )


async def test_embeddings_requests_bypass_the_cache() -> None:
    executor, _, _, cache = build()
    env = envelope()
    env["endpoint"] = "/v1/embeddings"
    await executor.execute(env)
    assert cache.counters.lookups == 0
