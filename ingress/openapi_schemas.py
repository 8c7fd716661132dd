"""The component schemas of the ingress's OpenAPI document (ingress/openapi.py). Pure.

Request bodies are the JSON Schemas (draft 2020-12, as OpenAPI 3.1 takes them) of the
pydantic models the handlers validate with, so the document cannot drift from the
validation; the few rules a handler adds on top (the `tollway.` metadata prefix,
`callback_url` on async only, no stream on async, the embeddings `input` shapes) are
written here next to the schema they refine. Answers that are plain dicts built by a
handler (async status, files, batches, analytics, ...) are described by hand.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from analytics.queries import QUERIES
from ingress.anthropic_format import MessagesRequest
from ingress.bulk import DEFAULT_MAX_ITEMS
from ingress.bulk_openapi import bulk_schemas
from ingress.openapi_parts import REF, ref
from schemas.openai import (
    MAX_EMBEDDING_INPUTS,
    MAX_TOKEN_ID,
    ChatCompletion,
    ChatCompletionRequest,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorBody,
)
from workers.batches.jsonl import SUPPORTED_ENDPOINTS
from workers.batches.state import (
    COMPLETION_WINDOWS_S,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_CHARS,
)
from workers.callbacks.events import MAX_CALLBACK_URL_CHARS, RESERVED_PREFIX
from workers.tenancy.specs import KeyPatch, KeySpec, PolicySpec, TeamPatch, TeamSpec

_MODELS: Final[tuple[tuple[type[BaseModel], JsonSchemaMode], ...]] = (
    (ChatCompletionRequest, "validation"),
    (EmbeddingsRequest, "validation"),
    (MessagesRequest, "validation"),
    (ChatCompletion, "serialization"),
    (EmbeddingsResponse, "serialization"),
    (ErrorBody, "serialization"),
    (TeamSpec, "validation"),
    (TeamPatch, "validation"),
    (KeySpec, "validation"),
    (KeyPatch, "validation"),
    (PolicySpec, "validation"),
)


def _pydantic_schemas() -> dict[str, Any]:
    """Every model's JSON Schema (draft 2020-12, as OpenAPI 3.1 takes it), by name."""
    _, top = models_json_schema(_MODELS, ref_template=REF)
    schemas: dict[str, Any] = top["$defs"]
    return schemas


def _metadata_keys_not_reserved(schema: dict[str, Any]) -> None:
    """Handlers refuse metadata keys starting with `tollway.` (reserved for the gateway)."""
    reserved = {"pattern": "^" + RESERVED_PREFIX.replace(".", r"\.")}
    for option in schema["properties"]["metadata"]["anyOf"]:
        if option.get("type") == "object":
            option["propertyNames"] = {"not": reserved}


def _embedding_input() -> dict[str, Any]:
    """`schemas.openai.check_embedding_input` as JSON Schema (its validator, not its type)."""
    token = {"type": "integer", "minimum": 0, "maximum": MAX_TOKEN_ID}
    many = {"minItems": 1, "maxItems": MAX_EMBEDDING_INPUTS}
    return {
        "description": "A non-empty string, or 1..2048 non-empty strings, token ids or "
        "non-empty token-id arrays (one kind per request).",
        "anyOf": [
            {"type": "string", "minLength": 1},
            {"type": "array", "items": {"type": "string", "minLength": 1}, **many},
            {"type": "array", "items": token, **many},
            {"type": "array", "items": {"type": "array", "items": token, "minItems": 1}, **many},
        ],
    }


def _async_chat_request(chat: dict[str, Any]) -> dict[str, Any]:
    """The async body: the chat body without streaming, plus an optional `callback_url`."""
    body = copy.deepcopy(chat)
    body["title"] = "AsyncChatCompletionRequest"
    body["description"] = (
        "POST /v1/async/chat/completions body: a chat completion request (no streaming) "
        "and an optional webhook for its result."
    )
    body["properties"]["stream"] = {"anyOf": [{"const": False}, {"type": "null"}]}
    body["properties"]["callback_url"] = {
        "type": "string",
        "format": "uri",
        "minLength": 1,
        "maxLength": MAX_CALLBACK_URL_CHARS,
        "description": "An absolute http(s) URL without credentials; the result is POSTed "
        "there as a signed webhook (Standard Webhooks). Public addresses only.",
    }
    return body


def _metadata_map() -> dict[str, Any]:
    return {
        "anyOf": [
            {
                "type": "object",
                "maxProperties": MAX_METADATA_KEYS,
                "propertyNames": {"minLength": 1, "maxLength": MAX_METADATA_KEY_CHARS},
                "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE_CHARS},
            },
            {"type": "null"},
        ]
    }


