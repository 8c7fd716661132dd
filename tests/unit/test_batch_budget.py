"""Batches against hard budgets (workers/batches/budget.py): the create check, the estimate,
the pause decision, the paced expansion and the Batches API answer. No Kafka."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Final

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from ingress.batches_api import batches_routes
from ingress.files_api import files_routes
from schemas.errors import BudgetExceeded, ServiceUnavailable, TollwayError
from schemas.records import BudgetState, RequestEnvelope
from workers.batches.assembler import Assembly
from workers.batches.budget import (
    BatchBudgets,
    FirstLine,
    estimate_nano_usd,
    first_line,
    lookahead_full,
)
from workers.batches.expander import Progress, expand
from workers.batches.filestore import MemoryFileStore
from workers.batches.jsonl import LineParser, split_lines
from workers.batches.state import InvalidMetadata, new_batch, to_openai, validate_metadata
from workers.batches.view import MemoryBatchView
from workers.budget.config import BudgetsConfig, parse_budgets
from workers.budget.view import FixedBudgetView
from workers.cost.pricing import Price

NOW: Final = 1_800_000_000_000
FRESH: Final = NOW + 10**9  # a state "updated" after every test's now: never stale
USD: Final = 1_000_000_000
# $1 per 1M input tokens, $1,000 per 1M output tokens: one output token = 1,000,000 nano-USD
PRICE: Final = Price.per_million(input="1", output="1000")
HARD: Final = parse_budgets('- {scope: "team:default", window: 1h, limit_usd: "1.00"}')


def budget_state(spent: int, *, limit: int = USD, window: str = "1h") -> dict[str, BudgetState]:
    return {
        f"team:default:{window}": {
            "scope_type": "team", "scope_id": "default", "window": window,
            "spent_nano_usd": spent, "limit_nano_usd": limit,
            "remaining_nano_usd": max(0, limit - spent),
            "status": "exceeded" if spent >= limit else "ok", "enforcement": "hard",
            "frees_at_ms": None, "watermark_ms": FRESH, "updated_at_ms": FRESH,
        }
    }  # fmt: skip


def budgets(
    states: dict[str, BudgetState] | None = None, config: BudgetsConfig = HARD
) -> BatchBudgets:
    view = FixedBudgetView(config, states, clock_ms=lambda: NOW)
    return BatchBudgets(view, lambda model: [PRICE] if model == "gpt-4o-mini" else [])


def line(custom_id: str, **body: Any) -> bytes:
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **body}
    obj = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": request}
    return orjson.dumps(obj) + b"\n"


# --- pure pieces -------------------------------------------------------------------------


def test_the_first_request_line_skips_blanks_and_names_the_model() -> None:
    found = first_line(split_lines([b"\n  \n" + line("a", max_tokens=5) + line("b")]))
    assert found is not None
    assert (found.model, found.body["max_tokens"]) == ("gpt-4o-mini", 5)
    assert first_line(split_lines([b"not json\n"])) is None
    assert first_line(split_lines([b'{"custom_id": "x", "body": {}}\n'])) is None
    assert first_line(split_lines([b"\n"])) is None


def test_the_estimate_is_lines_times_the_worst_case_of_the_first_line() -> None:
    found = first_line(split_lines([line("a", max_tokens=10)]))
    assert found is not None
    one = estimate_nano_usd(found, 1, [PRICE], 4_096)
    assert one is not None
    # 10 output tokens at $1,000/M = $0.01, plus a few prompt tokens at $1/M
    assert 10 * 1_000_000 < one < 11 * 1_000_000
    assert estimate_nano_usd(found, 500, [PRICE], 4_096) == 500 * one
    dearer = Price.per_million(input="2", output="2000")
    assert estimate_nano_usd(found, 1, [PRICE, dearer], 4_096) == 2 * one
    assert estimate_nano_usd(found, 500, [], 4_096) is None


@pytest.mark.parametrize(
    ("scanned", "finished", "full"), [(0, 0, False), (999, 0, False), (1_000, 0, True),
                                      (1_500, 600, False), (1_600, 600, True)],
)  # fmt: skip
def test_the_lookahead_counts_lines_enqueued_without_an_outcome(
    scanned: int, finished: int, full: bool
) -> None:
    assert lookahead_full(scanned, finished, 1_000) is full


def test_only_teams_with_a_hard_budget_are_paced() -> None:
    both = parse_budgets(
        '- {scope: "team:default", window: 1h, limit_usd: "1", enforcement: soft}\n'
        '- {scope: "model:default/gpt-4o-mini", window: 24h, limit_usd: "1"}'
    )
    checks = budgets(config=both)
    assert not checks.paced("default", None)
    assert checks.paced("default", "gpt-4o-mini")
    assert not checks.paced("other", "gpt-4o-mini")
    assert budgets().paced("default", None)


def test_pause_reasons_are_stable_while_the_cause_lasts() -> None:
    assert budgets(budget_state(USD // 2)).pause_reason("default", "gpt-4o-mini", NOW) is None
    spent = budgets(budget_state(USD))
    assert spent.pause_reason("default", None, NOW) == "budget_exceeded: team:default 1h"
    assert budgets({}).pause_reason("default", None, NOW) == "budget_unavailable"


def test_create_refuses_a_spent_or_unknown_budget() -> None:
    first = FirstLine("gpt-4o-mini", {"model": "gpt-4o-mini"}, b"{}")
    with pytest.raises(BudgetExceeded):
        budgets(budget_state(USD)).admit_create("default", first, 10)
    with pytest.raises(ServiceUnavailable):
        budgets({}).admit_create("default", first, 10)


def test_create_warns_when_the_estimate_exceeds_what_is_left() -> None:
    found = first_line(split_lines([line("a", max_tokens=10)]))  # ~$0.01 a line
    checks = budgets(budget_state(USD // 2))  # $0.50 left
    assert checks.admit_create("default", found, 10) is None
    warning = checks.admit_create("default", found, 100)
    assert warning is not None
    assert "$0.50 left in team:default's 1h budget" in warning
    assert budgets(budget_state(0), parse_budgets("[]")).admit_create("x", found, 10**6) is None


def test_reserved_metadata_is_refused_from_clients_and_shown_apart() -> None:
    with pytest.raises(InvalidMetadata):
        validate_metadata({"tollway.paused_reason": "x"})
    state = new_batch(batch_id="batch_1", team_id="default", input_file_id="file-1",
                      endpoint="/v1/chat/completions", completion_window="24h",
                      metadata={"mine": "1"}, now_ms=NOW)  # fmt: skip
    state["metadata"]["tollway.paused_reason"] = "budget_exceeded: team:default 1h"
    shown = to_openai(state)
    assert shown["metadata"] == {"mine": "1"}
    assert shown["tollway"]["paused_reason"] == "budget_exceeded: team:default 1h"


# --- the expansion waits at its gate -------------------------------------------------------


async def test_expansion_publishes_a_group_only_when_the_gate_opens() -> None:
    state = new_batch(batch_id="batch_2", team_id="default", input_file_id="file-2",
                      endpoint="/v1/chat/completions", completion_window="24h",
                      metadata={}, now_ms=NOW)  # fmt: skip
    data = b"".join(line(f"r{i}") for i in range(10))
    published: list[list[RequestEnvelope]] = []
    progress: list[Progress] = []
    asked: list[int] = []
    opened = asyncio.Event()

    async def publish(envelopes: list[RequestEnvelope]) -> None:
        published.append(envelopes)

    async def checkpoint(p: Progress) -> None:
        progress.append(p)

    async def gate(enqueued: int, model: str | None) -> bool:
        asked.append(enqueued)
        assert model == "gpt-4o-mini"
        if enqueued >= 4:
            await opened.wait()  # "paused" until the budget frees room
        return True

    task = asyncio.create_task(
        expand(state, iter([data]), parser=LineParser("/v1/chat/completions", lambda _: True),
               assembly=Assembly(state), publish=publish, checkpoint=checkpoint,
               cancelled=lambda: False, now_ms=lambda: NOW, checkpoint_lines=4, gate=gate)
    )  # fmt: skip
    for _ in range(50):
        await asyncio.sleep(0)
    assert asked == [0, 4]
    assert [len(g) for g in published] == [4]  # the second group waits at the gate
    assert progress[-1].scanned_through_line == 4  # and the first is checkpointed
    opened.set()
    assert await task is True
    assert asked == [0, 4, 8]
    assert [len(g) for g in published] == [4, 4, 2]
    assert progress[-1].expanded


async def test_a_closed_gate_stops_the_expansion() -> None:
    state = new_batch(batch_id="batch_3", team_id="default", input_file_id="file-3",
                      endpoint="/v1/chat/completions", completion_window="24h",
                      metadata={}, now_ms=NOW)  # fmt: skip
    published: list[int] = []

    async def publish(envelopes: list[RequestEnvelope]) -> None:
        published.append(len(envelopes))

    async def checkpoint(_: Progress) -> None:
        return None

    async def gate(enqueued: int, _: str | None) -> bool:
        return enqueued < 2  # then: cancelled while paused

    done = await expand(
        state, iter([b"".join(line(f"r{i}") for i in range(6))]),
        parser=LineParser("/v1/chat/completions", lambda _: True), assembly=Assembly(state),
        publish=publish, checkpoint=checkpoint, cancelled=lambda: False, now_ms=lambda: NOW,
        checkpoint_lines=2, gate=gate,
    )  # fmt: skip
    assert done is False
    assert published == [2]


# --- the Batches API ---------------------------------------------------------------------------


async def _error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, TollwayError)
    headers = exc.headers()
    return Response(orjson.dumps(exc.to_body()), exc.http_status, headers,
                    media_type="application/json")  # fmt: skip


@pytest.fixture
def store() -> MemoryFileStore:
    return MemoryFileStore()


async def _client(store: MemoryFileStore, checks: BatchBudgets) -> httpx.AsyncClient:
    app = Starlette(
        routes=[*files_routes(store), *batches_routes(store, MemoryBatchView(), budgets=checks)],
        exception_handlers={TollwayError: _error},
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.fixture
async def upload(store: MemoryFileStore) -> AsyncIterator[Any]:
    async def make(content: bytes, checks: BatchBudgets) -> tuple[httpx.AsyncClient, str]:
        client = await _client(store, checks)
        clients.append(client)
        uploaded = await client.post(
            "/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"}
        )
        return client, uploaded.json()["id"]

    clients: list[httpx.AsyncClient] = []
    yield make
    for client in clients:
        await client.aclose()


def _create(file_id: str) -> dict[str, str]:
    return {"input_file_id": file_id, "endpoint": "/v1/chat/completions",
            "completion_window": "24h"}  # fmt: skip


async def test_create_answers_429_when_the_team_budget_is_spent(upload: Any) -> None:
    client, file_id = await upload(line("a"), budgets(budget_state(USD)))
    refused = await client.post("/v1/batches", json=_create(file_id))
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "budget_exceeded"


async def test_create_warns_in_a_header_and_still_creates(upload: Any) -> None:
    content = b"".join(line(f"r{i}", max_tokens=10) for i in range(100))
    client, file_id = await upload(content, budgets(budget_state(USD // 2)))
    created = await client.post("/v1/batches", json=_create(file_id))
    assert created.status_code == 200
    assert "left in team:default's 1h budget" in created.headers["x-tollway-budget-warning"]
    assert created.json()["status"] == "validating"
    assert created.json()["tollway"]["paused_reason"] is None
