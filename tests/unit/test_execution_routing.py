"""Executor routing: strategies, circuit breaker, context-window and content-policy chains."""

from __future__ import annotations

from decimal import Decimal
from typing import Final

import pytest

from schemas.errors import ProviderBadRequest, ProviderServerError
from schemas.routes import Deployment, ModelRoute, RoutesConfig
from tests.unit.test_execution import NOW_MS, FakeProvider, _envelope, _reply
from workers.router.execution import Executor
from workers.router.fallback import RetryPolicy
from workers.router.health import HealthBoard

SMALL: Final = Deployment(name="small", base_url="http://s.invalid/v1")
LONG: Final = Deployment(name="long", base_url="http://l.invalid/v1")
SAFE: Final = Deployment(name="safe", base_url="http://x.invalid/v1")
NO_RETRY: Final = RetryPolicy(retries_per_route=0)


def _executor(routes: RoutesConfig, provider: FakeProvider, **kwargs: object) -> Executor:
    return Executor(
        routes=routes, provider=provider, router_id="r", retry=NO_RETRY,
        clock_ms=lambda: NOW_MS, **kwargs,  # type: ignore[arg-type]  # test overrides by name
    )  # fmt: skip


ROUTES: Final = RoutesConfig(
    models={
        "gpt": ModelRoute(
            deployments=(SMALL,),
            context_window_fallbacks=("gpt-long",),
            content_policy_fallbacks=("gpt-safe",),
        ),
        "gpt-long": ModelRoute(deployments=(LONG,)),
        "gpt-safe": ModelRoute(deployments=(SAFE,)),
    }
)


@pytest.mark.parametrize(
    ("code", "served_by"),
    [("context_length_exceeded", "long"), ("content_filter", "safe")],
)
async def test_special_refusals_go_to_their_chain(code: str, served_by: str) -> None:
    refusal = ProviderBadRequest("no", upstream_status=400, upstream_code=code)
    provider = FakeProvider(
        {"small": [refusal], "long": [_reply("long")], "safe": [_reply("safe")]}
    )
    execution = await _executor(ROUTES, provider).execute(_envelope(model="gpt"))
    assert execution.result["status"] == "succeeded"
    assert execution.result["deployment"] == served_by
    assert [a["deployment"] for a in execution.attempts] == ["small", served_by]


async def test_other_bad_requests_do_not_use_the_chains() -> None:
    refusal = ProviderBadRequest("no", upstream_status=400, upstream_code="invalid_value")
    provider = FakeProvider({"small": [refusal]})
    execution = await _executor(ROUTES, provider).execute(_envelope(model="gpt"))
    assert execution.result["http_status"] == 400
    assert len(execution.attempts) == 1


async def test_an_open_breaker_moves_a_deployment_to_the_end() -> None:
    a = Deployment(name="a", base_url="http://a.invalid/v1")
    b = Deployment(name="b", base_url="http://b.invalid/v1")
    routes = RoutesConfig(models={"m": ModelRoute(deployments=(a, b))})
    health = HealthBoard(failure_threshold=2, cooldown_ms=60_000)
    provider = FakeProvider(
        {"a": [ProviderServerError("x"), ProviderServerError("x")], "b": [_reply("b")] * 3}
    )
    executor = _executor(routes, provider, health=health)
    await executor.execute(_envelope(model="m"))
    await executor.execute(_envelope(model="m"))
    assert health.is_open("a")
    third = await executor.execute(_envelope(model="m"))
    assert [x["deployment"] for x in third.attempts] == ["b"]  # a skipped while open


async def test_lowest_cost_tries_the_cheapest_first() -> None:
    dear = Deployment(
        name="dear", base_url="http://d.invalid/v1",
        input_usd_per_mtok=Decimal("10"), output_usd_per_mtok=Decimal("30"),
    )  # fmt: skip
    cheap = Deployment(
        name="cheap", base_url="http://c.invalid/v1",
        input_usd_per_mtok=Decimal("0.15"), output_usd_per_mtok=Decimal("0.60"),
    )  # fmt: skip
    routes = RoutesConfig(
        models={"m": ModelRoute(deployments=(dear, cheap), strategy="lowest_cost")}
    )
    provider = FakeProvider({"cheap": [_reply("cheap")]})
    execution = await _executor(routes, provider).execute(_envelope(model="m"))
    assert execution.result["deployment"] == "cheap"


def test_a_fallback_to_an_undefined_model_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="not defined"):
        RoutesConfig(
            models={"m": ModelRoute(deployments=(SMALL,), context_window_fallbacks=("nope",))}
        )
