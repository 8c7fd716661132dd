"""Budget admission in the ingress (ingress/app.py + admission.py) over the in-memory bus.

The budget view is `FixedBudgetView`: the real decisions over states handed in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import httpx
import orjson
import pytest_asyncio

from ingress.admission import BUDGET_WARNING_HEADER, DOWNGRADED_FROM_KEY, apply_admission
from ingress.anthropic_api import anthropic_routes
from ingress.app import build_app
from ingress.bus import MemoryBus
from ingress.settings import IngressSettings
from schemas.openai import ErrorBody
from schemas.records import BudgetState, RequestEnvelope, Result
from schemas.routes import default_routes
from workers.budget.config import BudgetsConfig, parse_budgets
from workers.budget.enforcement import Admission
from workers.budget.partitioning import usage_partition
from workers.budget.view import FixedBudgetView

NOW: Final = 1_800_000_000_000
USD: Final = 1_000_000_000
ROUTES: Final = default_routes({})
CHAT: Final = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
HEARTBEAT_KEY: Final = f"global:partition-{usage_partition('default')}:1h"


def config(*lines: str) -> BudgetsConfig:
    return parse_budgets("\n".join(f"- {{{line}}}" for line in lines))


def state(key: str, spent: int, limit: int | None, *, updated_at: int = NOW - 500) -> BudgetState:
    scope_type, rest = key.split(":", 1)
    scope_id, window = rest.rsplit(":", 1)
    exceeded = limit is not None and spent >= limit
    return {
        "scope_type": scope_type,  # type: ignore[typeddict-item]  # built from a valid key
        "scope_id": scope_id,
        "window": window,
        "spent_nano_usd": spent,
        "limit_nano_usd": limit,
        "remaining_nano_usd": None if limit is None else max(0, limit - spent),
        "status": "exceeded" if exceeded else "ok",
        "enforcement": "hard",
        "frees_at_ms": NOW + 1_800_000 if exceeded else None,
        "watermark_ms": NOW - 1_000,
        "updated_at_ms": updated_at,
    }


def heartbeat(updated_at: int = NOW - 500) -> dict[str, BudgetState]:
    return {HEARTBEAT_KEY: state(HEARTBEAT_KEY, 0, None, updated_at=updated_at)}


async def answer(envelope: RequestEnvelope) -> Result:
    return {
        "request_id": envelope["request_id"],
        "team_id": envelope["team_id"],
        "key_id": None,
        "mode": envelope["mode"],
        "execution_id": "e",
        "status": "succeeded",
        "http_status": 200,
        "body": b'{"id": "chatcmpl-1", "object": "chat.completion", "choices": []}',
        "error_type": None,
        "requested_model": envelope["model"],
        "served_model": envelope["model"],
        "provider": "openai",
        "deployment": "mock",
        "attempts": 1,
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "received_at_ms": envelope["received_at_ms"],
        "finished_at_ms": envelope["received_at_ms"] + 1,
        "metadata": envelope["metadata"],
    }


Factory = Callable[..., Awaitable[tuple[httpx.AsyncClient, MemoryBus]]]


@pytest_asyncio.fixture
async def make_client() -> AsyncIterator[Factory]:
    clients: list[httpx.AsyncClient] = []

    async def factory(
        budgets: BudgetsConfig | None, states: dict[str, BudgetState] | None = None
    ) -> tuple[httpx.AsyncClient, MemoryBus]:
        bus = MemoryBus(answer)
        view = (
            None
            if budgets is None
            else FixedBudgetView(budgets, {**heartbeat(), **(states or {})}, clock_ms=lambda: NOW)
        )
        app = build_app(
            IngressSettings(),
            ROUTES,
            bus,
            ingress_id="i",
            budgets=view,
            extra_routes=[anthropic_routes],
        )
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        clients.append(client)
        return client, bus

    yield factory
    for client in clients:
        await client.aclose()


HARD: Final = config('scope: "team:default", window: 1h, limit_usd: "5.00"')


async def test_hard_budget_spent_is_429_budget_exceeded_and_nothing_is_published(
    make_client: Factory,
) -> None:
    client, bus = await make_client(
        HARD, {"team:default:1h": state("team:default:1h", 5 * USD, 5 * USD)}
    )
    for path in ("/v1/chat/completions", "/v1/async/chat/completions"):
        response = await client.post(path, json=CHAT)
        assert response.status_code == 429
        error = ErrorBody.model_validate_json(response.content).error
        assert (error.type, error.code) == ("budget_exceeded", "budget_exceeded")
        assert "team:default" in error.message
        assert response.headers["retry-after"] == "1800"
    response = await client.post(
        "/v1/messages",
        json={"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 429
    assert bus.published == []


async def test_hard_budget_with_room_admits(make_client: Factory) -> None:
    client, bus = await make_client(
        HARD, {"team:default:1h": state("team:default:1h", USD, 5 * USD)}
    )
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert BUDGET_WARNING_HEADER not in response.headers
    assert len(bus.published) == 1


async def test_unknown_budget_state_fails_closed_with_503(make_client: Factory) -> None:
    client, bus = await make_client(HARD)
    bus_view_stale = {HEARTBEAT_KEY: state(HEARTBEAT_KEY, 0, None, updated_at=NOW - 60_000)}
    stale_client, stale_bus = await make_client(HARD, bus_view_stale)
    # the fresh heartbeat vouches for a missing state ($0 spent) ...
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
    # ... a stale one does not
    response = await stale_client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 503
    assert ErrorBody.model_validate_json(response.content).error.code == "service_unavailable"
    assert response.headers["retry-after"] == "5"
    assert stale_bus.published == []
    assert len(bus.published) == 1


async def test_soft_budget_admits_with_a_warning_header(make_client: Factory) -> None:
    soft = config('scope: "team:default", window: 24h, limit_usd: "1.00", enforcement: soft')
    client, bus = await make_client(
        soft, {"team:default:24h": state("team:default:24h", 2 * USD, USD)}
    )
    sync = await client.post("/v1/chat/completions", json=CHAT)
    queued = await client.post("/v1/async/chat/completions", json=CHAT)
    assert (sync.status_code, queued.status_code) == (200, 202)
    for response in (sync, queued):
        warning = response.headers[BUDGET_WARNING_HEADER]
        assert "team:default" in warning
        assert "soft limit exceeded" in warning
    assert len(bus.published) == 2


async def test_downgrade_rewrites_model_and_body_and_records_the_original(
    make_client: Factory,
) -> None:
    downgrade = config(
        'scope: "model:default/gpt-4o", window: mtd, limit_usd: "1.00", '
        "enforcement: downgrade, downgrade_to: gpt-4o-mini"
    )
    key = "model:default/gpt-4o:mtd"
    client, bus = await make_client(downgrade, {key: state(key, 2 * USD, USD)})
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert "running gpt-4o-mini instead of gpt-4o" in response.headers[BUDGET_WARNING_HEADER]
    ((_, envelope),) = bus.published
    assert envelope["model"] == "gpt-4o-mini"
    assert orjson.loads(envelope["body"])["model"] == "gpt-4o-mini"  # what goes upstream
    assert envelope["metadata"][DOWNGRADED_FROM_KEY] == "gpt-4o"


async def test_without_budgets_nothing_changes(make_client: Factory) -> None:
    client, bus = await make_client(None)
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert BUDGET_WARNING_HEADER not in response.headers
    ((_, envelope),) = bus.published
    assert envelope["model"] == "gpt-4o"
    assert DOWNGRADED_FROM_KEY not in envelope["metadata"]
    assert (await client.get("/readyz")).status_code == 200


async def test_readyz_waits_for_the_budget_view(make_client: Factory) -> None:
    client, _ = await make_client(HARD)
    assert (await client.get("/readyz")).status_code == 200
    bus = MemoryBus(answer)
    loading = FixedBudgetView(HARD)
    loading._ready.clear()  # as if still reading tollway.budget-state
    app = build_app(IngressSettings(), ROUTES, bus, ingress_id="i", budgets=loading)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as other:
        response = await other.get("/readyz")
        assert response.status_code == 503
        assert "budget state" in response.json()["error"]["message"]
        # and, not ready, hard budgets fail closed
        assert (await other.post("/v1/chat/completions", json=CHAT)).status_code == 503


def test_apply_admission_keeps_a_plain_admission_as_is() -> None:
    body = orjson.dumps(CHAT)
    admitted = apply_admission(Admission("gpt-4o"), body, {"a": "b"})
    assert (admitted.model, admitted.body, admitted.metadata, admitted.headers) == (
        "gpt-4o",
        body,
        {"a": "b"},
        {},
    )


def test_warning_header_is_ascii_and_bounded() -> None:
    admission = Admission("m", warnings=("team:dé" + "x" * 5_000,))
    header = apply_admission(admission, b"{}", {}).headers[BUDGET_WARNING_HEADER]
    assert header.isascii()
    assert len(header) <= 1_000
