"""The bulk async submission call: its body and its answer. Pure.

    POST /v1/async/bulk/chat/completions        (ingress/bulk_api.py)
    {"requests": [<async chat completion body>, ...]}
      -> 202 {"object": "list", "queued": n, "refused": m, "data": [entry, ...]}

One entry per item, in the items' order, each naming its `index`:

    {"index": i, "id": "req_...", "object": "async.request", "status": "queued"}
    {"index": i, "http_status": 429, "error": {message, type, param, code}}

A queued entry is exactly what POST /v1/async/chat/completions would have answered
(its result is fetched by id the same way); a refused one carries the status and the
OpenAI error body that call would have answered with. The call itself is refused (400,
nothing is published) only when its envelope is wrong: not a JSON object, a field other
than `requests`, `requests` not a list of 1..`max_items` JSON objects.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from schemas.errors import InvalidRequest, MalformedJSON, TollwayError

BULK_PATH: Final = "/v1/async/bulk/chat/completions"
ITEMS_FIELD: Final = "requests"
DEFAULT_MAX_ITEMS: Final = 1_000
"""TOLLWAY_INGRESS_BULK_MAX_ITEMS's default (and the limit /openapi.json states)."""


def parse_bulk_body(body: bytes, max_items: int) -> list[dict[str, Any]]:
    """The call's items (JSON objects, not validated yet: each is admitted on its own).

    Raises `MalformedJSON` (not JSON) or `InvalidRequest` (param names the field or the
    item) when the envelope is wrong; `max_items` is `TOLLWAY_INGRESS_BULK_MAX_ITEMS`.
    """
    try:
        raw: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(
            f"We could not parse the JSON body of your request ({exc.msg})."
        ) from exc
    if not isinstance(raw, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    for name in raw:
        if name != ITEMS_FIELD:
            raise InvalidRequest(f"Unrecognized request argument supplied: {name}", param=name)
    items = raw.get(ITEMS_FIELD)
    if not isinstance(items, list):
        raise InvalidRequest(
            f"`{ITEMS_FIELD}` is required: a list of chat completion requests.",
            param=ITEMS_FIELD,
        )
    if not 1 <= len(items) <= max_items:
        raise InvalidRequest(
            f"`{ITEMS_FIELD}` holds {len(items)} requests: one call takes 1 to {max_items} "
            "(TOLLWAY_INGRESS_BULK_MAX_ITEMS).",
            param=ITEMS_FIELD,
        )
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidRequest(
                f"`{ITEMS_FIELD}[{index}]` must be a JSON object.", param=f"{ITEMS_FIELD}.{index}"
            )
    return items


def queued_entry(index: int, request_id: str) -> dict[str, Any]:
    return {"index": index, "id": request_id, "object": "async.request", "status": "queued"}


def error_entry(index: int, error: TollwayError) -> dict[str, Any]:
    return {"index": index, "http_status": error.http_status, **error.to_body()}


def bulk_answer(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The 202 body: `entries` (one per item, in order) and how many were queued."""
    queued = sum(1 for entry in entries if "id" in entry)
    return {"object": "list", "queued": queued, "refused": len(entries) - queued, "data": entries}
