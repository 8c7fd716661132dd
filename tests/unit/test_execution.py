"""workers/router/execution.py: one envelope in, a Result and one Attempt per call out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson
import pytest

from schemas.errors import (
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderServerError,
    ProviderTimeout,
)
from schemas.openai import ErrorBody
from schemas.records import Mode, RequestEnvelope, Usage
from schemas.routes import Deployment, ModelRoute, RoutesConfig
from workers.providers.base import ProviderReply
from workers.router.execution import Executor
from workers.router.fallback import RetryPolicy

NOW_MS: Final = 1_700_000_000_500
PRIMARY: Final = Deployment(name="primary", base_url="http://p.invalid/v1", model="up-model")
BACKUP: Final = Deployment(name="backup", base_url="http://b.invalid/v1")
ROUTES: Final = RoutesConfig(models={"gpt": ModelRoute(deployments=(PRIMARY, BACKUP))})
USAGE: Final[Usage] = {
    "prompt_tokens": 11,
    "completion_tokens": 22,
    "cached_tokens": 3,
    "reasoning_tokens": 4,
    "cache_write_tokens": 0,
}
NO_RETRY: Final = RetryPolicy(retries_per_route=0)

Outcome = ProviderReply | BaseException


def _reply(name: str) -> ProviderReply:
    body = orjson.dumps({"id": f"chatcmpl-{name}", "object": "chat.completion", "choices": []})
    return ProviderReply(body=body, usage=USAGE, served_model=f"served-by-{name}")


class FakeProvider:
    """A `ChatProvider` answering a script per deployment name."""

    def __init__(self, outcomes: dict[str, Sequence[Outcome]]) -> None:
        self._outcomes = {name: list(seq) for name, seq in outcomes.items()}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.closed = False

    async def chat(self, deployment: Deployment, request: dict[str, Any]) -> ProviderReply:
        self.calls.append((deployment.name, request))
        outcome = self._outcomes[deployment.name].pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def aclose(self) -> None:
        self.closed = True


def _envelope(
    *, model: str = "gpt", mode: Mode = "async", deadline_ms: int = NOW_MS + 60_000
) -> RequestEnvelope:
    return {
        "request_id": "req_test",
        "team_id": "team-1",
        "key_id": "key-1",
        "mode": mode,
        "endpoint": "/v1/chat/completions",
        "model": model,
        "body": orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        "received_at_ms": NOW_MS - 100,
        "deadline_ms": deadline_ms,
        "ingress_id": "ingress-1",
        "reply_partition": 2 if mode == "sync" else None,
        "metadata": {"trace": "t-1"},
    }


def _executor(provider: FakeProvider, retry: RetryPolicy = NO_RETRY) -> Executor:
    return Executor(
        routes=ROUTES, provider=provider, router_id="router-1", retry=retry, clock_ms=lambda: NOW_MS
    )


async def test_success() -> None:
    provider = FakeProvider({"primary": [_reply("primary")]})
    envelope = _envelope()
    execution = await _executor(provider).execute(envelope)

    result = execution.result
    assert result == {
        "request_id": "req_test",
        "team_id": "team-1",
        "key_id": "key-1",
        "mode": "async",
        "execution_id": result["execution_id"],
        "status": "succeeded",
        "http_status": 200,
        "body": _reply("primary").body,
        "error_type": None,
        "requested_model": "gpt",
        "served_model": "served-by-primary",
        "provider": "openai",
        "deployment": "primary",
        "attempts": 1,
        **USAGE,
        "received_at_ms": NOW_MS - 100,
        "finished_at_ms": NOW_MS,
        "metadata": {"trace": "t-1"},
    }
    assert len(result["execution_id"]) == 16

    (attempt,) = execution.attempts
    latency_ms = attempt["latency_ms"]
    assert latency_ms >= 0
    assert attempt == {
        "request_id": "req_test",
        "attempt_id": f"{result['execution_id']}.1",
        "attempt": 1,
        "team_id": "team-1",
        "key_id": "key-1",
        "mode": "async",
        "deployment": "primary",
        "provider": "openai",
        "model": "up-model",  # the deployment's upstream model name
        "started_at_ms": NOW_MS,
        "latency_ms": latency_ms,
        "outcome": "ok",
        "http_status": 200,
        "error_type": None,
        "error_code": None,
        **USAGE,
        "router_id": "router-1",
    }
    assert provider.calls == [("primary", orjson.loads(envelope["body"]))]


async def test_execution_ids_are_fresh_per_execution() -> None:
    provider = FakeProvider({"primary": [_reply("p"), _reply("p")]})
    executor = _executor(provider)
    first = await executor.execute(_envelope())
    second = await executor.execute(_envelope())
    assert first.result["execution_id"] != second.result["execution_id"]


async def test_failover_records_every_attempt_in_order() -> None:
    error = ProviderServerError("primary: upstream answered 503", upstream_status=503)
    provider = FakeProvider({"primary": [error], "backup": [_reply("backup")]})
    execution = await _executor(provider).execute(_envelope())

    result = execution.result
    assert (result["status"], result["deployment"], result["attempts"]) == (
        "succeeded",
        "backup",
        2,
    )
    assert result["served_model"] == "served-by-backup"
    first, second = execution.attempts
    execution_id = result["execution_id"]
    assert (first["attempt_id"], first["attempt"]) == (f"{execution_id}.1", 1)
    assert (second["attempt_id"], second["attempt"]) == (f"{execution_id}.2", 2)
    assert (first["deployment"], first["model"], first["outcome"]) == (
        "primary",
        "up-model",
        "error",
    )
    assert (first["http_status"], first["error_type"], first["error_code"]) == (
        503,
        "ProviderServerError",
        "provider_error",
    )
    assert (first["prompt_tokens"], first["completion_tokens"]) == (0, 0)
    assert (second["deployment"], second["model"], second["outcome"]) == ("backup", "gpt", "ok")
    assert second["prompt_tokens"] == USAGE["prompt_tokens"]


async def test_retry_on_the_same_route_is_a_new_attempt() -> None:
    provider = FakeProvider({"primary": [ProviderTimeout("t"), _reply("primary")]})
    retry = RetryPolicy(retries_per_route=1, base_backoff_s=0.0)
    execution = await _executor(provider, retry).execute(_envelope())
    assert [a["deployment"] for a in execution.attempts] == ["primary", "primary"]
    assert [a["outcome"] for a in execution.attempts] == ["error", "ok"]
    assert execution.attempts[0]["http_status"] is None  # no upstream answer at all
    assert execution.result["attempts"] == 2


async def test_bad_request_fails_400_without_failover() -> None:
    bad = ProviderBadRequest(
        "primary: upstream answered 400",
        upstream_status=400,
        upstream_code="context_length_exceeded",
    )
    provider = FakeProvider({"primary": [bad], "backup": [_reply("backup")]})
    execution = await _executor(provider, RetryPolicy(retries_per_route=3)).execute(_envelope())

    result = execution.result
    assert (result["status"], result["http_status"], result["error_type"]) == (
        "failed",
        400,
        "ProviderBadRequest",
    )
    body = ErrorBody.model_validate_json(result["body"])
    assert body.error.code == "context_length_exceeded"
    assert body.error.type == "invalid_request_error"
    assert [name for name, _ in provider.calls] == ["primary"]
    (attempt,) = execution.attempts
    assert (attempt["outcome"], attempt["http_status"], attempt["error_code"]) == (
        "error",
        400,
        "context_length_exceeded",
    )
    assert (result["deployment"], result["provider"], result["attempts"]) == (
        "primary",
        "openai",
        1,
    )


@pytest.mark.parametrize(
    ("last_error", "http_status", "code"),
    [
        (ProviderServerError("b: 500", upstream_status=500), 502, "all_providers_failed"),
        (ProviderTimeout("b: timed out"), 502, "all_providers_failed"),
        (ProviderError("b: 401", upstream_status=401), 502, "all_providers_failed"),
        (ProviderRateLimited("b: 429", retry_after_s=3.0), 429, "provider_rate_limited"),
    ],
)
async def test_all_fail(last_error: ProviderError, http_status: int, code: str) -> None:
    first = ProviderRateLimited("primary: 429")
    provider = FakeProvider({"primary": [first], "backup": [last_error]})
    # sync: interactive work fails at once (queued work waits out 429s: test_pacing_*)
    execution = await _executor(provider).execute(_envelope(mode="sync"))

    result = execution.result
    assert result["status"] == "failed"
    assert result["http_status"] == http_status
    assert result["error_type"] == "AllProvidersFailed"
    assert ErrorBody.model_validate_json(result["body"]).error.code == code
    assert (result["attempts"], result["deployment"]) == (2, "backup")
    assert result["served_model"] is None
    assert (result["prompt_tokens"], result["completion_tokens"]) == (0, 0)
    assert [a["outcome"] for a in execution.attempts] == ["error", "error"]
    assert [a["error_type"] for a in execution.attempts] == [
        "ProviderRateLimited",
        type(last_error).__name__,
    ]


async def test_sync_envelope_past_its_deadline_spends_nothing() -> None:
    provider = FakeProvider({"primary": [_reply("primary")]})
    execution = await _executor(provider).execute(_envelope(mode="sync", deadline_ms=NOW_MS - 1))

    result = execution.result
    assert (result["status"], result["http_status"], result["error_type"]) == (
        "failed",
        504,
        "DeadlineExceeded",
    )
    assert execution.attempts == []
    assert result["attempts"] == 0
    assert (result["deployment"], result["provider"]) == (None, None)
    assert provider.calls == []
    assert ErrorBody.model_validate_json(result["body"]).error.code == "deadline_exceeded"


@pytest.mark.parametrize(
    ("mode", "deadline_ms"),
    [
        ("sync", NOW_MS),  # exactly at the deadline: still served
        ("async", NOW_MS - 1),  # the deadline only matters to a waiting sync client
        ("batch", 0),
    ],
)
async def test_deadline_only_stops_late_sync_requests(mode: Mode, deadline_ms: int) -> None:
    provider = FakeProvider({"primary": [_reply("primary")]})
    execution = await _executor(provider).execute(_envelope(mode=mode, deadline_ms=deadline_ms))
    assert execution.result["status"] == "succeeded"
    assert len(provider.calls) == 1


async def test_unknown_model_fails_404() -> None:
    provider = FakeProvider({})
    execution = await _executor(provider).execute(_envelope(model="claude-3"))
    result = execution.result
    assert (result["status"], result["http_status"], result["error_type"]) == (
        "failed",
        404,
        "UnknownModel",
    )
    assert ErrorBody.model_validate_json(result["body"]).error.code == "model_not_found"
    assert execution.attempts == []
    assert provider.calls == []


async def test_body_that_is_not_json_fails_400() -> None:
    provider = FakeProvider({})
    envelope = _envelope()
    envelope["body"] = b"{not json"
    execution = await _executor(provider).execute(envelope)
    assert (execution.result["status"], execution.result["http_status"]) == ("failed", 400)
    assert execution.attempts == []
    assert provider.calls == []


async def test_queued_work_waits_out_429s_instead_of_failing() -> None:
    clock = {"ms": NOW_MS}
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock["ms"] += int(seconds * 1000)

    limited = ProviderRateLimited("429", retry_after_s=2.0)
    provider = FakeProvider(
        {"primary": [limited, _reply("primary")], "backup": [ProviderRateLimited("429")]}
    )
    executor = Executor(
        routes=ROUTES, provider=provider, router_id="r", retry=NO_RETRY,
        clock_ms=lambda: clock["ms"], sleep=fake_sleep,
    )  # fmt: skip
    execution = await executor.execute(_envelope(mode="batch"))
    assert execution.result["status"] == "succeeded"
    assert execution.result["deployment"] == "primary"
    assert slept  # paced by the Retry-After instead of failing
    assert [a["outcome"] for a in execution.attempts] == ["error", "error", "ok"]
