"""The router's embeddings path (workers/router/execution.py): dispatch on the envelope's
endpoint, planning over deployments that can embed, the result-size guard, pricing."""

from __future__ import annotations

from typing import Any, Final

import orjson

from schemas.errors import ProviderServerError
from schemas.openai import EMBEDDINGS_ENDPOINT, ErrorBody
from schemas.records import RequestEnvelope, Usage
from schemas.routes import Deployment, ModelRoute, RoutesConfig
from workers.cost.catalogue import load_catalogue
from workers.cost.usage import price_attempt
from workers.providers.base import ProviderReply
from workers.router.execution import Executor, estimate_tokens
from workers.router.fallback import RetryPolicy

NOW_MS: Final = 1_700_000_000_500
CLAUDE: Final = Deployment(name="claude", provider="anthropic", base_url="https://an.invalid")
PRIMARY: Final = Deployment(
    name="primary", base_url="http://p.invalid/v1", model="text-embedding-3-small"
)
BACKUP: Final = Deployment(
    name="backup", provider="gemini", base_url="http://g.invalid", model="gemini-embedding-001"
)
ROUTES: Final = RoutesConfig(
    models={
        "embed": ModelRoute(deployments=(CLAUDE, PRIMARY, BACKUP)),
        "chat": ModelRoute(deployments=(CLAUDE, PRIMARY)),
    }
)
USAGE: Final[Usage] = {
    "prompt_tokens": 1_000,
    "completion_tokens": 0,
    "cached_tokens": 0,
    "reasoning_tokens": 0,
    "cache_write_tokens": 0,
}
BODY: Final = orjson.dumps(
    {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.5]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 1000, "total_tokens": 1000},
    }
)


class EmbeddingFake:
    """Embeds with a script per deployment; chats always succeed (to tell the paths apart)."""

    def __init__(self, outcomes: dict[str, list[ProviderReply | Exception]]) -> None:
        self.outcomes = outcomes
        self.embed_calls: list[tuple[str, dict[str, Any]]] = []
        self.chat_calls: list[str] = []

    async def chat(self, deployment: Deployment, request: dict[str, Any]) -> ProviderReply:
        self.chat_calls.append(deployment.name)
        return ProviderReply(body=b'{"choices": []}', usage=USAGE, served_model="chat")

    async def embed(self, deployment: Deployment, request: dict[str, Any]) -> ProviderReply:
        self.embed_calls.append((deployment.name, request))
        outcome = self.outcomes[deployment.name].pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def aclose(self) -> None:
        return None


class ChatOnly:
    async def chat(self, deployment: Deployment, request: dict[str, Any]) -> ProviderReply:
        raise AssertionError("an embeddings request must not be sent as a chat")

    async def aclose(self) -> None:
        return None


def envelope(model: str = "embed", endpoint: str = EMBEDDINGS_ENDPOINT) -> RequestEnvelope:
    body: dict[str, Any] = {"model": model, "input": ["hello", "world"]}
    if endpoint != EMBEDDINGS_ENDPOINT:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return {
        "request_id": "req_e",
        "team_id": "team-1",
        "key_id": None,
        "mode": "sync",
        "endpoint": endpoint,
        "model": model,
        "body": orjson.dumps(body),
        "received_at_ms": NOW_MS - 10,
        "deadline_ms": NOW_MS + 60_000,
        "ingress_id": "ingress-1",
        "reply_partition": 0,
        "metadata": {},
    }


def executor(provider: Any, **kwargs: Any) -> Executor:
    return Executor(
        routes=ROUTES,
        provider=provider,
        router_id="router-1",
        retry=RetryPolicy(retries_per_route=0),
        clock_ms=lambda: NOW_MS,
        **kwargs,
    )


def reply(body: bytes = BODY) -> ProviderReply:
    return ProviderReply(body=body, usage=USAGE, served_model="text-embedding-3-small")


