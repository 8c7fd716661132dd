"""Execute one request envelope: plan, call with fallback, and describe what happened.

Input: a decoded `RequestEnvelope`. Output: an `Execution` holding the final
`Result` and one `Attempt` per provider call, which the consumer publishes.
The provider and the clock are parameters; no Kafka here.

Every provider call becomes an `Attempt`, successful or not, because each one
may have cost money. `execution_id` is fresh per execution, so a request
re-executed after a router crash produces attempts with new ids (real spend,
recorded) and a second result with the same `request_id` (which every sink
dedups by key: one billed result).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from schemas.errors import (
    AllProvidersFailed,
    BudgetExceeded,
    DeadlineExceeded,
    InvalidRequest,
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderServerError,
    ProviderTimeout,
    ResponseTooLarge,
    ServiceUnavailable,
    StreamBroken,
    TollwayError,
)
from schemas.openai import EMBEDDINGS_ENDPOINT
from schemas.records import (
    RESULT_BODY_MAX_BYTES,
    ZERO_USAGE,
    Attempt,
    RequestEnvelope,
    Result,
    StreamChunk,
)
from schemas.routes import EMBEDDING_PROVIDERS, Deployment, ModelRoute, RoutesConfig
from workers.providers.base import ChatProvider, ProviderReply, StreamPiece
from workers.providers.canonical import completion_as_chunk
from workers.router.call_spans import traced_send
from workers.router.fallback import RetryPolicy, run_fallback
from workers.router.health import HealthBoard
from workers.router.pacing import Pacer
from workers.router.policy import healthy_first, order_by_strategy
from workers.router.rate_limits import RETRY_AFTER_KEY
from workers.router.stream_assembly import StreamAssembler
from workers.telemetry.metrics import router_metrics

if TYPE_CHECKING:
    from workers.cache.hook import RouterCache
    from workers.router.budgets import AttemptBudgets

log = logging.getLogger("tollway.router")


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class Execution:
    result: Result
    attempts: list[Attempt] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Executor:
    """Everything an execution needs besides the envelope."""

    routes: RoutesConfig
    provider: ChatProvider
    router_id: str
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    clock_ms: Callable[[], int] = wall_ms
    health: HealthBoard = field(default_factory=HealthBoard)
    rand: Callable[[], float] = random.random
    pacer: Pacer = field(default_factory=Pacer)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    max_queue_wait_ms: int = 3_600_000
    """How long queued (async/batch) work keeps waiting out 429s before it fails."""
    max_result_body_bytes: int = RESULT_BODY_MAX_BYTES
    """A larger answer fails as `ResponseTooLarge`: no Kafka record could carry it."""
    budgets: AttemptBudgets | None = None
    """Budget check + reservation around each attempt (workers/router/budgets.py); None:
    no budgets configured, nothing on the path."""
    cache: RouterCache | None = None
    """Exact and semantic response cache (workers/cache/hook.py); None: cache off."""

    async def _pace(self, route: Deployment, queued: bool, tokens: int) -> None:
        """Queued work waits for the deployment's quota; interactive work only spends it."""
        if queued:
            while (
                wait_ms := self.pacer.wait_ms(route.name, route.rpm, route.tpm, self.clock_ms())
            ) > 0:
                await self.sleep(wait_ms / 1000)
        self.pacer.spend(route.name, route.rpm, route.tpm, self.clock_ms(), tokens)

    def plan(self, model_route: ModelRoute, *, embeddings: bool = False) -> tuple[Deployment, ...]:
        """The deployments of one model in the order to try: strategy, then health.
        For `embeddings`, only the deployments whose provider has an embeddings API."""
        deployments = model_route.deployments
        if embeddings:
            deployments = tuple(d for d in deployments if d.provider in EMBEDDING_PROVIDERS)
        ordered = order_by_strategy(
            deployments,
            model_route.strategy,
            weight_of=lambda d: d.weight,
            latency_ms_of=lambda d: self.health.latency_ms(d.name),
            cost_of=lambda d: d.cost_hint_usd_per_mtok(),
            rand=self.rand,
        )
        now_ms = self.clock_ms()
        return healthy_first(ordered, lambda name: self.health.available(name, now_ms))

    async def _run_chains(
        self,
        model_route: ModelRoute,
        call: Callable[[Deployment], Awaitable[ProviderReply]],
        *,
        embeddings: bool = False,
    ) -> tuple[Deployment, ProviderReply]:
        """The model's plan; when it ends in a context-window or content-policy refusal,
        the plans of the models named for that case, in order."""
        try:
            return await run_fallback(
                self.plan(model_route, embeddings=embeddings), call, policy=self.retry
            )
        except ProviderBadRequest as refusal:
            chain = _special_chain(model_route, refusal)
            if not chain:
                raise
            last: ProviderBadRequest = refusal
            for model in chain:
                try:
                    return await run_fallback(
                        self.plan(self.routes.resolve(model), embeddings=embeddings),
                        call,
                        policy=self.retry,
                    )
                except ProviderBadRequest as again:
                    last = again
            raise last from refusal

    def _recording_call(
        self,
        *,
        envelope: RequestEnvelope,
        execution_id: str,
        attempts: list[Attempt],
        send: Callable[[Deployment], Awaitable[ProviderReply]],
        queued: bool,
        tokens: int,
    ) -> Callable[[Deployment], Awaitable[ProviderReply]]:
        """`send` wrapped with pacing, health bookkeeping and one Attempt per call."""

        async def call(route: Deployment) -> ProviderReply:
            await self._pace(route, queued, tokens)
            started_ms = self.clock_ms()
            self.health.on_call(route.name, started_ms)
            t0 = time.perf_counter()
            error: ProviderError | None = None
            reply: ProviderReply | None = None
            try:
                reply = await send(route)
                self.health.on_success(route.name, (time.perf_counter() - t0) * 1000.0)
            except ProviderError as exc:
                error = exc
                if isinstance(exc, ProviderRateLimited):
                    pause_s = exc.retry_after_s if exc.retry_after_s is not None else 1.0
                    self.pacer.pause(route.name, self.clock_ms() + int(pause_s * 1000))
                elif not exc.ends_plan:  # a refused request says nothing about the deployment
                    self.health.on_failure(route.name, self.clock_ms())
                raise
            except Exception as exc:
                # An adapter bug must not pass for a success nor kill the record's task:
                # it counts as a failed (possibly billed) call and the plan goes on.
                log.exception("adapter %s raised %s", route.provider, type(exc).__name__)
                error = ProviderServerError(f"{route.name}: adapter failure ({type(exc).__name__})")
                raise error from exc
            finally:
                attempts.append(
                    self._attempt(
                        envelope=envelope,
                        execution_id=execution_id,
                        number=len(attempts) + 1,
                        route=route,
                        started_ms=started_ms,
                        latency_ms=(time.perf_counter() - t0) * 1000.0,
                        error=error,
                        reply=reply,
                    )
                )
            return reply

        return call

    async def execute(  # noqa: PLR0911, PLR0912  # +1 exit: an answer from the cache
        self, envelope: RequestEnvelope, emit: Callable[[StreamChunk], None] | None = None
    ) -> Execution:
        """Run the envelope's plan. With `emit`, a `stream: true` request is streamed:
        each chunk is handed to `emit` (in order) as it arrives from the provider."""
        execution_id = os.urandom(8).hex()  # 16 hex digits; uuid4 cost ~4 % of the router
        attempts: list[Attempt] = []
        if envelope["mode"] == "sync" and self.clock_ms() > envelope["deadline_ms"]:
            # Nobody waits any more: the ingress already answered 504. Spend nothing.
            late = DeadlineExceeded("the request's deadline passed before a router took it")
            return Execution(self._failed(envelope, execution_id, late, attempts))
        try:
            request: dict[str, Any] = orjson.loads(envelope["body"])
            model_route = self.routes.resolve_for(  # the team's/key's alias, if any
                envelope["model"], team_id=envelope["team_id"], key_id=envelope["key_id"]
            )
        except orjson.JSONDecodeError:
            err = InvalidRequest("the request body is not valid JSON")
            return Execution(self._failed(envelope, execution_id, err, attempts))
        except TollwayError as exc:
            return Execution(self._failed(envelope, execution_id, exc, attempts))

        send: Callable[[Deployment], Awaitable[ProviderReply]]
        embeddings = envelope["endpoint"] == EMBEDDINGS_ENDPOINT
        cached = None
        if self.cache is not None and not embeddings:  # a hit makes no provider call
            cached = await self.cache.before(envelope, request, execution_id, self.router_id, emit)
            if cached.served is not None:
                return Execution(*cached.served)
        if embeddings:
            send = self._embed_call(request)
        elif emit is not None and request.get("stream"):
            send = StreamRelay(self.provider, request, envelope["request_id"], execution_id, emit)
        else:

            async def send(route: Deployment) -> ProviderReply:
                return await self.provider.chat(route, request)

        queued = envelope["mode"] != "sync"
        call = self._recording_call(
            envelope=envelope,
            execution_id=execution_id,
            attempts=attempts,
            send=traced_send(send, envelope, attempts, embeddings=embeddings),  # spans: 0019
            queued=queued,
            tokens=estimate_tokens(envelope["body"], request, embeddings=embeddings),
        )
        if self.budgets is not None:
            call = self.budgets.guard(envelope, request, call)

        give_up_ms = self.clock_ms() + self.max_queue_wait_ms
        while True:
            try:
                route, reply = await self._run_chains(model_route, call, embeddings=embeddings)
                self._check_size(reply, embeddings)  # the call is billed all the same
                break
            except AllProvidersFailed as exc:
                if queued and _only_rate_limited(exc) and self.clock_ms() < give_up_ms:
                    continue  # queue, don't fail: the pacer holds the next call back
                return Execution(self._failed(envelope, execution_id, exc, attempts), attempts)
            except (ProviderError, BudgetExceeded, ServiceUnavailable, ResponseTooLarge) as exc:
                # a budget refusal (429) or unknown budget state (503) ends the plan, unbilled
                return Execution(self._failed(envelope, execution_id, exc, attempts), attempts)
        result: Result = {
            "request_id": envelope["request_id"],
            "team_id": envelope["team_id"],
            "key_id": envelope["key_id"],
            "mode": envelope["mode"],
            "execution_id": execution_id,
            "status": "succeeded",
            "http_status": 200,
            "body": reply.body,
            "error_type": None,
            "requested_model": envelope["model"],
            "served_model": reply.served_model,
            "provider": route.provider,
            "deployment": route.name,
            "attempts": len(attempts),
            **reply.usage,
            "received_at_ms": envelope["received_at_ms"],
            "finished_at_ms": self.clock_ms(),
            "metadata": envelope["metadata"],
        }
        if cached is not None and self.cache is not None:  # store it; `tollway.cache: miss`
            result = await self.cache.after(cached, result, route, reply)
        return Execution(result, attempts)

    def _check_size(self, reply: ProviderReply, embeddings: bool) -> None:
        """Raise `ResponseTooLarge` when no Kafka record could carry the answer."""
        if len(reply.body) > self.max_result_body_bytes:
            raise ResponseTooLarge(
                f"The answer took {len(reply.body)} bytes, more than this gateway carries in "
                f"one response ({self.max_result_body_bytes}); ask for less per request.",
                param="input" if embeddings else None,
            )

    def _embed_call(
        self, request: dict[str, Any]
    ) -> Callable[[Deployment], Awaitable[ProviderReply]]:
        """The provider's `embed` for one embeddings request (`EmbeddingProvider`)."""
        embed: Callable[[Deployment, dict[str, Any]], Awaitable[ProviderReply]] | None = getattr(
            self.provider, "embed", None
        )

        async def send(route: Deployment) -> ProviderReply:
            if embed is None:
                raise ProviderError(f"{route.name}: this router's provider cannot embed")
            return await embed(route, request)

        return send

    def failed_result(self, envelope: RequestEnvelope, error: TollwayError) -> Result:
        """A failed result for an envelope whose execution could not even start or finish."""
        return self._failed(envelope, os.urandom(8).hex(), error, [])

    def _failed(
        self,
        envelope: RequestEnvelope,
        execution_id: str,
        error: TollwayError,
        attempts: list[Attempt],
    ) -> Result:
        shown = error
        if isinstance(error, AllProvidersFailed) and error.last is not None:
            shown = error.last if error.last.http_status == 429 else error
        last = attempts[-1] if attempts else None
        metadata = envelope["metadata"]
        retry_after = shown.headers().get("retry-after")
        if retry_after is not None and isinstance(shown, BudgetExceeded | ServiceUnavailable):
            # a budget refusal (429) or unknown budget state (503): the ingress answers
            # with Retry-After, as for its own refusals (0009, result_response)
            metadata = {**metadata, RETRY_AFTER_KEY: retry_after}
        return {
            "request_id": envelope["request_id"],
            "team_id": envelope["team_id"],
            "key_id": envelope["key_id"],
            "mode": envelope["mode"],
            "execution_id": execution_id,
            "status": "failed",
            "http_status": shown.http_status,
            "body": orjson.dumps(shown.to_body()),
            "error_type": type(error).__name__,
            "requested_model": envelope["model"],
            "served_model": None,
            "provider": last["provider"] if last else None,
            "deployment": last["deployment"] if last else None,
            "attempts": len(attempts),
            **ZERO_USAGE,
            "received_at_ms": envelope["received_at_ms"],
            "finished_at_ms": self.clock_ms(),
            "metadata": metadata,
        }

    def _attempt(
        self,
        *,
        envelope: RequestEnvelope,
        execution_id: str,
        number: int,
        route: Deployment,
        started_ms: int,
        latency_ms: float,
        error: ProviderError | None,
        reply: ProviderReply | None,
    ) -> Attempt:
        usage = reply.usage if reply is not None else ZERO_USAGE
        return {
            "request_id": envelope["request_id"],
            "attempt_id": f"{execution_id}.{number}",
            "attempt": number,
            "team_id": envelope["team_id"],
            "key_id": envelope["key_id"],
            "mode": envelope["mode"],
            "deployment": route.name,
            "provider": route.provider,
            "model": route.model or envelope["model"],
            "started_at_ms": started_ms,
            "latency_ms": latency_ms,
            "outcome": "ok" if error is None else "error",
            "http_status": 200 if error is None else error.upstream_status,
            "error_type": None if error is None else type(error).__name__,
            "error_code": None if error is None else (error.upstream_code or error.code),
            **usage,
            "router_id": self.router_id,
        }


