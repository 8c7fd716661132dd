"""Streaming execution (workers/router/execution.py StreamRelay): relay, usage, failover rules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from schemas.errors import ProviderServerError
from schemas.records import RequestEnvelope, StreamChunk, Usage
from schemas.routes import Deployment, ModelRoute, RoutesConfig
from workers.providers.base import ProviderReply, StreamPiece
from workers.router.execution import Executor
from workers.router.fallback import RetryPolicy

A = Deployment(name="a", base_url="http://a.invalid/v1")
B = Deployment(name="b", base_url="http://b.invalid/v1")
ROUTES = RoutesConfig(models={"m": ModelRoute(deployments=(A, B))})
USAGE: Usage = {
    "prompt_tokens": 5,
    "completion_tokens": 2,
    "cached_tokens": 0,
    "reasoning_tokens": 0,
    "cache_write_tokens": 0,
}


def _chunk(text: str | None, *, usage: bool = False) -> StreamPiece:
    if usage:
        body: dict[str, Any] = {"id": "c", "model": "m-up", "choices": [], "usage": USAGE}
        return StreamPiece(orjson.dumps(body), USAGE)
    delta = {"index": 0, "delta": {"content": text}, "finish_reason": None}
    return StreamPiece(orjson.dumps({"id": "c", "model": "m-up", "choices": [delta]}))


class FakeStreamer:
    """`chat_stream` per deployment: a list of pieces, optionally failing after `fail_after`."""

    def __init__(self, plans: dict[str, tuple[list[StreamPiece], int | None]]) -> None:
        self.plans = plans
        self.requests: list[dict[str, Any]] = []

    async def chat(self, deployment: Deployment, request: dict[str, Any]) -> ProviderReply:
        raise AssertionError("streaming requests must use chat_stream")

    async def chat_stream(
        self, deployment: Deployment, request: dict[str, Any]
    ) -> AsyncIterator[StreamPiece]:
        self.requests.append(request)
        pieces, fail_after = self.plans[deployment.name]
        for i, piece in enumerate(pieces):
            if fail_after is not None and i == fail_after:
                raise ProviderServerError(f"{deployment.name} broke")
            yield piece
        if fail_after is not None and fail_after >= len(pieces):
            raise ProviderServerError(f"{deployment.name} broke")

    async def aclose(self) -> None:
        return None


def _envelope(include_usage: bool = False) -> RequestEnvelope:
    body: dict[str, Any] = {
        "model": "m",
        "stream": True,
        "messages": [{"role": "user", "content": "x"}],
    }
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    return {
        "request_id": "req_1", "team_id": "t", "key_id": None, "mode": "sync",
        "endpoint": "/v1/chat/completions", "model": "m", "body": orjson.dumps(body),
        "received_at_ms": 0, "deadline_ms": 10**15, "ingress_id": "i", "reply_partition": 0,
        "metadata": {},
    }  # fmt: skip


async def _run(
    provider: FakeStreamer, include_usage: bool = False
) -> tuple[list[StreamChunk], Any]:
    emitted: list[StreamChunk] = []
    executor = Executor(
        routes=ROUTES, provider=provider, router_id="r", retry=RetryPolicy(retries_per_route=0)
    )
    execution = await executor.execute(_envelope(include_usage), emitted.append)
    return emitted, execution


async def test_chunks_are_relayed_in_order_and_the_result_holds_the_whole_answer() -> None:
    provider = FakeStreamer({"a": ([_chunk("Hel"), _chunk("lo"), _chunk(None, usage=True)], None)})
    emitted, execution = await _run(provider)
    assert [c["seq"] for c in emitted] == [0, 1]  # the usage chunk: the client did not ask
    assert provider.requests[0]["stream_options"] == {"include_usage": True}  # billed anyway
    result = execution.result
    assert result["status"] == "succeeded"
    assert orjson.loads(result["body"])["choices"][0]["message"]["content"] == "Hello"
    assert result["prompt_tokens"] == 5
    assert execution.attempts[0]["completion_tokens"] == 2


async def test_the_usage_chunk_is_relayed_when_the_client_asked() -> None:
    provider = FakeStreamer({"a": ([_chunk("x"), _chunk(None, usage=True)], None)})
    emitted, _ = await _run(provider, include_usage=True)
    assert len(emitted) == 2
    assert orjson.loads(emitted[-1]["data"])["usage"]["prompt_tokens"] == 5


async def test_a_failure_before_the_first_chunk_fails_over() -> None:
    provider = FakeStreamer({"a": ([_chunk("never")], 0), "b": ([_chunk("from b")], None)})
    emitted, execution = await _run(provider)
    assert execution.result["deployment"] == "b"
    assert [a["outcome"] for a in execution.attempts] == ["error", "ok"]
    assert len(emitted) == 1


@pytest.mark.parametrize("fail_after", [1, 2])
async def test_a_failure_after_chunks_ends_the_plan(fail_after: int) -> None:
    provider = FakeStreamer({"a": ([_chunk("a"), _chunk("b")], fail_after), "b": ([], None)})
    emitted, execution = await _run(provider)
    assert len(emitted) == fail_after
    assert execution.result["status"] == "failed"
    assert execution.result["error_type"] == "StreamBroken"
    assert len(execution.attempts) == 1  # b was never called


class SlowFirstChunk(FakeStreamer):
    """Deployment `a` waits `delay_s` before its first chunk; `closed` records the clean-up."""

    def __init__(self, delay_s: float) -> None:
        super().__init__({"a": ([_chunk("late")], None), "b": ([_chunk("from b")], None)})
        self.delay_s = delay_s
        self.closed: list[str] = []

    async def chat_stream(
        self, deployment: Deployment, request: dict[str, Any]
    ) -> AsyncIterator[StreamPiece]:
        try:
            if deployment.name == "a":
                await asyncio.sleep(self.delay_s)
            async for piece in super().chat_stream(deployment, request):
                yield piece
        finally:
            self.closed.append(deployment.name)


def _routes_with_first_token_timeout(timeout_s: float) -> RoutesConfig:
    slow_a = Deployment(name="a", base_url="http://a.invalid/v1", first_token_timeout_s=timeout_s)
    return RoutesConfig(models={"m": ModelRoute(deployments=(slow_a, B))})


async def test_no_first_chunk_in_time_fails_over_and_closes_the_upstream_stream() -> None:
    provider = SlowFirstChunk(delay_s=5.0)
    emitted: list[StreamChunk] = []
    executor = Executor(
        routes=_routes_with_first_token_timeout(0.05),
        provider=provider,
        router_id="r",
        retry=RetryPolicy(retries_per_route=0),
    )
    execution = await executor.execute(_envelope(), emitted.append)
    assert execution.result["deployment"] == "b"
    assert [a["outcome"] for a in execution.attempts] == ["error", "ok"]
    assert execution.attempts[0]["error_type"] == "ProviderTimeout"
    assert [orjson.loads(c["data"])["choices"][0]["delta"]["content"] for c in emitted] == [
        "from b"
    ]
    assert provider.closed == ["a", "b"]


async def test_a_first_chunk_in_time_streams_normally() -> None:
    provider = SlowFirstChunk(delay_s=0.0)
    executor = Executor(
        routes=_routes_with_first_token_timeout(5.0),
        provider=provider,
        router_id="r",
        retry=RetryPolicy(retries_per_route=0),
    )
    emitted: list[StreamChunk] = []
    execution = await executor.execute(_envelope(), emitted.append)
    assert execution.result["deployment"] == "a"
    assert len(emitted) == 1
