"""ingress/bulk.py: the bulk call's envelope and answer (pure)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from ingress.bulk import bulk_answer, error_entry, parse_bulk_body, queued_entry
from schemas.errors import InvalidRequest, MalformedJSON, QueueLimitExceeded

ITEM = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_the_items_come_back_in_order_unvalidated() -> None:
    items = [ITEM, {"anything": 1}, {}]
    assert parse_bulk_body(orjson.dumps({"requests": items}), 3) == items


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"requests": []}, "requests", "holds 0 requests"),
        ({"requests": [ITEM] * 4}, "requests", "holds 4 requests: one call takes 1 to 3"),
        ({"requests": ITEM}, "requests", "is required"),
        ({}, "requests", "is required"),
        ({"requests": [ITEM], "model": "m"}, "model", "Unrecognized request argument"),
        ({"requests": [ITEM, "hi"]}, "requests.1", "`requests[1]` must be a JSON object"),
        ([ITEM], None, "must be a JSON object"),
    ],
)
def test_a_wrong_envelope_refuses_the_whole_call(
    body: Any, param: str | None, fragment: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_bulk_body(orjson.dumps(body), 3)
    assert refused.value.http_status == 400
    assert refused.value.param == param
    assert fragment in refused.value.message


def test_not_json_is_malformed() -> None:
    with pytest.raises(MalformedJSON):
        parse_bulk_body(b'{"requests": [', 3)


def test_the_answer_counts_queued_and_refused_entries() -> None:
    refusal = QueueLimitExceeded("full", retry_after_s=1)
    entries = [queued_entry(0, "req_a"), error_entry(1, refusal), queued_entry(2, "req_b")]
    assert bulk_answer(entries) == {
        "object": "list",
        "queued": 2,
        "refused": 1,
        "data": [
            {"index": 0, "id": "req_a", "object": "async.request", "status": "queued"},
            {
                "index": 1,
                "http_status": 429,
                "error": {
                    "message": "full",
                    "type": "rate_limit_error",
                    "param": None,
                    "code": "queue_limit_exceeded",
                },
            },
            {"index": 2, "id": "req_b", "object": "async.request", "status": "queued"},
        ],
    }
