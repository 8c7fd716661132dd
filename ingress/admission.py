"""Turn an HTTP body into a validated request envelope. Pure.

Checks, in order: size (the body is already capped while it is read), JSON
syntax (invalid UTF-8 and nesting deeper than orjson's limit of 1024 are
syntax errors), the OpenAI schema, the model's existence in the routing table,
and features not offered on this endpoint yet. Each failure is a typed
`InvalidRequest` that the app renders in the OpenAI error format.

Budgets (`apply_admission`): the ingress asks a `BudgetCheck` (the budget-state
view, workers/budget/view.py) before publishing; a refusal is raised there
(429 `budget_exceeded` / 503), a soft warning becomes the response header
`x-tollway-budget-warning`, and a downgrade rewrites the envelope's model AND
the body's `model` (adapters send the body's model upstream) and records the
asked-for model in the metadata as `tollway.downgraded_from`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from schemas.errors import InvalidRequest, MalformedJSON
from schemas.openai import ChatCompletionRequest
from schemas.records import Mode, RequestEnvelope
from schemas.routes import RoutesConfig
from workers.budget.enforcement import Admission

CHAT_ENDPOINT = "/v1/chat/completions"
BUDGET_WARNING_HEADER: Final = "x-tollway-budget-warning"
DOWNGRADED_FROM_KEY: Final = "tollway.downgraded_from"
_WARNING_MAX_CHARS: Final = 1_000

M = TypeVar("M", bound=BaseModel)


def parse_json_body(body: bytes, model: type[M]) -> M:
    """`body` validated as `model`, strictly; the first problem found is a typed 400.

    Shared with embeddings.py, so a mistake gets the same error on either endpoint:
    not JSON -> MalformedJSON; not an object -> InvalidRequest; an unknown field or a
    wrong/out-of-range value -> InvalidRequest with `param` its dotted path; a
    ValueError from one of our validators -> InvalidRequest with its own message.
    Strict: the original bytes travel on to the provider, so `"max_tokens": "5"` must
    not pass as 5 here and reach the provider as a string.
    """
    try:
        raw: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(
            f"We could not parse the JSON body of your request ({exc.msg})."
        ) from exc
    if not isinstance(raw, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return model.model_validate(raw, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            detail = f"Unrecognized request argument supplied: {param}"
        elif first["type"] == "value_error":
            detail = str(first["ctx"]["error"])  # our own message, naming the item
        else:
            detail = f"{first['msg']}: {param}"
        raise InvalidRequest(detail, param=param) from exc


def parse_chat_request(
    body: bytes, routes: RoutesConfig, *, team_id: str | None = None, key_id: str | None = None
) -> ChatCompletionRequest:
    """Validate a chat completion body. The original bytes travel on unchanged.

    `team_id`/`key_id` name the caller, whose aliases (`RoutesConfig.aliased`) count as
    models; the router applies the same aliases when it plans the request."""
    request = parse_json_body(body, ChatCompletionRequest)  # strict: see parse_json_body
    routes.resolve_for(request.model, team_id=team_id, key_id=key_id)  # raises UnknownModel
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


class BudgetCheck(Protocol):
    """What admission needs from the budget view (`workers.budget.view.BudgetView`)."""

    @property
    def ready(self) -> bool: ...

    def check(
        self, team_id: str, key_id: str | None, model: str, now_ms: int | None = None
    ) -> Admission:
        """Admit or downgrade; raises `BudgetExceeded` (429) or `ServiceUnavailable` (503)."""
        ...


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request after budget admission: what to publish and the headers to answer with."""

    model: str
    body: bytes
    metadata: dict[str, str]
    headers: dict[str, str]


def apply_admission(admission: Admission, body: bytes, metadata: dict[str, str]) -> Admitted:
    """Fold an `Admission` into the request (see the module docstring)."""
    headers: dict[str, str] = {}
    if admission.warnings:
        text = "; ".join(admission.warnings)[:_WARNING_MAX_CHARS]
        headers[BUDGET_WARNING_HEADER] = text.encode("ascii", "replace").decode("ascii")
    if admission.downgraded_from is None:
        return Admitted(admission.model, body, metadata, headers)
    raw = orjson.loads(body)  # parse_chat_request has validated it: a JSON object
    raw["model"] = admission.model
    return Admitted(
        admission.model,
        orjson.dumps(raw),
        {**metadata, DOWNGRADED_FROM_KEY: admission.downgraded_from},
        headers,
    )
