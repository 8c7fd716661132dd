"""workers/callbacks/delivery.py and events.py with httpx.MockTransport and a fake resolver."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest
from standardwebhooks import Webhook

from schemas.records import BudgetEvent, Result, WebhookDelivery
from workers.batches.state import new_batch, transition
from workers.callbacks import events
from workers.callbacks.delivery import Sender
from workers.callbacks.endpoints import WebhooksConfig
from workers.callbacks.signing import new_secret, secret_key

SECRET = new_secret()


def delivery(url: str = "https://hooks.example.com/in") -> WebhookDelivery:
    return {
        "webhook_id": "msg_1",
        "team_id": "default",
        "endpoint_key": "default/ops",
        "url": url,
        "event_type": "batch.completed",
        "payload": b'{"type":"batch.completed"}',
        "attempt": 0,
        "first_attempt_at_ms": 0,
        "due_at_ms": 0,
        "last_error": None,
    }


def sender(handler: httpx.MockTransport, answers: dict[str, list[str]]) -> Sender:
    async def resolve(host: str, _port: int) -> list[str]:
        return answers[host]

    return Sender(httpx.AsyncClient(transport=handler), resolve=resolve)


async def test_connects_to_the_checked_address_and_signs() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    s = sender(httpx.MockTransport(handle), {"hooks.example.com": ["93.184.216.34"]})
    now = int(time.time())
    outcome = await s.send(delivery(), [secret_key(SECRET)], now)
    assert outcome.kind == "delivered"
    (request,) = seen
    assert request.url.host == "93.184.216.34"
    assert request.headers["host"] == "hooks.example.com"
    assert request.extensions["sni_hostname"] == "hooks.example.com"
    Webhook(SECRET).verify(request.content, dict(request.headers))


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, "delivered"),
        (302, "retry"),
        (307, "retry"),
        (410, "gone"),
        (429, "retry"),
        (500, "retry"),
        (404, "retry"),
    ],
)
async def test_answers_are_classified_and_redirects_not_followed(status: int, kind: str) -> None:
    calls = 0

    def handle(_: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(status, headers={"location": "http://169.254.169.254/"})

    s = sender(httpx.MockTransport(handle), {"hooks.example.com": ["93.184.216.34"]})
    assert (await s.send(delivery(), [secret_key(SECRET)], 1)).kind == kind
    assert calls == 1


@pytest.mark.parametrize(
    ("url", "answers"),
    [
        ("https://internal.example.com/in", {"internal.example.com": ["10.0.0.5"]}),
        ("https://rebind.example.com/in", {"rebind.example.com": ["93.184.216.34", "127.0.0.1"]}),
        ("https://169.254.169.254/latest", {}),
        ("https://2130706433/in", {}),
        ("http://hooks.example.com/in", {"hooks.example.com": ["93.184.216.34"]}),
    ],
)
async def test_refused_targets_are_never_called(url: str, answers: dict[str, list[str]]) -> None:
    def handle(_: httpx.Request) -> httpx.Response:
        raise AssertionError("must not be called")

    outcome = await sender(httpx.MockTransport(handle), answers).send(
        delivery(url), [secret_key(SECRET)], 1
    )
    assert outcome.kind == "refused"


async def test_connection_errors_are_retried() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    s = sender(httpx.MockTransport(handle), {"hooks.example.com": ["93.184.216.34"]})
    assert (await s.send(delivery(), [secret_key(SECRET)], 1)).kind == "retry"


# --- events --------------------------------------------------------------------------------

CONFIG = WebhooksConfig.model_validate(
    {
        "teams": {
            "default": {
                "secrets": [SECRET],
                "endpoints": [
                    {"id": "ops", "url": "https://ops.example.com", "events": ["batch.*"]},
                    {"id": "money", "url": "https://m.example.com", "events": ["budget.*"]},
                ],
            }
        }
    }
)


def result(metadata: dict[str, str], mode: str = "async") -> Result:
    return {
        "request_id": "req_1",
        "team_id": "default",
        "key_id": None,
        "mode": mode,  # type: ignore[typeddict-item]
        "execution_id": "e",
        "status": "succeeded",
        "http_status": 200,
        "body": b'{"object":"chat.completion"}',
        "error_type": None,
        "requested_model": "m",
        "served_model": "m",
        "provider": "p",
        "deployment": "d",
        "attempts": 1,
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "received_at_ms": 1_700_000_000_000,
        "finished_at_ms": 1_700_000_000_500,
        "metadata": metadata,
    }


def test_only_async_results_with_a_callback_url_make_a_webhook() -> None:
    url = "https://client.example.com/cb"
    assert events.from_result(result({}), 0) == []
    assert events.from_result(result({events.CALLBACK_URL_KEY: url}, mode="sync"), 0) == []
    (made,) = events.from_result(result({events.CALLBACK_URL_KEY: url, "user": "u1"}), 0)
    assert made["url"] == url
    assert made["event_type"] == "request.succeeded"
    body = orjson.loads(made["payload"])
    assert body["data"]["response"] == {"object": "chat.completion"}
    assert body["data"]["metadata"] == {"user": "u1"}  # Tollway's own keys stay inside
    again = events.from_result(result({events.CALLBACK_URL_KEY: url, "user": "u1"}), 99)
    assert again[0]["webhook_id"] == made["webhook_id"]  # the same event, the same id


def test_batch_events_only_for_final_statuses_and_subscribed_endpoints() -> None:
    state = new_batch(
        batch_id="batch_" + "0" * 32,
        team_id="default",
        input_file_id="file-x",
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={},
        now_ms=1,
    )
    assert events.from_batch(state, CONFIG, 5) == []
    done = transition(
        transition(transition(state, "in_progress", 2), "finalizing", 3), "completed", 4
    )
    (made,) = events.from_batch(done, CONFIG, 5)
    assert made["endpoint_key"] == "default/ops"
    assert orjson.loads(made["payload"])["data"]["status"] == "completed"
    assert events.from_batch(done, WebhooksConfig(), 5) == []


def test_budget_events_carry_decimal_usd_strings() -> None:
    event: BudgetEvent = {
        "event_id": "team:default:month:80",
        "scope_type": "team",
        "scope_id": "default",
        "window": "month",
        "threshold_pct": 80,
        "spent_nano_usd": 80_123_456_789,
        "limit_nano_usd": 100_000_000_000,
        "occurred_at_ms": 1_700_000_000_000,
    }
    (made,) = events.from_budget(event, CONFIG, 0)
    data = orjson.loads(made["payload"])["data"]
    assert data["spent_usd"] == "80.123456789"
    assert data["limit_usd"] == "100"
    assert made["endpoint_key"] == "default/money"


@pytest.mark.parametrize(
    "url",
    [None, "", "ftp://x.example.com", "https://", "https://u:p@x.example.com", "x" * 3000, 5],
)
def test_ingress_callback_url_validation(url: object) -> None:
    with pytest.raises(events.InvalidCallbackUrl):
        events.validate_callback_url(url)
    assert events.validate_callback_url("https://x.example.com/cb") == "https://x.example.com/cb"