async def test_embeddings_go_to_embed_and_skip_deployments_without_an_embeddings_api() -> None:
    provider = EmbeddingFake({"primary": [reply()]})
    execution = await executor(provider).execute(envelope())

    assert provider.chat_calls == []
    assert [name for name, _ in provider.embed_calls] == ["primary"]  # claude never planned
    assert provider.embed_calls[0][1] == {"model": "embed", "input": ["hello", "world"]}
    result = execution.result
    assert (result["status"], result["http_status"], result["body"]) == ("succeeded", 200, BODY)
    assert (result["deployment"], result["provider"], result["attempts"]) == (
        "primary",
        "openai",
        1,
    )
    assert (result["prompt_tokens"], result["completion_tokens"]) == (1_000, 0)
    (attempt,) = execution.attempts
    assert (attempt["outcome"], attempt["model"], attempt["prompt_tokens"]) == (
        "ok",
        "text-embedding-3-small",
        1_000,
    )


async def test_chat_on_the_same_kind_of_route_still_uses_anthropic() -> None:
    provider = EmbeddingFake({})
    execution = await executor(provider).execute(envelope("chat", "/v1/chat/completions"))
    assert provider.chat_calls == ["claude"]
    assert provider.embed_calls == []
    assert execution.result["status"] == "succeeded"


async def test_embeddings_fail_over_like_chat_and_record_every_attempt() -> None:
    provider = EmbeddingFake(
        {"primary": [ProviderServerError("primary: upstream answered 500")], "backup": [reply()]}
    )
    execution = await executor(provider).execute(envelope())
    assert [name for name, _ in provider.embed_calls] == ["primary", "backup"]
    assert execution.result["deployment"] == "backup"
    assert execution.result["attempts"] == 2
    assert [a["outcome"] for a in execution.attempts] == ["error", "ok"]


async def test_an_answer_too_large_for_a_result_fails_but_its_call_is_recorded() -> None:
    provider = EmbeddingFake({"primary": [reply(b"x" * 101)]})
    execution = await executor(provider, max_result_body_bytes=100).execute(envelope())
    result = execution.result
    assert (result["status"], result["http_status"]) == ("failed", 400)
    error = ErrorBody.model_validate_json(result["body"]).error
    assert (error.code, error.param) == ("response_too_large", "input")
    assert "101 bytes" in error.message
    (attempt,) = execution.attempts  # the provider call happened and is billed
    assert (attempt["outcome"], attempt["prompt_tokens"]) == ("ok", 1_000)
    assert len(result["body"]) < 1_000


async def test_the_size_guard_covers_chat_answers_too() -> None:
    provider = EmbeddingFake({})
    execution = await executor(provider, max_result_body_bytes=5).execute(
        envelope("chat", "/v1/chat/completions")
    )
    assert execution.result["status"] == "failed"
    assert execution.result["error_type"] == "ResponseTooLarge"


async def test_a_provider_that_cannot_embed_fails_the_request_without_a_chat_call() -> None:
    execution = await executor(ChatOnly()).execute(envelope())
    assert execution.result["status"] == "failed"
    assert execution.result["http_status"] == 502
    assert [a["outcome"] for a in execution.attempts] == ["error", "error"]


async def test_the_embedding_attempt_is_priced_at_the_input_rate() -> None:
    provider = EmbeddingFake({"primary": [reply()]})
    (attempt,) = (await executor(provider).execute(envelope())).attempts
    priced = price_attempt(attempt, load_catalogue(), priced_at_ms=NOW_MS)
    assert priced is not None
    assert priced["cost_status"] == "priced"
    # text-embedding-3-small: USD 0.02 per 1M input tokens -> 1,000 tokens = 20,000 nano-USD
    assert priced["cost_nano_usd"] == 20_000


def test_pacing_estimate_has_no_output_share_for_embeddings() -> None:
    body = b"x" * 400
    assert estimate_tokens(body, {}, embeddings=True) == 100
    assert estimate_tokens(body, {}) == 100 + 256
