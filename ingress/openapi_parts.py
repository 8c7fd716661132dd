"""Building blocks of the ingress's OpenAPI document (ingress/openapi.py). Pure.

References into `components/schemas`, JSON content, the error responses of an
operation (every status with the OpenAI error body; Anthropic's or OpenAI's on
/v1/messages), server-sent events, and the parameters several operations share.
"""

from __future__ import annotations

from typing import Any, Final

from ingress.idempotency import HEADER as IDEMPOTENCY_HEADER
from ingress.idempotency import MAX_KEY_CHARS

REF: Final = "#/components/schemas/{model}"
JSON: Final = "application/json"


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def errors(statuses: tuple[str, ...], schema: str = "ErrorBody") -> dict[str, Any]:
    return {
        status: {"description": f"{status}: the error body", "content": json_content(ref(schema))}
        for status in sorted(set(statuses))
    }


def anthropic_errors(statuses: tuple[str, ...]) -> dict[str, Any]:
    """/v1/messages answers Anthropic's error body, except for the refusals of the
    Idempotency-Key middleware and unexpected errors, which run before or around it."""
    either = {"anyOf": [ref("AnthropicError"), ref("ErrorBody")]}
    return {
        status: {"description": f"{status}: the error body", "content": json_content(either)}
        for status in sorted(set(statuses))
    }


def ok(description: str, content: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": content, **extra}


REQUEST_ID_HEADER: Final = {
    "x-tollway-request-id": {
        "description": "The request's id (also in every later error of this request).",
        "required": True,
        "schema": {"type": "string"},
    }
}


def sse_event(named: bool) -> dict[str, Any]:
    """One server-sent event: `data` is a chunk (or error body) as JSON, or `[DONE]`;
    Anthropic's events also carry their `event` name."""
    required = ["event", "data"] if named else ["data"]
    return {
        "type": "object",
        "required": required,
        "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
    }


def idempotency_header() -> dict[str, Any]:
    return {
        "name": IDEMPOTENCY_HEADER,
        "in": "header",
        "required": False,
        "description": "Run the request at most once per key and team; a retry with the same "
        "key and body gets the first answer (not with stream=true).",
        "schema": {"type": "string", "pattern": f"^[ -~]{{1,{MAX_KEY_CHARS}}}$"},
    }


def path_param(name: str, pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern is not None:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "schema": schema}


def json_body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": json_content(ref(schema))}
