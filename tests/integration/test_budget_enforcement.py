"""Acceptance (issue 4): 1,000 concurrent requests against a $5.00 hard budget.

The whole enforcement path on the real broker (tests/integration/budget_stack.py):
the ingress admits against tollway.budget-state, the router holds each call's worst
case before calling the mock provider and settles it to the real cost, the cost and
budget processors turn the calls into spend. Every request is priced with
`mock-budget`'s own price (catalogue override): 16 output tokens at $900/M plus a few
input tokens at $10/M, ~$0.0144 a request, so ~345 requests fit in $5.00.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.integration.budget_stack import MODEL, TEAM, BudgetStack

pytestmark = pytest.mark.kafka

REQUESTS = 1_000
BODY = orjson.dumps(
    {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
)


@pytest.fixture
async def stack(kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[BudgetStack]:
    running = BudgetStack(kafka_bootstrap, tmp_path)
    try:
        await running.start()
        yield running
    finally:
        await running.stop()


async def _fire(url: str, n: int) -> list[tuple[int, dict[str, Any]]]:
    """`n` requests at once: (status, JSON body) each. aiohttp, not httpx: httpx's pool
    took ~120 s for 1,000 concurrent connections here (aiohttp ~3.5 s), starving the
    router that shares this event loop."""
    connector = aiohttp.TCPConnector(limit=n)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> tuple[int, dict[str, Any]]:
            async with session.post(
                f"{url}/v1/chat/completions",
                data=BODY,
                headers={"content-type": "application/json"},
            ) as response:
                return response.status, orjson.loads(await response.read())

        return await asyncio.gather(*(one() for _ in range(n)))


async def test_concurrent_requests_never_overspend_a_hard_budget(stack: BudgetStack) -> None:
    assert stack.tail is not None
    assert stack.budgets is not None
    started = time.monotonic()
    responses = await _fire(stack.url, REQUESTS)
    elapsed_s = time.monotonic() - started

    ok = [body for status, body in responses if status == 200]
    refused = [body for status, body in responses if status == 429]
    outcomes = Counter(
        (status, body.get("error", {}).get("message", "")[:60]) for status, body in responses
    )
    assert len(ok) + len(refused) == REQUESTS, outcomes
    for body in refused:
        error = body["error"]
        assert (error["type"], error["code"]) == ("budget_exceeded", "budget_exceeded")
        assert f"team:{TEAM}" in error["message"]

    # every admitted call is priced once; the sum is what the team spent
    usage = stack.tail.usage_of(TEAM)
    deadline = time.monotonic() + 30
    while len(usage) < len(ok):
        assert time.monotonic() < deadline, f"{len(usage)} of {len(ok)} calls priced"
        await asyncio.sleep(0.2)
        usage = stack.tail.usage_of(TEAM)
    assert len({u["usage_id"] for u in usage}) == len(usage) == len(ok)
    assert all(u["cost_status"] == "priced" and u["model"] == MODEL for u in usage)
    spent = sum(u["cost_nano_usd"] for u in usage)
    one = max(u["cost_nano_usd"] for u in usage)
    assert spent <= stack.limit_nano_usd + one
    # the budget is really used, not refused wholesale (~345 requests fit in $5.00; a
    # slow pipeline lets the state catch up mid-burst, and settled spend then counts
    # twice for a few seconds: docs/decisions/0009 "Under-use")
    assert spent >= stack.limit_nano_usd // 2, (len(ok), spent)

    # nothing stays held, and the team's requests went to one partition (one router)
    assert stack.budgets.ledger.reserved_total() == 0
    assert stack.budgets.ledger.holds() == 0
    assert set(stack.tail.request_keys) == {TEAM.encode()}
    print(  # the figures for the report (pytest -s)
        f"\nbudget acceptance: {len(ok)} admitted, {len(refused)} refused (429), "
        f"settled ${spent / 1e9:.6f} of ${stack.limit_nano_usd / 1e9:.2f} "
        f"(one request ${one / 1e9:.6f}), {elapsed_s:.1f}s for {REQUESTS} requests; "
        f"start-up {stack.timings_s}"
    )
