"""A budget refusal made by the router carries Retry-After to the client, like the
ingress's own (workers/router/execution.py `_failed` -> result metadata
`tollway.retry_after_s` -> ingress/app.py `result_response`)."""

from __future__ import annotations

import pytest

from ingress.app import result_response
from schemas.errors import ProviderServerError
from schemas.records import Mode
from tests.unit.test_router_budgets import (
    TEAM,
    USD,
    Provider,
    envelope,
    error_of,
    make,
    team_state,
)
from workers.router.rate_limits import RETRY_AFTER_KEY


@pytest.mark.parametrize("mode", ["sync", "async", "batch"])
async def test_a_spent_budget_refused_by_the_router_says_when_room_frees_up(mode: Mode) -> None:
    executor, _ = make(Provider(), states={f"team:{TEAM}:1h": team_state(USD)})
    result = (await executor.execute(envelope(mode=mode))).result
    assert error_of(result["body"])["code"] == "budget_exceeded"
    # team_state(): the spend leaves the window 600 s from now
    assert result["metadata"][RETRY_AFTER_KEY] == "600"
    response = result_response(result)
    assert (response.status_code, response.headers["retry-after"]) == (429, "600")


async def test_unknown_budget_state_at_the_router_answers_503_with_retry_after() -> None:
    executor, _ = make(Provider())
    executor.budgets.view.states.clear()  # type: ignore[union-attr]  # set by make()
    result = (await executor.execute(envelope())).result
    response = result_response(result)
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0


async def test_a_failed_provider_call_adds_no_retry_after() -> None:
    down: dict[str, list[BaseException]] = {
        name: [ProviderServerError("down")] for name in ("primary", "backup")
    }
    executor, _ = make(Provider(script=down))
    result = (await executor.execute(envelope())).result
    assert (result["status"], result["http_status"]) == ("failed", 502)
    assert RETRY_AFTER_KEY not in result["metadata"]
    assert "retry-after" not in result_response(result).headers