class StreamRelay:
    """Calls a deployment with streaming and relays each chunk to `emit` as it comes.

    Upstream is always asked for usage (`stream_options.include_usage`) because
    the call must be billed; the usage-only chunk is relayed only when the client
    asked for it too. Before the first relayed chunk a provider error lets the
    plan fail over; after it the client has seen output, so the error ends the
    plan (`StreamBroken`). Providers without `chat_stream` answer in one piece,
    relayed as a single chunk.
    """

    def __init__(
        self,
        provider: ChatProvider,
        request: dict[str, Any],
        request_id: str,
        execution_id: str,
        emit: Callable[[StreamChunk], None],
    ) -> None:
        self._provider = provider
        options = request.get("stream_options") or {}
        self._client_wants_usage = bool(options.get("include_usage"))
        self._upstream = {**request, "stream_options": {**options, "include_usage": True}}
        self._request_id = request_id
        self._execution_id = execution_id
        self._emit = emit
        self.sent = 0

    async def __call__(self, route: Deployment) -> ProviderReply:
        assembler = StreamAssembler()
        usage = None
        started: float | None = time.perf_counter()
        try:
            async for piece in self._timed_pieces(route):
                if started is not None:  # time to first token, by deployment
                    router_metrics().ttft.labels(route.name).observe(time.perf_counter() - started)
                    started = None
                chunk = orjson.loads(piece.data)
                assembler.add(chunk)
                if piece.usage is not None:
                    usage = piece.usage
                if not chunk.get("choices") and "usage" in chunk and not self._client_wants_usage:
                    continue
                self._emit(
                    {
                        "request_id": self._request_id,
                        "execution_id": self._execution_id,
                        "seq": self.sent,
                        "data": piece.data,
                        "cache": None,
                    }
                )
                self.sent += 1
        except ProviderError as exc:
            if self.sent:
                raise StreamBroken(f"{route.name}: stream broke after {self.sent} chunks") from exc
            raise
        completion = assembler.completion()
        return ProviderReply(
            body=orjson.dumps(completion),
            usage=usage or ZERO_USAGE.copy(),
            served_model=str(completion.get("model") or route.model or ""),
        )

    async def _timed_pieces(self, route: Deployment) -> AsyncIterator[StreamPiece]:
        """`_pieces`, with the deployment's time-to-first-token bound on the first one."""
        pieces = self._pieces(route)
        try:
            if route.first_token_timeout_s is not None:
                try:
                    async with asyncio.timeout(route.first_token_timeout_s):
                        first = await anext(pieces)
                except StopAsyncIteration:
                    return
                except TimeoutError as exc:
                    raise ProviderTimeout(
                        f"{route.name}: no first chunk within {route.first_token_timeout_s} s"
                    ) from exc
                yield first
            async for piece in pieces:
                yield piece
        finally:
            aclose = getattr(pieces, "aclose", None)
            if aclose is not None:
                await aclose()  # release the upstream connection at once

    def _pieces(self, route: Deployment) -> AsyncIterator[StreamPiece]:
        chat_stream = getattr(self._provider, "chat_stream", None)
        if chat_stream is not None:
            pieces: AsyncIterator[StreamPiece] = chat_stream(route, self._upstream)
            return pieces
        return self._one_piece(route)

    async def _one_piece(self, route: Deployment) -> AsyncIterator[StreamPiece]:
        reply = await self._provider.chat(route, {**self._upstream, "stream": False})
        yield StreamPiece(completion_as_chunk(reply.body), reply.usage)


CONTEXT_WINDOW_CODES = frozenset({"context_length_exceeded"})
CONTENT_POLICY_CODES = frozenset({"content_filter", "content_policy_violation"})


def _special_chain(model_route: ModelRoute, refusal: ProviderBadRequest) -> tuple[str, ...]:
    if refusal.upstream_code in CONTEXT_WINDOW_CODES:
        return model_route.context_window_fallbacks
    if refusal.upstream_code in CONTENT_POLICY_CODES:
        return model_route.content_policy_fallbacks
    return ()


_DEFAULT_OUTPUT_TOKENS = 256


def estimate_tokens(body: bytes, request: dict[str, Any], *, embeddings: bool = False) -> int:
    """A cheap upper-ish estimate for quota pacing: ~4 bytes a prompt token, plus the
    requested output (or a default; none for embeddings). Not used for money (that is
    the provider's count)."""
    if embeddings:
        return len(body) // 4
    output = request.get("max_completion_tokens") or request.get("max_tokens")
    return len(body) // 4 + int(output or _DEFAULT_OUTPUT_TOKENS)


def _only_rate_limited(error: AllProvidersFailed) -> bool:
    return bool(error.errors) and all(isinstance(e, ProviderRateLimited) for _, e in error.errors)
