"""Turn an HTTP body into a validated request envelope. Pure.

Checks, in order: size (the body is already capped while it is read), JSON
syntax (invalid UTF-8 and nesting deeper than orjson's limit of 1024 are
syntax errors), the OpenAI schema, the model's existence in the routing table,
and features not offered on this endpoint yet. Each failure is a typed
`InvalidRequest` that the app renders in the OpenAI error format.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from schemas.errors import InvalidRequest, MalformedJSON
from schemas.openai import ChatCompletionRequest
from schemas.records import Mode, RequestEnvelope
from schemas.routes import RoutesConfig

CHAT_ENDPOINT = "/v1/chat/completions"


def parse_chat_request(body: bytes, routes: RoutesConfig) -> ChatCompletionRequest:
    """Validate a chat completion body. The original bytes travel on unchanged."""
    # strict: the original bytes travel on, so "max_tokens": "5" must not pass as 5 here
    # and reach the provider as a string.
    try:
        raw: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(
            f"We could not parse the JSON body of your request ({exc.msg})."
        ) from exc
    if not isinstance(raw, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        request = ChatCompletionRequest.model_validate(raw, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        detail = (
            "Unrecognized request argument supplied"
            if first["type"] == "extra_forbidden"
            else first["msg"]
        )
        raise InvalidRequest(f"{detail}: {param}", param=param) from exc
    routes.resolve(request.model)  # raises UnknownModel
    return request


def build_envelope(
    *,
    request_id: str,
    team_id: str,
    key_id: str | None,
    mode: Mode,
    model: str,
    body: bytes,
    now_ms: int,
    deadline_ms: int,
    ingress_id: str,
    reply_partition: int | None,
    metadata: dict[str, str] | None = None,
    endpoint: str = CHAT_ENDPOINT,
) -> RequestEnvelope:
    return {
        "request_id": request_id,
        "team_id": team_id,
        "key_id": key_id,
        "mode": mode,
        "endpoint": endpoint,
        "model": model,
        "body": body,
        "received_at_ms": now_ms,
        "deadline_ms": deadline_ms,
        "ingress_id": ingress_id,
        "reply_partition": reply_partition,
        "metadata": metadata or {},
    }
