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

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from schemas.errors import (
    AllProvidersFailed,
    DeadlineExceeded,
    InvalidRequest,
    ProviderError,
    ProviderServerError,
    TollwayError,
)
from schemas.records import ZERO_USAGE, Attempt, RequestEnvelope, Result
from schemas.routes import Deployment, RoutesConfig
from workers.providers.base import ChatProvider, ProviderReply
from workers.router.fallback import RetryPolicy, run_fallback
from workers.router.policy import plan_routes

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

    async def execute(self, envelope: RequestEnvelope) -> Execution:
        execution_id = uuid.uuid4().hex[:16]
        attempts: list[Attempt] = []
        if envelope["mode"] == "sync" and self.clock_ms() > envelope["deadline_ms"]:
            # Nobody waits any more: the ingress already answered 504. Spend nothing.
            late = DeadlineExceeded("the request's deadline passed before a router took it")
            return Execution(self._failed(envelope, execution_id, late, attempts))
        try:
            request: dict[str, Any] = orjson.loads(envelope["body"])
            routes = plan_routes(envelope["model"], self.routes)
        except orjson.JSONDecodeError:
            err = InvalidRequest("the request body is not valid JSON")
            return Execution(self._failed(envelope, execution_id, err, attempts))
        except TollwayError as exc:
            return Execution(self._failed(envelope, execution_id, exc, attempts))

        async def call(route: Deployment) -> ProviderReply:
            started_ms = self.clock_ms()
            t0 = time.perf_counter()
            error: ProviderError | None = None
            reply: ProviderReply | None = None
            try:
                reply = await self.provider.chat(route, request)
            except ProviderError as exc:
                error = exc
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

        try:
            route, reply = await run_fallback(routes, call, policy=self.retry)
        except (AllProvidersFailed, ProviderError) as exc:
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
        return Execution(result, attempts)

    def failed_result(self, envelope: RequestEnvelope, error: TollwayError) -> Result:
        """A failed result for an envelope whose execution could not even start or finish."""
        return self._failed(envelope, uuid.uuid4().hex[:16], error, [])

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
            "metadata": envelope["metadata"],
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
