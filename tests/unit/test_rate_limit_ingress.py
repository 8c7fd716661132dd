"""The ingress's part of rate limits (docs/decisions/0014): a rate-limited team's requests
are keyed by team id (one router counts them), and a router's 429 carries Retry-After."""

from __future__ import annotations

import orjson

from ingress.app import result_response
from ingress.kafka_bus import KafkaBus
from schemas.errors import RateLimited
from schemas.records import RequestEnvelope
from schemas.routes import RoutesConfig
from schemas.settings import KafkaSettings
from tests.unit.test_rate_gate import Provider
from tests.unit.test_rate_limits import View, key
from workers.router.execution import Executor
from workers.router.rate_limits import RETRY_AFTER_KEY
from workers.tenancy.model import Limits, TeamRecord

VIEW = View(
    teams=[
        TeamRecord("open", "Open"),
        TeamRecord("capped", "Capped", limits=Limits(rpm=100)),
    ],
    keys=[key("k_rpm", "open", Limits(rpm=60)), key("k_free", "open")],
)


def envelope(team_id: str, key_id: str | None, request_id: str = "req_1") -> RequestEnvelope:
    return {
        "request_id": request_id, "team_id": team_id, "key_id": key_id, "mode": "sync",
        "endpoint": "/v1/chat/completions", "model": "m", "body": b"{}",
        "received_at_ms": 0, "deadline_ms": 0, "ingress_id": "i", "reply_partition": 0,
        "metadata": {},
    }  # fmt: skip


def bus(**kwargs: object) -> KafkaBus:
    return KafkaBus(KafkaSettings(), client_id="t", result_index_max=10, **kwargs)  # type: ignore[arg-type]  # keyword pass-through


def test_rate_limited_requests_are_keyed_by_team_others_by_request_id() -> None:
    limited = bus(tenancy=VIEW)
    assert limited.partition_key(envelope("open", "k_rpm")) == b"open"
    assert limited.partition_key(envelope("capped", None)) == b"capped"
    assert limited.partition_key(envelope("open", "k_free")) == b"req_1"
    assert limited.partition_key(envelope("open", None)) == b"req_1"
    assert bus().partition_key(envelope("open", "k_rpm")) == b"req_1"  # no view: no limits


def test_a_budget_owner_key_still_applies_to_unlimited_requests() -> None:
    owned = bus(tenancy=VIEW, key_of=lambda e: e["team_id"].encode() + b"!")
    assert owned.partition_key(envelope("open", "k_free")) == b"open!"
    assert owned.partition_key(envelope("open", "k_rpm")) == b"open"


def test_a_routers_429_is_answered_with_its_retry_after_header() -> None:
    executor = Executor(routes=RoutesConfig(models={}), provider=Provider(), router_id="r")
    env = envelope("open", "k_rpm")
    result = executor.failed_result(env, RateLimited("Rate limit reached.", retry_after_s=7))
    result["metadata"] = {RETRY_AFTER_KEY: "7"}
    response = result_response(result)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert orjson.loads(response.body)["error"]["code"] == "rate_limit_exceeded"
    result["metadata"] = {}
    assert "retry-after" not in result_response(result).headers
