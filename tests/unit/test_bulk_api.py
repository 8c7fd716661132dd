"""POST /v1/async/bulk/chat/completions through the whole ingress app, in process.

Wired as ingress/server.py wires it (`secured`), over the in-memory bus and tenancy
store: each item must be admitted exactly as the single async endpoint admits its body
(auth principal, policies, wallet caps, the queue cap, budgets, callback_url), and each
entry must say what happened to its item: published with its id, or refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import httpx
import orjson
import pytest

from ingress.app import build_app
from ingress.auth import Authenticator
from ingress.bulk import BULK_PATH
from ingress.bulk_api import bulk_routes
from ingress.bus import MemoryBus
from ingress.idempotency import MemoryIdempotencyStore
from ingress.idempotency_middleware import IdempotencySettings
from ingress.request_tags import END_USER_METADATA_KEY
from ingress.server import secured
from ingress.settings import IngressSettings
from schemas.errors import BudgetExceeded, ServiceUnavailable
from schemas.records import RequestEnvelope, Result
from schemas.routes import default_routes
from workers.budget.enforcement import Admission
from workers.callbacks.events import CALLBACK_URL_KEY
from workers.tenancy.keys import Pepper, issue_key
from workers.tenancy.model import KeyRecord, TeamRecord, WalletLimits
from workers.tenancy.store import ConfigChange, TenancyStore

SECRET: Final = "unit-test-id-secret"
PEPPER: Final = Pepper("unit-test-pepper-0123456789abcdefghij")
ROUTES: Final = default_routes({})
MINI: Final = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
BIG: Final = {**MINI, "model": "gpt-4o"}
FAIL_MARK: Final = "please-fail-this-publish"
CRASH_MARK: Final = "please-crash-this-publish"
HOOK: Final = "https://hooks.example.com/tollway"


def _result(envelope: RequestEnvelope) -> Result:
    return {
        "request_id": envelope["request_id"],
        "team_id": envelope["team_id"],
        "key_id": envelope["key_id"],
        "mode": envelope["mode"],
        "execution_id": "exec-1",
        "status": "succeeded",
        "http_status": 200,
        "body": b'{"id": "chatcmpl-1", "object": "chat.completion", "choices": []}',
        "error_type": None,
        "requested_model": envelope["model"],
        "served_model": envelope["model"],
        "provider": "openai",
        "deployment": "mock",
        "attempts": 1,
        "prompt_tokens": 3,
        "completion_tokens": 1,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "received_at_ms": envelope["received_at_ms"],
        "finished_at_ms": envelope["received_at_ms"] + 5,
        "metadata": envelope["metadata"],
    }


class FlakyBus(MemoryBus):
    """The in-memory bus, except that a body holding `FAIL_MARK` is not written (503) and
    one holding `CRASH_MARK` raises an unexpected error; records the publishes in flight."""

    def __init__(self, answer: bool) -> None:
        async def respond(envelope: RequestEnvelope) -> Result | None:
            return _result(envelope) if answer else None

        super().__init__(respond)
        self.in_flight = 0
        self.most_in_flight = 0

    async def publish(self, topic: str, envelope: RequestEnvelope) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)  # as a real send: every publish of a call is started first
            if FAIL_MARK.encode() in envelope["body"]:
                raise ServiceUnavailable("Kafka is unreachable: not accepted.", retry_after_s=1)
            if CRASH_MARK.encode() in envelope["body"]:
                raise RuntimeError("a bug in the bus")
            await super().publish(topic, envelope)
        finally:
            self.in_flight -= 1


class Budgets:
    """A budget view: gpt-4o's hard budget is spent; the rest run with a warning."""

    ready = True

    def check(
        self, team_id: str, key_id: str | None, model: str, now_ms: int | None = None
    ) -> Admission:
        if model == "gpt-4o":
            raise BudgetExceeded("The budget of gpt-4o is spent.", retry_after_s=60)
        return Admission(model, warnings=("team budget 80% used",))


