"""The router's rate-limit gate (workers/router/rate_gate.py): 429 for sync, waiting for
queued work, FIFO per (team, key), and the lease released on every end path."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any, Final

import orjson
import pytest

from schemas.errors import ProviderServerError, RateLimited
from schemas.records import Mode, RequestEnvelope
from schemas.routes import Deployment, ModelRoute, RoutesConfig
from tests.unit.test_rate_limits import NO_LIMITS, View, key
from workers.providers.base import ProviderReply
from workers.router.execution import Execution, Executor
from workers.router.fallback import RetryPolicy
from workers.router.rate_gate import RateGate
from workers.router.rate_limits import RETRY_AFTER_KEY, RateLimiter
from workers.tenancy.model import Limits, TeamRecord

MOCK: Final = Deployment(name="mock", base_url="http://mock.invalid/v1")
ROUTES: Final = RoutesConfig(models={"gpt": ModelRoute(deployments=(MOCK,))})
WINDOW_MS: Final = 400  # a short "minute" so that waiting tests take well under a second


class Provider:
    """Answers after `delay_s` with 10 + 20 tokens, or raises `error`."""

    def __init__(self, delay_s: float = 0.0, error: Exception | None = None) -> None:
        self.delay_s = delay_s
        self.error = error
        self.calls: list[float] = []
        self.running = 0
        self.most_running = 0

    async def chat(self, deployment: Deployment, request: dict[str, Any]) -> ProviderReply:
        self.calls.append(time.monotonic())
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.delay_s)
            if self.error is not None:
                raise self.error
            usage = {"prompt_tokens": 10, "completion_tokens": 20, "cached_tokens": 0,
                     "reasoning_tokens": 0, "cache_write_tokens": 0}  # fmt: skip
            return ProviderReply(body=b'{"choices": []}', usage=usage, served_model="m")  # type: ignore[arg-type]  # a literal Usage
        finally:
            self.running -= 1

    async def aclose(self) -> None:
        return None


def view(key_limits: Limits = NO_LIMITS, team_limits: Limits = NO_LIMITS) -> View:
    return View(
        teams=[TeamRecord("acme", "Acme", limits=team_limits)],
        keys=[key("k1", "acme", key_limits), key("k2", "acme")],
    )


def envelope(mode: Mode = "async", key_id: str | None = "k1", **extra: Any) -> RequestEnvelope:
    now = time.time_ns() // 1_000_000
    env: RequestEnvelope = {
        "request_id": f"req_{uuid.uuid4().hex}",
        "team_id": "acme",
        "key_id": key_id,
        "mode": mode,
        "endpoint": "/v1/chat/completions",
        "model": "gpt",
        "body": orjson.dumps({"model": "gpt", "messages": [], "max_tokens": 10}),
        "received_at_ms": now,
        "deadline_ms": now + 60_000,
        "ingress_id": "i",
        "reply_partition": 0 if mode == "sync" else None,
        "metadata": {"trace": "t"},
    }
    env.update(extra)  # type: ignore[typeddict-item]  # a few fields overridden by name
    return env


class Harness:
    """A gate with an executor, counting what waits (as the consumer does)."""

    def __init__(self, gate: RateGate, provider: Provider) -> None:
        self.gate = gate
        self.provider = provider
        self.executor = Executor(
            routes=ROUTES, provider=provider, router_id="t", retry=RetryPolicy(retries_per_route=0)
        )
        self.waiting = 0
        self.most_waiting = 0

    @contextlib.contextmanager
    def _waiting(self) -> Iterator[None]:
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        try:
            yield
        finally:
            self.waiting -= 1

    async def run(self, env: RequestEnvelope) -> Execution:
        return await self.gate.run(
            env,
            lambda: self.executor.execute(env),
            lambda error: Execution(self.executor.failed_result(env, error)),
            self._waiting,
        )


def harness(
    key_limits: Limits = NO_LIMITS,
    team_limits: Limits = NO_LIMITS,
    provider: Provider | None = None,
) -> Harness:
    gate = RateGate(
        view(key_limits, team_limits),
        limiter=RateLimiter(window_ms=WINDOW_MS, slot_ms=10),
        clock_ms=lambda: time.monotonic_ns() // 1_000_000,
        max_nap_s=0.05,
    )
    return Harness(gate, provider or Provider())


async def test_sync_over_the_limit_is_a_429_with_retry_after_and_no_call() -> None:
    h = harness(Limits(rpm=2))
    results = [(await h.run(envelope("sync"))).result for _ in range(5)]
    assert [r["http_status"] for r in results] == [200, 200, 429, 429, 429]
    refused = results[2]
    body = orjson.loads(refused["body"])["error"]
    assert (body["type"], body["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert "key:k1" in body["message"]
    assert "2 requests per minute" in body["message"]
    assert refused["error_type"] == RateLimited.__name__
    assert refused["attempts"] == 0
    assert refused["metadata"] == {"trace": "t", RETRY_AFTER_KEY: "1"}  # 400 ms -> 1 s
    assert len(h.provider.calls) == 2
    assert h.gate.refused == 3
    assert h.waiting == 0


async def test_unlimited_requests_pass_untouched() -> None:
    h = harness(Limits(rpm=1))
    for _ in range(3):
        assert (await h.run(envelope("sync", key_id="k2"))).result["http_status"] == 200
    gate = RateGate(None)
    execution = await gate.run(
        envelope("sync"),
        lambda: h.executor.execute(envelope("sync")),
        lambda error: pytest.fail("an unlimited request was refused"),
        h._waiting,
    )
    assert execution.result["status"] == "succeeded"
    assert h.gate.limiter.scopes == 0


async def test_a_sync_request_past_its_deadline_is_not_charged() -> None:
    h = harness(Limits(rpm=1))
    late = await h.run(envelope("sync", deadline_ms=0))
    assert late.result["error_type"] == "DeadlineExceeded"
    assert (await h.run(envelope("sync"))).result["http_status"] == 200


@pytest.mark.parametrize("mode", ["async", "batch"])
async def test_queued_work_over_the_limit_waits_in_order_spaced_by_the_window(mode: Mode) -> None:
    h = harness(Limits(rpm=2))
    envs = [envelope(mode) for _ in range(5)]
    started = time.monotonic()
    executions = await asyncio.gather(*(h.run(e) for e in envs))
    assert [x.result["status"] for x in executions] == ["succeeded"] * 5
    calls = [t - started for t in h.provider.calls]
    assert h.most_waiting == 3
    assert h.waiting == 0
    # 2 at once, 2 after one window, 1 after two (windows of 0.4 s, counted per 10 ms slot)
    assert calls[1] < 0.1
    assert 0.4 <= calls[2] <= calls[3] < 0.7
    assert 0.8 <= calls[4] < 1.2
    assert [x.result["request_id"] for x in executions] == [e["request_id"] for e in envs]


async def test_fifo_per_key_a_newer_record_does_not_overtake_the_waiting_ones() -> None:
    h = harness(Limits(rpm=1))
    first = await h.run(envelope())
    assert first.result["status"] == "succeeded"
    older = asyncio.create_task(h.run(envelope(request_id="req_older")))
    await asyncio.sleep(0.02)
    newer = asyncio.create_task(h.run(envelope(request_id="req_newer")))
    done_order = [(await fut).result["request_id"] for fut in asyncio.as_completed([older, newer])]
    assert done_order == ["req_older", "req_newer"]


async def test_concurrency_waits_for_a_call_to_end_not_for_a_clock() -> None:
    provider = Provider(delay_s=0.1)
    h = harness(team_limits=Limits(max_concurrency=2), provider=provider)
    h.gate.max_nap_s = 10.0  # only the release may wake the waiters
    started = time.monotonic()
    executions = await asyncio.gather(*(h.run(envelope()) for _ in range(6)))
    assert all(x.result["status"] == "succeeded" for x in executions)
    assert provider.most_running == 2
    assert time.monotonic() - started < 1.0  # 3 rounds of 0.1 s, woken by each release
    sync = await h.run(envelope("sync"))
    assert sync.result["http_status"] == 200
    assert h.gate.limiter.usage("team:acme", time.monotonic_ns() // 1_000_000)[2] == 0


async def test_tpm_is_settled_to_the_tokens_the_attempts_used() -> None:
    h = harness(team_limits=Limits(tpm=10_000))
    await h.run(envelope())
    now_ms = time.monotonic_ns() // 1_000_000
    assert h.gate.limiter.usage("team:acme", now_ms)[:2] == (1, 30)  # 10 + 20, not the estimate


async def test_a_failed_call_releases_and_settles_to_its_usage() -> None:
    failing = Provider(error=ProviderServerError("x"))
    h = harness(Limits(max_concurrency=1, tpm=10_000), provider=failing)
    failed = await h.run(envelope("sync"))
    assert failed.result["status"] == "failed"
    assert failed.result["http_status"] == 502
    now_ms = time.monotonic_ns() // 1_000_000
    assert h.gate.limiter.usage("key:k1", now_ms) == (1, 0, 0)


async def test_an_exception_in_execution_releases() -> None:
    h = harness(Limits(max_concurrency=1))

    async def broken() -> Execution:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        await h.gate.run(envelope(), broken, lambda e: pytest.fail("refused"), h._waiting)
    assert h.gate.limiter.usage("key:k1", time.monotonic_ns() // 1_000_000)[2] == 0
    assert (await h.run(envelope("sync"))).result["http_status"] == 200


async def test_cancellation_during_the_call_and_while_waiting_releases_everything() -> None:
    provider = Provider(delay_s=5.0)
    h = harness(Limits(max_concurrency=1), provider=provider)
    calling = asyncio.create_task(h.run(envelope()))
    await asyncio.sleep(0.05)
    waiting = asyncio.create_task(h.run(envelope()))
    await asyncio.sleep(0.05)
    assert h.waiting == 1
    assert h.gate.waiting == 1
    waiting.cancel()
    calling.cancel()
    for task in (waiting, calling):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert h.waiting == 0
    assert h.gate.waiting == 0
    assert h.gate.limiter.usage("key:k1", time.monotonic_ns() // 1_000_000)[2] == 0
    assert not h.gate._turns
    provider.delay_s = 0.0
    assert (await h.run(envelope("sync"))).result["http_status"] == 200


async def test_a_limit_removed_while_waiting_lets_the_waiters_go() -> None:
    h = harness(Limits(rpm=1))
    h.gate.limiter = RateLimiter()  # a real minute: nobody would get room by waiting
    await h.run(envelope())
    waiting = asyncio.create_task(h.run(envelope()))
    await asyncio.sleep(0.05)
    assert h.waiting == 1
    assert isinstance(h.gate.tenancy, View)
    h.gate.tenancy.keys["k1"] = key("k1", "acme")  # the admin removed the limit
    result = await asyncio.wait_for(waiting, 1.0)
    assert result.result["status"] == "succeeded"
