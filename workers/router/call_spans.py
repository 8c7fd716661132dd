"""One client span per provider call attempt (docs/decisions/0019, docs/observability-tracing.md).

`traced_send(send, ...)` wraps the executor's raw provider call (`send(route)`, after
pacing, inside the budget guard): each call becomes a child of the router's
`process tollway.requests.*` span, named `<operation> <model>` as OpenTelemetry's
GenAI conventions do, with the deployment, provider, attempt number, outcome, HTTP
status and token counts as attributes. Tracing off, `send` is returned as it is.
No request or response content, and no error message, goes into a span.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sized

from schemas.errors import ProviderError
from schemas.records import RequestEnvelope
from schemas.routes import Deployment
from workers.providers.base import ProviderReply
from workers.telemetry import tracing

Send = Callable[[Deployment], Awaitable[ProviderReply]]


def traced_send(
    send: Send, envelope: RequestEnvelope, attempts: Sized, *, embeddings: bool = False
) -> Send:
    """`send` with a client span around each call; `attempts` (the execution's attempt
    list, appended after each call) numbers them."""
    if not tracing.enabled():
        return send
    operation = "embeddings" if embeddings else "chat"

    async def traced(route: Deployment) -> ProviderReply:
        model = route.model or envelope["model"]
        with tracing.start_span(
            f"{operation} {model}",
            kind="client",
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.request.model": model,
                "gen_ai.provider.name": route.provider,
                "tollway.deployment": route.name,
                "tollway.attempt": len(attempts) + 1,
                "tollway.request_id": envelope["request_id"],
            },
        ):
            try:
                reply = await send(route)
            except ProviderError as exc:
                tracing.set_attributes(
                    {
                        "tollway.outcome": "error",
                        "http.response.status_code": exc.upstream_status,
                    }
                )
                raise  # the span's status: ERROR, with the error's type name
            tracing.set_attributes(
                {
                    "tollway.outcome": "ok",
                    "http.response.status_code": 200,
                    "gen_ai.response.model": reply.served_model or None,
                    "gen_ai.usage.input_tokens": reply.usage["prompt_tokens"],
                    "gen_ai.usage.output_tokens": reply.usage["completion_tokens"],
                }
            )
            return reply

    return traced
