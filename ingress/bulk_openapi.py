"""The bulk async endpoint in the ingress's OpenAPI document (ingress/openapi.py). Pure.

The call's envelope is described strictly (a JSON object with `requests`, 1..
`max_items` JSON objects): anything else is a 400 for the whole call. Each item is
admitted on its own and a bad item is refused in its own entry of the 202 answer, not
by a 4xx: so an item is documented as "an AsyncChatCompletionRequest, or any object"
(what the endpoint accepts without refusing the call), with the rule in words.
"""

from __future__ import annotations

from typing import Any

from ingress.bulk import BULK_PATH, ITEMS_FIELD
from ingress.openapi_parts import errors, json_body, json_content, ok, ref

BULK_REQUEST = "BulkAsyncChatCompletionRequest"
BULK_ACCEPTED = "BulkAsyncAccepted"


def bulk_paths(max_items: int, refusals: tuple[str, ...]) -> dict[str, Any]:
    """The bulk path; `refusals` = the error statuses of the whole call (the single
    endpoint's admission statuses: a whole call is refused by few of them)."""
    return {
        BULK_PATH: {
            "post": {
                "operationId": "createBulkAsyncChatCompletions",
                "summary": f"Publish 1 to {max_items} async chat completion requests in one "
                "call; one entry per item, in order: its id, or its own error.",
                "requestBody": json_body(BULK_REQUEST),
                "responses": {
                    "202": ok(
                        "Every item either written to Kafka (acks=all) and listed with its "
                        "id, or refused with its own error.",
                        json_content(ref(BULK_ACCEPTED)),
                    ),
                    **errors(refusals),
                },
            }
        }
    }


def bulk_schemas(max_items: int) -> dict[str, Any]:
    """The request and answer schemas of the bulk path, by component name."""
    queued = {
        "type": "object",
        "required": ["index", "id", "object", "status"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "id": {"type": "string"},
            "object": {"const": "async.request"},
            "status": {"const": "queued"},
        },
    }
    refused = {
        "type": "object",
        "required": ["index", "http_status", "error"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "http_status": {"type": "integer", "minimum": 400, "maximum": 599},
            "error": ref("ErrorDetail"),
        },
    }
    return {
        BULK_REQUEST: {
            "type": "object",
            "required": [ITEMS_FIELD],
            "additionalProperties": False,
            "properties": {
                ITEMS_FIELD: {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": max_items,
                    "description": "Async chat completion requests (AsyncChatCompletionRequest "
                    "each, `callback_url` included). Each is admitted as POST "
                    "/v1/async/chat/completions admits its body; an item that one would refuse "
                    "is refused in its own entry of the answer.",
                    "items": {"anyOf": [ref("AsyncChatCompletionRequest"), {"type": "object"}]},
                }
            },
        },
        BULK_ACCEPTED: {
            "type": "object",
            "required": ["object", "queued", "refused", "data"],
            "properties": {
                "object": {"const": "list"},
                "queued": {"type": "integer", "minimum": 0},
                "refused": {"type": "integer", "minimum": 0},
                "data": {"type": "array", "items": {"anyOf": [queued, refused]}},
            },
        },
    }
