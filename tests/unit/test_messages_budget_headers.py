"""POST /v1/messages tells the client about budgets as /v1/chat/completions does:
`x-tollway-budget-warning` on a soft budget (ingress admission) and Retry-After on a
router's budget refusal (result metadata `tollway.retry_after_s`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import orjson

from ingress.admission import BUDGET_WARNING_HEADER
from ingress.anthropic_api import anthropic_routes
from ingress.app import build_app
from ingress.bus import MemoryBus
from ingress.settings import IngressSettings
from schemas.errors import BudgetExceeded
from schemas.records import BudgetState, RequestEnvelope, Result
from tests.unit.test_budget_admission import NOW, ROUTES, USD, answer, config, heartbeat, state
from workers.budget.view import FixedBudgetView
from workers.cache.canonical import CACHE_CONTROL_KEY, CACHE_HEADER, CACHE_STATUS_KEY
from workers.router.rate_limits import RETRY_AFTER_KEY

MESSAGE = {"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
Responder = Callable[[RequestEnvelope], Awaitable[Result]]
SOFT = config('scope: "team:default", window: 24h, limit_usd: "1.00", enforcement: soft')


async def completed(envelope: RequestEnvelope) -> Result:
    result = await answer(envelope)
    result["body"] = orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )
    return result


async def refused_by_router(envelope: RequestEnvelope) -> Result:
    result = await answer(envelope)
    error = BudgetExceeded("team:default's 1h budget is used up", retry_after_s=1_800)
    result["status"] = "failed"
    result["http_status"] = 429
    result["body"] = orjson.dumps(error.to_body())
    result["error_type"] = "BudgetExceeded"
    result["metadata"] = {**envelope["metadata"], RETRY_AFTER_KEY: "1800"}
    return result


async def post(
    responder: Responder, states: dict[str, BudgetState], headers: dict[str, str] | None = None
) -> httpx.Response:
    view = FixedBudgetView(SOFT, {**heartbeat(), **states}, clock_ms=lambda: NOW)
    app = build_app(
        IngressSettings(),
        ROUTES,
        MemoryBus(responder),
        ingress_id="i",
        budgets=view,
        extra_routes=[anthropic_routes],
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        return await client.post("/v1/messages", json=MESSAGE, headers=headers)


async def test_a_soft_budget_over_its_limit_warns_on_messages_too() -> None:
    over = {"team:default:24h": state("team:default:24h", 2 * USD, USD)}
    response = await post(completed, over)
    assert response.status_code == 200
    assert response.json()["type"] == "message"
    warning = response.headers[BUDGET_WARNING_HEADER]
    assert "team:default" in warning
    assert "soft limit exceeded" in warning


async def test_no_warning_while_the_soft_budget_has_room() -> None:
    response = await post(completed, {"team:default:24h": state("team:default:24h", 1, USD)})
    assert response.status_code == 200
    assert BUDGET_WARNING_HEADER not in response.headers


async def test_a_budget_refusal_by_the_router_carries_retry_after() -> None:
    response = await post(refused_by_router, {})
    assert response.status_code == 429
    assert response.json()["type"] == "error"
    assert response.headers["retry-after"] == "1800"


async def test_messages_forward_cache_control_and_answer_the_cache_outcome() -> None:
    seen: list[RequestEnvelope] = []

    async def from_cache(envelope: RequestEnvelope) -> Result:
        seen.append(envelope)
        result = await completed(envelope)
        result["metadata"] = {**envelope["metadata"], CACHE_STATUS_KEY: "hit"}
        return result

    response = await post(from_cache, {}, headers={"cache-control": "max-age=0, no-store"})
    assert response.status_code == 200
    assert response.headers[CACHE_HEADER] == "hit"
    assert seen[0]["metadata"][CACHE_CONTROL_KEY] == "no-store"