@dataclass
class Stack:
    client: httpx.AsyncClient
    bus: FlakyBus
    keys: dict[str, str]

    def auth(self, name: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[name]}"}

    async def bulk(
        self, name: str, items: list[Any], headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return await self.client.post(
            BULK_PATH, json={"requests": items}, headers={**self.auth(name), **(headers or {})}
        )


def _tenancy() -> tuple[TenancyStore, dict[str, str]]:
    store = TenancyStore()
    store.apply(ConfigChange.upsert(TeamRecord("acme", "Acme")))
    capped = WalletLimits(max_output_tokens=50, max_queued_requests=2)
    store.apply(ConfigChange.upsert(TeamRecord("globex", "Globex", wallet=capped)))
    keys: dict[str, str] = {}
    models: tuple[str, ...]
    for name, team, models in (
        ("acme", "acme", ()),
        ("acme-mini", "acme", ("gpt-4o-mini",)),
        ("globex", "globex", ()),
    ):
        issued = issue_key(PEPPER)
        record = KeyRecord(
            key_id=issued.key_id,
            team_id=team,
            key_digest=issued.key_digest,
            display_prefix=issued.display_prefix,
            name=name,
            allowed_models=models,
        )
        store.apply(ConfigChange.upsert(record))
        keys[name] = issued.plain_key
    return store, keys


async def _stack(*, answer: bool = True, **settings: Any) -> AsyncIterator[Stack]:
    budgets = settings.pop("budgets", None)
    store, keys = _tenancy()
    bus = FlakyBus(answer)
    config = IngressSettings(id_secret=SECRET, auth="keys", sync_timeout_s=5, **settings)
    authenticator = Authenticator("keys", store, PEPPER.digest)
    app = build_app(
        config,
        ROUTES,
        bus,
        ingress_id="ingress-test",
        authenticator=authenticator,
        budgets=budgets,
        extra_routes=[bulk_routes],
    )
    asgi = secured(
        app,
        authenticator,
        MemoryIdempotencyStore(),
        IdempotencySettings(enabled=True),
        max_body_bytes=config.max_body_bytes,
        max_upload_bytes=1 << 20,
    )
    transport = httpx.ASGITransport(app=asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield Stack(client, bus, keys)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async for built in _stack():
        yield built


def _published(stack: Stack) -> dict[str, RequestEnvelope]:
    return {envelope["request_id"]: envelope for _, envelope in stack.bus.published}


def _codes(response: httpx.Response) -> list[str | None]:
    """Per entry: "queued", or the refusal's error code (type when it has none)."""
    assert response.status_code == 202, response.text
    out: list[str | None] = []
    for index, entry in enumerate(response.json()["data"]):
        assert entry["index"] == index
        if "id" in entry:
            out.append(entry["status"])
        else:
            out.append(entry["error"]["code"] or entry["error"]["type"])
    return out


# --- one entry per item, each admitted as the single endpoint admits it ----------------------


async def test_good_and_bad_items_each_get_their_own_entry_in_order(stack: Stack) -> None:
    items: list[Any] = [
        MINI,
        {**MINI, "model": "no-such-model"},
        {**MINI, "stream": True},
        {**MINI, "temprature": 1},
        {**MINI, "metadata": {"tollway.route": "x"}},
        {**MINI, "callback_url": HOOK},
        {**MINI, "callback_url": "https://user:pw@hooks.example.com/"},
        {"messages": []},
        {**MINI, "user": "end-user-7"},
    ]
    response = await stack.bulk("acme", items)
    assert _codes(response) == [
        "queued",
        "model_not_found",
        "invalid_request_error",
        "invalid_request_error",
        "invalid_request_error",
        "queued",
        "invalid_request_error",
        "invalid_request_error",
        "queued",
    ]
    body = response.json()
    assert (body["object"], body["queued"], body["refused"]) == ("list", 3, 6)
    data = body["data"]
    assert [data[i]["http_status"] for i in (1, 2, 3)] == [404, 400, 400]
    assert data[2]["error"]["param"] == "stream"
    assert data[3]["error"]["param"] == "temprature"
    assert data[6]["error"]["param"] == "callback_url"
    published = _published(stack)
    queued_ids = [data[i]["id"] for i in (0, 5, 8)]
    assert list(published) == queued_ids  # exactly the queued items, nothing else
    hooked = published[data[5]["id"]]
    assert hooked["metadata"][CALLBACK_URL_KEY] == HOOK
    assert b"callback_url" not in hooked["body"]  # moved to metadata, as on the single path
    assert published[data[8]["id"]]["metadata"][END_USER_METADATA_KEY] == "end-user-7"
    for request_id in queued_ids:
        envelope = published[request_id]
        assert (envelope["mode"], envelope["team_id"], envelope["model"]) == (
            "async",
            "acme",
            "gpt-4o-mini",
        )
        assert orjson.loads(envelope["body"])["messages"] == MINI["messages"]


async def test_a_queued_item_is_the_same_record_as_a_single_async_request(stack: Stack) -> None:
    single = await stack.client.post(
        "/v1/async/chat/completions", json=MINI, headers=stack.auth("globex")
    )
    assert single.status_code == 202
    bulk = await stack.bulk("globex", [MINI])
    assert _codes(bulk) == ["queued"]
    (_, one), (_, other) = stack.bus.published
    assert one["request_id"] != other["request_id"]
    different = {"request_id", "received_at_ms", "deadline_ms"}
    assert {k: v for k, v in one.items() if k not in different} == {
        k: v for k, v in other.items() if k not in different
    }
    assert b'"max_completion_tokens":50' in other["body"]  # globex's wallet cap, both ways


async def test_publishes_run_concurrently(stack: Stack) -> None:
    response = await stack.bulk("acme", [MINI] * 50)
    assert _codes(response) == ["queued"] * 50
    assert stack.bus.most_in_flight == 50  # every send started before any finished
    assert len(stack.bus.published) == 50
    assert len(_published(stack)) == 50  # 50 distinct ids


# --- the envelope: refused whole, nothing published -------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"requests": [MINI] * 4}, 400, "requests"),
        ({"requests": []}, 400, "requests"),
        ({"requests": [MINI, 7]}, 400, "requests.1"),
        ({"requests": [MINI], "model": "gpt-4o-mini"}, 400, "model"),
        (MINI, 400, "model"),
        ([MINI], 400, None),
    ],
)
async def test_a_wrong_envelope_or_too_many_items_is_a_400_and_publishes_nothing(
    body: Any, status: int, param: str | None
) -> None:
    async for stack in _stack(bulk_max_items=3):
        response = await stack.client.post(BULK_PATH, json=body, headers=stack.auth("acme"))
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert (error["type"], error["param"]) == ("invalid_request_error", param)
        assert stack.bus.published == []


