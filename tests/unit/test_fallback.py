"""workers/router/fallback.py: retry, fail over, keep every error; no real time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import pytest

from schemas.errors import (
    AllProvidersFailed,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderError,
    ProviderRateLimited,
    ProviderServerError,
    ProviderTimeout,
)
from schemas.routes import Deployment
from workers.router.fallback import RetryPolicy, run_fallback

A: Final = Deployment(name="a", base_url="http://a.invalid/v1")
B: Final = Deployment(name="b", base_url="http://b.invalid/v1")
C: Final = Deployment(name="c", base_url="http://c.invalid/v1")

Outcome = str | ProviderError  # a reply, or the error the call raises


class Script:
    """A fake `call`: each route answers its outcomes in turn; records every call."""

    def __init__(self, outcomes: dict[str, Sequence[Outcome]]) -> None:
        self._outcomes = {name: list(seq) for name, seq in outcomes.items()}
        self.calls: list[str] = []

    async def __call__(self, route: Deployment) -> str:
        self.calls.append(route.name)
        outcome = self._outcomes[route.name].pop(0)
        if isinstance(outcome, ProviderError):
            raise outcome
        return outcome


class Sleeps:
    """A fake `sleep` that only records the requested delays."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def _half() -> float:
    return 0.5  # jitter factor 1.0: the delay is exactly the exponential backoff


async def test_first_route_succeeds() -> None:
    call, sleep = Script({"a": ["ok-a"], "b": ["ok-b"]}), Sleeps()
    assert await run_fallback([A, B], call, sleep=sleep, rand=_half) == (A, "ok-a")
    assert call.calls == ["a"]
    assert sleep.delays == []


async def test_retriable_error_is_retried_then_succeeds() -> None:
    call, sleep = Script({"a": [ProviderServerError("500"), "ok-a"]}), Sleeps()
    policy = RetryPolicy(retries_per_route=2, base_backoff_s=0.1)
    assert await run_fallback([A, B], call, policy=policy, sleep=sleep, rand=_half) == (A, "ok-a")
    assert call.calls == ["a", "a"]
    assert sleep.delays == [0.1]


async def test_retries_exhausted_fail_over_to_the_next_route() -> None:
    errors = [ProviderTimeout("t1"), ProviderConnectionError("c2"), ProviderServerError("s3")]
    call, sleep = Script({"a": errors, "b": ["ok-b"]}), Sleeps()
    policy = RetryPolicy(retries_per_route=2, base_backoff_s=0.1)
    assert await run_fallback([A, B], call, policy=policy, sleep=sleep, rand=_half) == (B, "ok-b")
    assert call.calls == ["a", "a", "a", "b"]
    assert sleep.delays == [0.1, 0.2]  # exponential; no sleep before failing over


async def test_default_policy_retries_once_per_route() -> None:
    call, sleep = (
        Script({"a": [ProviderServerError("1"), ProviderServerError("2")], "b": ["ok"]}),
        Sleeps(),
    )
    assert await run_fallback([A, B], call, sleep=sleep, rand=_half) == (B, "ok")
    assert call.calls == ["a", "a", "b"]
    assert len(sleep.delays) == 1


async def test_bad_request_stops_at_once() -> None:
    bad = ProviderBadRequest("400", upstream_status=400, upstream_code="context_length_exceeded")
    call, sleep = Script({"a": [ProviderServerError("500"), bad], "b": ["ok-b"]}), Sleeps()
    with pytest.raises(ProviderBadRequest) as info:
        await run_fallback([A, B], call, sleep=sleep, rand=_half)
    assert info.value is bad
    assert call.calls == ["a", "a"]  # not retried, not failed over
    assert len(sleep.delays) == 1


async def test_non_retriable_provider_error_fails_over_without_retry() -> None:
    auth = ProviderError("401", upstream_status=401)
    call, sleep = Script({"a": [auth], "b": ["ok-b"]}), Sleeps()
    policy = RetryPolicy(retries_per_route=3)
    assert await run_fallback([A, B], call, policy=policy, sleep=sleep, rand=_half) == (B, "ok-b")
    assert call.calls == ["a", "b"]
    assert sleep.delays == []


