"""The ingress's OpenAPI 3.1 document, built from the models that validate its requests.

    GET /openapi.json   this document (no credential): `openapi_routes` for `extra_routes`

Every route the ingress serves (ingress/server.py) is an operation here; each lists the
error statuses it can answer, each with the OpenAI error body (`/v1/messages`:
Anthropic's). Security: a virtual key as a Bearer token on the data plane (optional
under `TOLLWAY_AUTH=open`), the admin key (`TOLLWAY_ADMIN_KEY`) on the admin routes.
The parts: openapi_schemas.py (component schemas, from the pydantic models),
openapi_admin.py (analytics and admin paths), openapi_parts.py (shared pieces).

tests/unit/test_openapi.py holds the document to the app's routes; test_fuzz_api.py
fuzzes the app against it (schemathesis). Pure: no I/O; built once per process.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ingress.batches_api import MAX_PAGE
from ingress.bulk import DEFAULT_MAX_ITEMS
from ingress.bulk_openapi import bulk_paths
from ingress.dashboard_openapi import dashboard_paths
from ingress.openapi_admin import admin_paths, analytics_paths
from ingress.openapi_parts import (
    JSON,
    REQUEST_ID_HEADER,
    anthropic_errors,
    errors,
    idempotency_header,
    json_body,
    json_content,
    ok,
    path_param,
    ref,
    sse_event,
)
from ingress.openapi_schemas import component_schemas

if TYPE_CHECKING:
    from ingress.app import Ingress

OPENAPI_PATH: Final = "/openapi.json"

# Statuses an operation can answer with an error body, besides its own 404 / 409.
_ADMISSION: Final = ("400", "401", "403", "404", "413", "429", "503")
"""Refused before anything is published (validation, credentials, size, budgets, Kafka)."""
_IDEMPOTENCY: Final = ("409", "422")
"""Idempotency-Key: the same key still running (409), or reused for another request (422)."""
_RESULT: Final = ("500", "502", "504")
"""A failed result relayed with its status (upstream, deadline), or an internal error."""
_ANY_ERROR: Final = ("500",)


def _data_plane_paths(keys_required: bool) -> dict[str, Any]:
    idem = [idempotency_header()]
    anthropic_security: list[dict[str, list[str]]] = [{"virtualKey": []}, {"anthropicApiKey": []}]
    if not keys_required:
        anthropic_security.append({})
    chat_ok = ok(
        "The completion (JSON), or with stream=true server-sent events of chunks, "
        "ending with `data: [DONE]`.",
        {**json_content(ref("ChatCompletion")), "text/event-stream": {"schema": sse_event(False)}},
        headers=REQUEST_ID_HEADER,
    )
    return {
        "/v1/chat/completions": {
            "post": {
                "operationId": "createChatCompletion",
                "summary": "Publish a chat completion request and wait for its result.",
                "parameters": idem,
                "requestBody": json_body("ChatCompletionRequest"),
                "responses": {
                    "200": chat_ok,
                    **errors(_ADMISSION + _IDEMPOTENCY + _RESULT),
                },
            }
        },
        "/v1/async/chat/completions": {
            "post": {
                "operationId": "createAsyncChatCompletion",
                "summary": "Publish a chat completion request; poll or receive a webhook.",
                "parameters": idem,
                "requestBody": json_body("AsyncChatCompletionRequest"),
                "responses": {
                    "202": ok(
                        "Accepted (written to Kafka with acks=all).",
                        json_content(ref("AsyncAccepted")),
                        headers={
                            **REQUEST_ID_HEADER,
                            "location": {"required": True, "schema": {"type": "string"}},
                        },
                    ),
                    **errors(_ADMISSION + _IDEMPOTENCY + _ANY_ERROR),
                },
            }
        },
        "/v1/embeddings": {
            "post": {
                "operationId": "createEmbeddings",
                "summary": "Publish an embeddings request and wait for its result.",
                "parameters": idem,
                "requestBody": json_body("EmbeddingsRequest"),
                "responses": {
                    "200": ok(
                        "The embeddings.",
                        json_content(ref("EmbeddingsResponse")),
                        headers=REQUEST_ID_HEADER,
                    ),
                    **errors(_ADMISSION + _IDEMPOTENCY + _RESULT),
                },
            }
        },
        "/v1/async/requests/{request_id}": {
            "get": {
                "operationId": "getAsyncRequest",
                "summary": "The state of an async request, with its result once there is one.",
                "parameters": [path_param("request_id", "^req_[0-9a-f]{40}$")],
                "responses": {
                    "200": ok("Queued, succeeded or failed.", json_content(ref("AsyncRequest"))),
                    **errors(("401", "403", "404", "500")),
                },
            }
        },
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "summary": "The public model names of the routing table.",
                "responses": {
                    "200": ok("The models.", json_content(ref("ModelList"))),
                    **errors(("401", "403", "500")),
                },
            }
        },
        "/v1/messages": {
            "post": {
                "operationId": "createMessage",
                "summary": "Anthropic Messages API: translated, then as /v1/chat/completions.",
                "security": anthropic_security,
                "parameters": [
                    *idem,
                    {
                        "name": "anthropic-version",
                        "in": "header",
                        "required": False,
                        "description": "Accepted and not checked.",
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": json_body("MessagesRequest"),
                "responses": {
                    "200": ok(
                        "The Message, or with stream=true Anthropic's stream events.",
                        {
                            **json_content(ref("AnthropicMessage")),
                            "text/event-stream": {"schema": sse_event(True)},
                        },
                    ),
                    **anthropic_errors(_ADMISSION + _IDEMPOTENCY + _RESULT),
                },
            }
        },
    }


def _batch_paths() -> dict[str, Any]:
    idem = [idempotency_header()]
    file_id = path_param("file_id")
    batch_id = path_param("batch_id")
    return {
        "/v1/files": {
            "post": {
                "operationId": "uploadFile",
                "summary": "Upload a batch input file (JSONL, up to 200 MB), streamed to the "
                "file store.",
                "parameters": idem,
                "requestBody": {
                    "required": True,
                    "content": {"multipart/form-data": {"schema": ref("FileUpload")}},
                },
                "responses": {
                    "200": ok("The stored file.", json_content(ref("FileObject"))),
                    **errors(("400", "401", "403", "413", *_IDEMPOTENCY, "500")),
                },
            }
        },
        "/v1/files/{file_id}": {
            "get": {
                "operationId": "retrieveFile",
                "parameters": [file_id],
                "responses": {
                    "200": ok("The file object.", json_content(ref("FileObject"))),
                    **errors(("401", "403", "404", "500")),
                },
            }
        },
        "/v1/files/{file_id}/content": {
            "get": {
                "operationId": "downloadFile",
                "parameters": [file_id],
                "responses": {
                    "200": ok(
                        "The file's bytes.",
                        {"application/octet-stream": {"schema": {"type": "string"}}},
                    ),
                    **errors(("401", "403", "404", "500")),
                },
            }
        },
        "/v1/batches": {
            "post": {
                "operationId": "createBatch",
                "parameters": idem,
                "requestBody": json_body("BatchCreateRequest"),
                "responses": {
                    "200": ok("The new batch (validating).", json_content(ref("Batch"))),
                    **errors(_ADMISSION + _IDEMPOTENCY + _ANY_ERROR),
                },
            },
            "get": {
                "operationId": "listBatches",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": ok("Newest first.", json_content(ref("BatchList"))),
                    **errors(("400", "401", "403", "500")),
                },
            },
        },
        "/v1/batches/{batch_id}": {
            "get": {
                "operationId": "retrieveBatch",
                "parameters": [batch_id],
                "responses": {
                    "200": ok("The batch.", json_content(ref("Batch"))),
                    **errors(("401", "403", "404", "500")),
                },
            }
        },
        "/v1/batches/{batch_id}/cancel": {
            "post": {
                "operationId": "cancelBatch",
                "parameters": [batch_id, *idem],
                "responses": {
                    "200": ok("The batch, cancelling.", json_content(ref("Batch"))),
                    **errors(("400", "401", "403", "404", "409", "422", "500", "503")),
                },
            }
        },
    }


def _public_paths() -> dict[str, Any]:
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "security": [],
                "responses": {"200": ok("Alive.", json_content(ref("Health"))), **errors(("500",))},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "security": [],
                "responses": {
                    "200": ok("Kafka reachable, state caught up.", json_content(ref("Ready"))),
                    **errors(("500", "503")),
                },
            }
        },
        OPENAPI_PATH: {
            "get": {
                "operationId": "openapi",
                "security": [],
                "responses": {
                    "200": ok("This document.", json_content({"type": "object"})),
                    **errors(("500",)),
                },
            }
        },
    }


def build_openapi(*, keys_required: bool = True, version: str = "0.1.0") -> dict[str, Any]:
    """The document, freshly built (callers may change their copy). `keys_required=False`
    describes `TOLLWAY_AUTH=open`: the data plane takes requests without a key."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tollway ingress",
            "version": version,
            "description": "OpenAI-compatible LLM gateway: every request is written to Kafka "
            "before it is acknowledged. Errors use the OpenAI error body "
            '{"error": {message, type, param, code}} (Anthropic\'s on /v1/messages).',
        },
        "servers": [{"url": "/"}],
        "security": [{"virtualKey": []}] if keys_required else [{"virtualKey": []}, {}],
        "paths": {
            **_data_plane_paths(keys_required),
            **bulk_paths(DEFAULT_MAX_ITEMS, _ADMISSION + _ANY_ERROR),
            **_batch_paths(),
            **analytics_paths(),
            **admin_paths(),
            **dashboard_paths(),
            **_public_paths(),
        },
        "components": {
            "schemas": component_schemas(),
            "securitySchemes": {
                "virtualKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A virtual key of a team (`Authorization: Bearer <key>`).",
                },
                "anthropicApiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "The same virtual key, as Anthropic SDK clients send it.",
                },
                "adminKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "TOLLWAY_ADMIN_KEY (never a virtual key); unset: 403.",
                },
            },
        },
    }


@functools.cache
def openapi_json(*, keys_required: bool = True) -> bytes:
    """The document as JSON bytes, built once per process and auth mode."""
    return orjson.dumps(build_openapi(keys_required=keys_required))


def openapi_routes(ingress: Ingress) -> list[BaseRoute]:
    """`GET /openapi.json`, for `build_app(..., extra_routes=[..., openapi_routes])`; the
    document says whether this ingress needs keys (`TOLLWAY_AUTH`)."""
    document = openapi_json(keys_required=ingress.settings.auth != "open")

    async def serve(_: Request) -> Response:
        return Response(document, media_type=JSON)

    return [Route(OPENAPI_PATH, serve, methods=["GET"])]