def _tollway_schemas() -> dict[str, Any]:
    """The answers that are not pydantic models (dicts built by the handlers)."""
    nullable_int = {"type": ["integer", "null"]}
    nullable_str = {"type": ["string", "null"]}
    return {
        "AsyncAccepted": {
            "type": "object",
            "required": ["id", "object", "status"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "async.request"},
                "status": {"const": "queued"},
            },
        },
        "AsyncRequest": {
            "type": "object",
            "required": ["id", "object", "status"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "async.request"},
                "status": {"enum": ["queued", "succeeded", "failed"]},
                "http_status": {"type": "integer"},
                "deployment": nullable_str,
                "attempts": {"type": "integer"},
                "response": {"type": ["object", "null"]},
                "error": {"anyOf": [ref("ErrorDetail"), {"type": "null"}]},
            },
        },
        "ModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"const": "list"},
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["id", "object", "created", "owned_by"],
                        "properties": {
                            "id": {"type": "string"},
                            "object": {"const": "model"},
                            "created": {"type": "integer"},
                            "owned_by": {"type": "string"},
                        },
                    },
                },
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
        },
        "Ready": {
            "type": "object",
            "required": ["status", "ingress_id"],
            "properties": {"status": {"const": "ready"}, "ingress_id": {"type": "string"}},
        },
        "AnthropicMessage": {
            "type": "object",
            "required": ["id", "type", "role", "model", "content", "stop_reason", "usage"],
            "properties": {
                "id": {"type": "string"},
                "type": {"const": "message"},
                "role": {"const": "assistant"},
                "model": {"type": "string"},
                "content": {"type": "array", "items": {"type": "object"}},
                "stop_reason": nullable_str,
                "stop_sequence": nullable_str,
                "usage": {"type": "object"},
            },
        },
        "AnthropicError": {
            "type": "object",
            "required": ["type", "error"],
            "properties": {
                "type": {"const": "error"},
                "error": {
                    "type": "object",
                    "required": ["type", "message"],
                    "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                },
                "request_id": {"type": "string"},
            },
        },
        "FileUpload": {
            "type": "object",
            "required": ["file", "purpose"],
            "properties": {
                "file": {
                    # no `type`: a form part is bytes whatever they look like
                    "contentMediaType": "application/octet-stream",
                    "description": "JSONL, one request per line (checked line by line later).",
                },
                "purpose": {"enum": ["batch"]},
            },
        },
        "FileObject": {
            "type": "object",
            "required": ["id", "object", "bytes", "created_at", "filename", "purpose"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "file"},
                "bytes": {"type": "integer"},
                "created_at": {"type": "integer"},
                "filename": {"type": "string"},
                "purpose": {"enum": ["batch", "batch_output"]},
                "status": {"type": "string"},
            },
        },
        "BatchCreateRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["input_file_id", "endpoint", "completion_window"],
            "properties": {
                "input_file_id": {"type": "string"},
                "endpoint": {"enum": sorted(SUPPORTED_ENDPOINTS)},
                "completion_window": {"enum": sorted(COMPLETION_WINDOWS_S)},
                "metadata": _metadata_map(),
                "output_expires_after": {"description": "Accepted for compatibility; unused."},
            },
        },
        "Batch": {
            "type": "object",
            "required": ["id", "object", "endpoint", "input_file_id", "status", "created_at"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "batch"},
                "endpoint": {"type": "string"},
                "input_file_id": {"type": "string"},
                "completion_window": {"type": "string"},
                "status": {
                    "enum": [
                        "validating",
                        "in_progress",
                        "finalizing",
                        "completed",
                        "failed",
                        "expired",
                        "cancelling",
                        "cancelled",
                    ]
                },
                "output_file_id": nullable_str,
                "error_file_id": nullable_str,
                "created_at": {"type": "integer"},
                "expires_at": nullable_int,
                "request_counts": {"type": "object"},
                "metadata": {"type": ["object", "null"]},
                "model": nullable_str,
                "usage": {"type": "object"},
                "tollway": {"type": "object"},
            },
        },
        "BatchList": {
            "type": "object",
            "required": ["object", "data", "has_more"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": ref("Batch")},
                "first_id": nullable_str,
                "last_id": nullable_str,
                "has_more": {"type": "boolean"},
            },
        },
        "AnalyticsListing": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"const": "list"},
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["object", "id", "path", "parameters", "columns"],
                        "properties": {
                            "object": {"const": "analytics.query"},
                            "id": {"enum": sorted(QUERIES)},
                            "path": {"type": "string"},
                            "description": {"type": "string"},
                            "parameters": {"type": "array", "items": {"type": "object"}},
                            "columns": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                },
            },
        },
        "AnalyticsAnswer": {
            "type": "object",
            "required": ["object", "query", "columns", "data", "has_more", "parameters"],
            "properties": {
                "object": {"const": "list"},
                "query": {"enum": sorted(QUERIES)},
                "columns": {"type": "array", "items": {"type": "string"}},
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "description": "column -> value; money as an exact decimal string",
                        "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
                    },
                },
                "has_more": {"type": "boolean"},
                "parameters": {"type": "object"},
            },
        },
    }


def component_schemas() -> dict[str, Any]:
    """Every schema of `components/schemas`, by name (a fresh dict on every call)."""
    schemas = _pydantic_schemas()
    chat = schemas["ChatCompletionRequest"]
    _metadata_keys_not_reserved(chat)
    schemas["AsyncChatCompletionRequest"] = _async_chat_request(chat)
    schemas["EmbeddingsRequest"]["properties"]["input"] = _embedding_input()
    schemas.update(_tollway_schemas())
    schemas.update(bulk_schemas(DEFAULT_MAX_ITEMS))  # ingress/bulk_openapi.py
    return schemas
