"""Webhook events: what happened, as the message body every attempt sends. Pure.

    request.succeeded / request.failed   an async request with a `callback_url`
    batch.completed / .failed / .expired / .cancelled   a batch reached a final status
    budget.threshold                     a budget scope crossed 50/80/100 %

Body (Standard Webhooks convention): {"type", "timestamp", "data"}. The message id
(`webhook-id`) is derived from what happened, so the same event found twice (a
router redelivery, a replay of a topic) carries the same id and receivers drop it.
Money in events is a decimal string of USD (`Decimal`), never a float.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from schemas.records import BatchState, BudgetEvent, Result, WebhookDelivery
from workers.batches.state import TERMINAL, to_openai
from workers.callbacks.endpoints import WebhooksConfig, endpoint_key, url_key

CALLBACK_URL_KEY: Final = "tollway.callback_url"
"""Envelope metadata key carrying an async request's callback URL (set by the ingress)."""
RESERVED_PREFIX: Final = "tollway."
"""Metadata keys the ingress must refuse from clients: Tollway's own routing data."""
MAX_CALLBACK_URL_CHARS: Final = 2048
_NANO: Final = Decimal(1_000_000_000)


class InvalidCallbackUrl(ValueError):
    pass


def validate_callback_url(url: object) -> str:
    """The ingress-side check of `callback_url`: an absolute http(s) URL without credentials.

    Addresses are checked by the dispatcher on every attempt (`ssrf.py`), where the
    development allow-list is known.
    """
    if not isinstance(url, str) or not 0 < len(url) <= MAX_CALLBACK_URL_CHARS:
        raise InvalidCallbackUrl(f"callback_url must be a URL of at most {MAX_CALLBACK_URL_CHARS}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise InvalidCallbackUrl("callback_url is not a valid URL") from exc
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        raise InvalidCallbackUrl("callback_url must be an absolute http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise InvalidCallbackUrl("callback_url must not contain credentials")
    return url


def message_id(event_key: str) -> str:
    return "msg_" + hashlib.sha256(event_key.encode()).hexdigest()[:32]


def _body(event_type: str, occurred_ms: int, data: dict[str, Any]) -> bytes:
    timestamp = datetime.fromtimestamp(occurred_ms / 1000, UTC).isoformat().replace("+00:00", "Z")
    return orjson.dumps({"type": event_type, "timestamp": timestamp, "data": data})


def usd(nano_usd: int) -> str:
    return str(Decimal(nano_usd) / _NANO)


@dataclass(frozen=True, slots=True)
class Message:
    """One event as sent: id, owner, type and the exact body."""

    msg_id: str
    team_id: str
    event_type: str
    payload: bytes

    def to(self, key: str, url: str, now_ms: int) -> WebhookDelivery:
        return {
            "webhook_id": self.msg_id,
            "team_id": self.team_id,
            "endpoint_key": key,
            "url": url,
            "event_type": self.event_type,
            "payload": self.payload,
            "attempt": 0,
            "first_attempt_at_ms": now_ms,
            "due_at_ms": now_ms,
            "last_error": None,
        }


def _to_team_endpoints(
    config: WebhooksConfig, message: Message, now_ms: int
) -> list[WebhookDelivery]:
    team = config.team(message.team_id)
    if team is None:
        return []
    return [
        message.to(endpoint_key(message.team_id, e.id), e.url, now_ms)
        for e in team.endpoints
        if e.wants(message.event_type)
    ]


def from_result(result: Result, now_ms: int) -> list[WebhookDelivery]:
    """The callback of an async request that asked for one."""
    url = result["metadata"].get(CALLBACK_URL_KEY)
    if url is None or result["mode"] != "async":
        return []
    event_type = f"request.{result['status']}"
    body = orjson.loads(result["body"]) if result["body"] else None
    data = {
        "id": result["request_id"],
        "object": "async.request",
        "status": result["status"],
        "http_status": result["http_status"],
        "response": body if result["status"] == "succeeded" else None,
        "error": body.get("error")
        if isinstance(body, dict) and result["status"] == "failed"
        else None,
        "metadata": {
            k: v for k, v in result["metadata"].items() if not k.startswith(RESERVED_PREFIX)
        },
    }
    team = result["team_id"]
    message = Message(
        message_id(f"request:{result['request_id']}"),
        team,
        event_type,
        _body(event_type, result["finished_at_ms"], data),
    )
    return [message.to(url_key(team, url), url, now_ms)]


def from_batch(state: BatchState, config: WebhooksConfig, now_ms: int) -> list[WebhookDelivery]:
    if state["status"] not in TERMINAL:
        return []
    event_type = f"batch.{state['status']}"
    shown = to_openai(state)
    message = Message(
        message_id(f"batch:{state['batch_id']}:{state['status']}"),
        state["team_id"],
        event_type,
        _body(event_type, state["updated_at_ms"], shown),
    )
    return _to_team_endpoints(config, message, now_ms)


def from_budget(event: BudgetEvent, config: WebhooksConfig, now_ms: int) -> list[WebhookDelivery]:
    """Team scopes go to that team; other scopes (key, tag, model, global) to `default`."""
    team_id = event["scope_id"] if event["scope_type"] == "team" else "default"
    data = {
        "scope_type": event["scope_type"],
        "scope_id": event["scope_id"],
        "window": event["window"],
        "threshold_pct": event["threshold_pct"],
        "spent_usd": usd(event["spent_nano_usd"]),
        "limit_usd": usd(event["limit_nano_usd"]),
    }
    event_type = "budget.threshold"
    message = Message(
        message_id(f"budget:{event['event_id']}"),
        team_id,
        event_type,
        _body(event_type, event["occurred_at_ms"], data),
    )
    return _to_team_endpoints(config, message, now_ms)