async def test_all_fail_keeps_every_error_in_order() -> None:
    a1, a2 = ProviderServerError("a1"), ProviderTimeout("a2")
    b1 = ProviderError("b1", upstream_status=403)
    c1, c2 = ProviderRateLimited("c1", retry_after_s=1.0), ProviderConnectionError("c2")
    call, sleep = Script({"a": [a1, a2], "b": [b1], "c": [c1, c2]}), Sleeps()
    with pytest.raises(AllProvidersFailed) as info:
        await run_fallback([A, B, C], call, sleep=sleep, rand=_half)
    assert info.value.errors == [("a", a1), ("a", a2), ("b", b1), ("c", c1), ("c", c2)]
    assert info.value.last is c2
    assert call.calls == ["a", "a", "b", "c", "c"]
    assert sleep.delays == [0.05, 1.0]  # c1's Retry-After is honoured


async def test_no_routes() -> None:
    call, sleep = Script({}), Sleeps()
    with pytest.raises(AllProvidersFailed) as info:
        await run_fallback([], call, sleep=sleep, rand=_half)
    assert info.value.errors == []
    assert call.calls == []


async def test_zero_retries_goes_straight_to_the_next_route() -> None:
    call, sleep = Script({"a": [ProviderServerError("500")], "b": ["ok-b"]}), Sleeps()
    policy = RetryPolicy(retries_per_route=0)
    assert await run_fallback([A, B], call, policy=policy, sleep=sleep, rand=_half) == (B, "ok-b")
    assert sleep.delays == []


async def test_unexpected_exceptions_are_not_swallowed() -> None:
    async def broken(_: Deployment) -> str:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await run_fallback([A, B], broken, sleep=Sleeps(), rand=_half)


# --- RetryPolicy.backoff_s ---------------------------------------------------------------

POLICY: Final = RetryPolicy(retries_per_route=5, base_backoff_s=0.1, max_backoff_s=2.0)


@pytest.mark.parametrize(
    ("retry", "error", "rand", "expected"),
    [
        # exponential, jitter 0.5x (rand 0) .. 1.5x (rand -> 1)
        (1, ProviderServerError("x"), 0.5, 0.1),
        (1, ProviderServerError("x"), 0.0, 0.05),
        (1, ProviderServerError("x"), 0.999, 0.1499),
        (2, ProviderTimeout("x"), 0.5, 0.2),
        (3, ProviderConnectionError("x"), 0.5, 0.4),
        (4, ProviderServerError("x"), 0.0, 0.4),
        (5, ProviderServerError("x"), 0.5, 1.6),
        (6, ProviderServerError("x"), 0.5, 2.0),  # capped
        (30, ProviderServerError("x"), 0.999, 2.0),
        # Retry-After honoured (no jitter), capped at max_backoff_s
        (1, ProviderRateLimited("x", retry_after_s=1.5), 0.9, 1.5),
        (3, ProviderRateLimited("x", retry_after_s=0.0), 0.9, 0.0),
        (1, ProviderRateLimited("x", retry_after_s=120.0), 0.1, None),  # too long: fail over
        # a 429 without Retry-After backs off exponentially like any retriable error
        (2, ProviderRateLimited("x"), 0.5, 0.2),
    ],
)
def test_backoff_s(retry: int, error: ProviderError, rand: float, expected: float | None) -> None:
    assert POLICY.backoff_s(retry, error, rand) == pytest.approx(expected)


@pytest.mark.parametrize("retry", range(1, 12))
@pytest.mark.parametrize("rand", [0.0, 0.25, 0.5, 0.75, 0.999999])
def test_backoff_jitter_bounds(retry: int, rand: float) -> None:
    exponential = POLICY.base_backoff_s * 2 ** (retry - 1)
    delay = POLICY.backoff_s(retry, ProviderServerError("x"), rand)
    assert min(0.5 * exponential, POLICY.max_backoff_s) <= delay
    assert delay <= min(1.5 * exponential, POLICY.max_backoff_s)


async def test_a_retry_after_longer_than_the_cap_fails_over_at_once() -> None:
    slow_down = ProviderRateLimited("429", retry_after_s=60.0)
    call, sleep = Script({"a": [slow_down], "b": ["ok-b"]}), Sleeps()
    policy = RetryPolicy(retries_per_route=3, max_backoff_s=5.0)
    assert await run_fallback([A, B], call, policy=policy, sleep=sleep, rand=_half) == (B, "ok-b")
    assert call.calls == ["a", "b"]
    assert sleep.delays == []
