"""The router's reservations around each attempt (workers/router/budgets.py + execution.py).

Executor + AttemptBudgets over `FixedBudgetView` (real decisions, states handed in),
a scripted provider and a small catalogue: no Kafka, no sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

import orjson
import pytest

from schemas.errors import ProviderServerError
from schemas.records import BudgetState, Mode, RequestEnvelope, Usage
from schemas.routes import Deployment, ModelRoute, RoutesConfig
from workers.budget.config import BudgetsConfig, parse_budgets
from workers.budget.partitioning import usage_partition
from workers.budget.reservations import ReservationLedger
from workers.budget.view import FixedBudgetView
from workers.cost.catalogue import Catalogue, CatalogueEntry
from workers.providers.base import ProviderReply
from workers.router.budgets import AttemptBudgets
from workers.router.execution import Executor
from workers.router.fallback import RetryPolicy

NOW: Final = 1_800_000_000_000
USD: Final = 1_000_000_000
TEAM: Final = "acme"
PRIMARY: Final = Deployment(name="primary", base_url="http://p.invalid/v1", model="priced")
BACKUP: Final = Deployment(name="backup", base_url="http://b.invalid/v1", model="priced")
ROUTES: Final = RoutesConfig(
    models={
        "gpt": ModelRoute(deployments=(PRIMARY, BACKUP)),
        "free": ModelRoute(deployments=(Deployment(name="x", base_url="http://x.invalid/v1"),)),
    }
)
# $1 per 1M input tokens, $1,000 per 1M output tokens: 1 output token = 1,000,000 nano-USD
CATALOGUE: Final = Catalogue(
    "test-1", {"priced": CatalogueEntry(provider="openai", input="1", output="1000")}
)
USAGE: Final[Usage] = {
    "prompt_tokens": 10,
    "completion_tokens": 80,
    "cached_tokens": 0,
    "reasoning_tokens": 0,
    "cache_write_tokens": 0,
}
ACTUAL_NANO: Final = 10 * 1_000 + 80 * 1_000_000  # what the cost processor will bill
HEARTBEAT_KEY: Final = f"global:partition-{usage_partition(TEAM)}:1h"
NO_RETRY: Final = RetryPolicy(retries_per_route=0)


def config(*lines: str) -> BudgetsConfig:
    return parse_budgets("\n".join(f"- {{{line}}}" for line in lines))


HARD_1USD: Final = config(f'scope: "team:{TEAM}", window: 1h, limit_usd: "1.00"')


def heartbeat(at: int = NOW - 200) -> BudgetState:
    return {
        "scope_type": "global",
        "scope_id": HEARTBEAT_KEY.split(":")[1],
        "window": "1h",
        "spent_nano_usd": 0,
        "limit_nano_usd": None,
        "remaining_nano_usd": None,
        "status": "ok",
        "enforcement": "soft",
        "frees_at_ms": None,
        "watermark_ms": at,
        "updated_at_ms": at,
    }


def team_state(spent: int, limit: int = USD) -> BudgetState:
    return {
        "scope_type": "team",
        "scope_id": TEAM,
        "window": "1h",
        "spent_nano_usd": spent,
        "limit_nano_usd": limit,
        "remaining_nano_usd": max(0, limit - spent),
        "status": "exceeded" if spent >= limit else "ok",
        "enforcement": "hard",
        "frees_at_ms": NOW + 600_000 if spent >= limit else None,
        "watermark_ms": NOW - 500,
        "updated_at_ms": NOW - 500,
    }


class Provider:
    """Answers after `delay_s`, or raises from `script` (per deployment, in order)."""

    def __init__(
        self,
        *,
        delay_s: float = 0.0,
        script: dict[str, list[BaseException]] | None = None,
        during: Callable[[], None] | None = None,
    ) -> None:
        self.delay_s = delay_s
        self.script = script or {}
        self.during = during
        self.calls: list[str] = []

    async def chat(self, deployment: Deployment, request: dict[str, Any]) -> ProviderReply:
        self.calls.append(deployment.name)
        if self.during is not None:
            self.during()
        await asyncio.sleep(self.delay_s)
        queued = self.script.get(deployment.name)
        if queued:
            raise queued.pop(0)
        return ProviderReply(body=b"{}", usage=USAGE, served_model="priced")

    async def aclose(self) -> None:
        return None


def envelope(
    model: str = "gpt", *, max_tokens: int = 100, mode: Mode = "sync", i: int = 0
) -> RequestEnvelope:
    body = orjson.dumps(
        {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}
    )
    return {
        "request_id": f"req_{i}",
        "team_id": TEAM,
        "key_id": None,
        "mode": mode,
        "endpoint": "/v1/chat/completions",
        "model": model,
        "body": body,
        "received_at_ms": NOW,
        "deadline_ms": NOW + 60_000,
        "ingress_id": "i",
        "reply_partition": 0 if mode == "sync" else None,
        "metadata": {},
    }


def worst_for(env: RequestEnvelope, max_tokens: int = 100) -> int:
    prompt = -(-len(env["body"]) // 3)
    return prompt * 1_000 + max_tokens * 1_000_000


def make(
    provider: Provider,
    budgets: BudgetsConfig = HARD_1USD,
    states: dict[str, BudgetState] | None = None,
    *,
    catalogue: Catalogue = CATALOGUE,
) -> tuple[Executor, AttemptBudgets]:
    view = FixedBudgetView(
        budgets, {HEARTBEAT_KEY: heartbeat(), **(states or {})}, clock_ms=lambda: NOW
    )
    guard = AttemptBudgets(view, catalogue, ledger=ReservationLedger(pending_hold_ms=5_000))
    executor = Executor(
        routes=ROUTES,
        provider=provider,
        router_id="r",
        retry=NO_RETRY,
        clock_ms=lambda: NOW,
        budgets=guard,
    )
    return executor, guard


def error_of(body: bytes) -> dict[str, Any]:
    error: dict[str, Any] = orjson.loads(body)["error"]
    return error


async def test_an_attempt_holds_its_worst_case_then_settles_to_the_actual_cost() -> None:
    seen: list[int] = []
    provider = Provider(during=lambda: seen.append(guard.ledger.reserved_total()))
    executor, guard = make(provider)
    env = envelope()
    execution = await executor.execute(env)
    assert execution.result["status"] == "succeeded"
    assert seen == [worst_for(env)]  # held while the provider worked
    assert guard.ledger.reserved_total() == 0
    assert guard.ledger.pending_for(f"team:{TEAM}:1h", NOW) == ACTUAL_NANO


async def test_a_spent_budget_is_the_final_result_and_no_provider_is_called() -> None:
    provider = Provider()
    executor, guard = make(provider, states={f"team:{TEAM}:1h": team_state(USD)})
    execution = await executor.execute(envelope())
    result = execution.result
    assert (result["status"], result["http_status"]) == ("failed", 429)
    assert error_of(result["body"])["code"] == "budget_exceeded"
    assert result["error_type"] == "BudgetExceeded"
    assert provider.calls == []
    assert execution.attempts == []
    assert guard.ledger.reserved_total() == 0


async def test_unknown_state_fails_closed_with_503() -> None:
    provider = Provider()
    executor, _ = make(provider)
    executor.budgets.view.states.clear()  # type: ignore[union-attr]  # set by make()
    result = (await executor.execute(envelope())).result
    assert (result["http_status"], error_of(result["body"])["code"]) == (
        503,
        "service_unavailable",
    )
    assert provider.calls == []


async def test_concurrent_requests_never_hold_more_than_the_limit() -> None:
    """100 requests at once against $1: each may cost up to ~$0.1, so about 9 fit; the rest
    are refused with budget_exceeded before any provider call, and nothing stays held."""
    provider = Provider(delay_s=0.01)
    executor, guard = make(provider)
    envs = [envelope(i=i) for i in range(100)]
    results = [e.result for e in await asyncio.gather(*(executor.execute(e) for e in envs))]
    ok = [r for r in results if r["status"] == "succeeded"]
    refused = [r for r in results if r["status"] == "failed"]
    assert len(ok) == USD // worst_for(envs[0])
    assert len(ok) * ACTUAL_NANO <= USD
    assert all(r["http_status"] == 429 for r in refused)
    assert all(error_of(r["body"])["code"] == "budget_exceeded" for r in refused)
    assert len(provider.calls) == len(ok)
    assert guard.ledger.reserved_total() == 0


async def test_settled_spend_counts_until_the_state_shows_it() -> None:
    executor, guard = make(Provider())
    for i in range(12):
        await executor.execute(envelope(i=i))
    # 0.08 each settled; with the state still at $0 the ledger's pending stops the 13th
    assert guard.ledger.pending_for(f"team:{TEAM}:1h", NOW) == 12 * ACTUAL_NANO
    refused = (await executor.execute(envelope(i=99))).result
    assert refused["http_status"] == 429


async def test_a_failed_attempt_releases_and_the_fallback_holds_again() -> None:
    provider = Provider(script={"primary": [ProviderServerError("boom", upstream_status=500)]})
    executor, guard = make(provider)
    execution = await executor.execute(envelope())
    assert execution.result["deployment"] == "backup"
    assert provider.calls == ["primary", "backup"]
    assert guard.ledger.reserved_total() == 0
    assert guard.ledger.pending_for(f"team:{TEAM}:1h", NOW) == ACTUAL_NANO  # one call billed


async def test_cancellation_releases_the_hold() -> None:
    called = asyncio.Event()
    provider = Provider(delay_s=3600, during=called.set)
    executor, guard = make(provider)
    task = asyncio.create_task(executor.execute(envelope()))
    await called.wait()
    assert guard.ledger.reserved_total() > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert guard.ledger.reserved_total() == 0
    assert guard.ledger.holds() == 0


async def test_an_unpriced_model_fails_closed_unless_the_policy_ignores_it() -> None:
    provider = Provider()
    executor, _ = make(provider)
    result = (await executor.execute(envelope("free"))).result
    assert result["http_status"] == 429
    assert "no price" in error_of(result["body"])["message"]
    assert provider.calls == []

    ignoring = HARD_1USD.model_copy(update={"unpriced": "ignore"})
    executor, guard = make(provider, ignoring)
    assert (await executor.execute(envelope("free"))).result["status"] == "succeeded"
    assert guard.ledger.pending_for(f"team:{TEAM}:1h", NOW) == 0  # billed as $0 (unpriced)


async def test_teams_without_a_hard_budget_pass_straight_through() -> None:
    soft = config(f'scope: "team:{TEAM}", window: 1h, limit_usd: "1.00", enforcement: soft')
    _, guard = make(Provider(), soft)

    async def call(route: Deployment) -> ProviderReply:
        raise AssertionError("not called")

    assert guard.guard(envelope(), {}, call) is call


async def test_a_hard_global_budget_is_enforced_from_state_without_reservations() -> None:
    global_hard = config("scope: global, window: 1h, limit_usd: 1")
    spent_global: BudgetState = {
        **team_state(USD),
        "scope_type": "global",
        "scope_id": "*",
    }
    provider = Provider()
    executor, guard = make(provider, global_hard, {"global:*:1h": spent_global})
    result = (await executor.execute(envelope())).result
    assert result["http_status"] == 429
    assert provider.calls == []
    executor, guard = make(
        provider,
        global_hard,
        {"global:*:1h": {**spent_global, "spent_nano_usd": 0, "status": "ok"}},
    )
    assert (await executor.execute(envelope())).result["status"] == "succeeded"
    assert guard.ledger.reserved_total() == 0
    assert guard.ledger.holds() == 0


async def test_batch_work_is_held_and_settled_at_the_batch_price() -> None:
    batch_priced = Catalogue(
        "test-2",
        {
            "priced": CatalogueEntry(
                provider="openai", input="1", output="1000", batch_input="0.5", batch_output="500"
            )
        },
    )
    executor, guard = make(Provider(), catalogue=batch_priced)
    assert (await executor.execute(envelope(mode="batch"))).result["status"] == "succeeded"
    assert guard.ledger.pending_for(f"team:{TEAM}:1h", NOW) == 10 * 500 + 80 * 500_000