async def test_the_item_limit_is_named_in_the_refusal() -> None:
    async for stack in _stack(bulk_max_items=3):
        response = await stack.bulk("acme", [MINI] * 4)
        assert response.status_code == 400
        message = response.json()["error"]["message"]
        assert "holds 4 requests" in message
        assert "TOLLWAY_INGRESS_BULK_MAX_ITEMS" in message
        accepted = await stack.bulk("acme", [MINI] * 3)
        assert _codes(accepted) == ["queued"] * 3


async def test_body_limits_the_call_and_each_item() -> None:
    big = {**MINI, "messages": [{"role": "user", "content": "x" * 3_000}]}
    async for stack in _stack(max_body_bytes=2_048, bulk_max_body_bytes=8_192):
        too_big = await stack.bulk("acme", [big] * 3)
        assert too_big.status_code == 413
        assert too_big.json()["error"]["code"] == "request_too_large"
        mixed = await stack.bulk("acme", [MINI, big])
        assert _codes(mixed) == ["queued", "request_too_large"]
        assert mixed.json()["data"][1]["http_status"] == 413
        assert len(stack.bus.published) == 1


async def test_not_json_is_a_400(stack: Stack) -> None:
    response = await stack.client.post(
        BULK_PATH,
        content=b'{"requests": [',
        headers={**stack.auth("acme"), "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


async def test_an_idempotency_key_is_refused_not_ignored(stack: Stack) -> None:
    response = await stack.bulk("acme", [MINI], headers={"idempotency-key": "k-1"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "idempotency-key"
    assert stack.bus.published == []


async def test_an_item_nested_deeper_than_json_is_written_is_refused(stack: Stack) -> None:
    deep: Any = "x"
    for _ in range(300):
        deep = {"a": deep}
    response = await stack.bulk("acme", [{**MINI, "metadata": deep}, MINI])
    assert _codes(response) == ["invalid_request_error", "queued"]


# --- publishing: each item's own outcome ---------------------------------------------------


async def test_a_failed_publish_is_that_items_503_only(stack: Stack) -> None:
    fail = {**MINI, "messages": [{"role": "user", "content": FAIL_MARK}]}
    crash = {**MINI, "messages": [{"role": "user", "content": CRASH_MARK}]}
    response = await stack.bulk("acme", [MINI, fail, MINI, crash])
    assert _codes(response) == ["queued", "service_unavailable", "queued", "service_unavailable"]
    data = response.json()["data"]
    assert data[1]["http_status"] == data[3]["http_status"] == 503
    assert "a bug in the bus" not in response.text  # internals are not echoed
    assert set(_published(stack)) == {data[0]["id"], data[2]["id"]}


async def test_the_queue_cap_counts_items_of_the_same_call_and_frees_failed_ones() -> None:
    fail = {**MINI, "messages": [{"role": "user", "content": FAIL_MARK}]}
    async for stack in _stack(answer=False):  # nothing finishes: the queue only grows
        response = await stack.bulk("globex", [fail, MINI, MINI, MINI])
        assert _codes(response) == [
            "service_unavailable",  # took a slot while it was prepared, gave it back
            "queued",
            "queue_limit_exceeded",
            "queue_limit_exceeded",
        ]
        assert response.json()["data"][2]["http_status"] == 429
        single = await stack.client.post(
            "/v1/async/chat/completions", json=MINI, headers=stack.auth("globex")
        )
        assert single.status_code == 202  # the failed item's slot is free again
        after = await stack.bulk("globex", [MINI])
        assert _codes(after) == ["queue_limit_exceeded"]  # 2 of 2 queued now
        other_team = await stack.bulk("acme", [MINI] * 5)
        assert _codes(other_team) == ["queued"] * 5
        assert len(stack.bus.published) == 2 + 5


# --- tenancy: auth, governance and isolation per item --------------------------------------


async def test_no_key_refuses_the_whole_call(stack: Stack) -> None:
    response = await stack.client.post(BULK_PATH, json={"requests": [MINI]})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert stack.bus.published == []


async def test_model_policies_and_wallet_caps_apply_per_item(stack: Stack) -> None:
    policy = await stack.bulk("acme-mini", [MINI, BIG, MINI])
    assert _codes(policy) == ["queued", "model_not_allowed", "queued"]
    assert policy.json()["data"][1]["http_status"] == 403
    wallet = await stack.bulk("globex", [{**MINI, "max_tokens": 500}, {**MINI, "max_tokens": 5}])
    assert _codes(wallet) == ["wallet_limit_exceeded", "queued"]
    for _, envelope in stack.bus.published:
        assert envelope["key_id"] is not None
    teams = [envelope["team_id"] for _, envelope in stack.bus.published]
    assert teams == ["acme", "acme", "globex"]


async def test_budgets_refuse_per_item_and_warn_once_for_the_call() -> None:
    async for stack in _stack(budgets=Budgets()):
        response = await stack.bulk("acme", [MINI, BIG, MINI])
        assert _codes(response) == ["queued", "budget_exceeded", "queued"]
        assert response.json()["data"][1]["http_status"] == 429
        assert response.headers["x-tollway-budget-warning"] == "team budget 80% used"
        assert len(stack.bus.published) == 2


async def test_headers_tags_and_end_user_apply_to_every_item(stack: Stack) -> None:
    headers = {"x-tollway-tags": "nightly,eval", "x-tollway-end-user": "u-1"}
    response = await stack.bulk("acme", [MINI, MINI], headers=headers)
    assert _codes(response) == ["queued", "queued"]
    for _, envelope in stack.bus.published:
        assert envelope["metadata"]["tags"] == "eval,nightly"
        assert envelope["metadata"][END_USER_METADATA_KEY] == "u-1"


async def test_results_are_fetched_by_id_by_the_callers_team_only(stack: Stack) -> None:
    response = await stack.bulk("acme", [MINI, MINI])
    ids = [entry["id"] for entry in response.json()["data"]]
    for _ in range(50):  # the fake router answers on the loop
        if all(stack.bus.has_result(request_id) for request_id in ids):
            break
        await asyncio.sleep(0.01)
    for request_id in ids:
        own = await stack.client.get(f"/v1/async/requests/{request_id}", headers=stack.auth("acme"))
        assert own.status_code == 200
        assert own.json()["status"] == "succeeded"
        other = await stack.client.get(
            f"/v1/async/requests/{request_id}", headers=stack.auth("globex")
        )
        assert other.status_code == 404
        assert request_id not in other.text
