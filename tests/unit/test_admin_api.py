"""/admin/v1 over ASGI with the in-memory store and writer: auth, CRUD, audit, errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any, Final

import httpx
import pytest
import pytest_asyncio

from ingress.admin_api import AdminApi
from ingress.admin_auth import AdminKey
from ingress.app import build_app
from ingress.bus import MemoryBus
from ingress.settings import IngressSettings
from schemas.openai import ErrorBody
from schemas.records import BudgetState
from schemas.routes import default_routes
from workers.budget.config import parse_budgets
from workers.tenancy.admin import MemoryConfigWriter, TenancyAdmin
from workers.tenancy.keys import Pepper
from workers.tenancy.store import TenancyStore

KEY: Final = "unit-test-admin-key-0123456789abcdef"
AUTH: Final = {"authorization": f"Bearer {KEY}"}
PEPPER: Final = Pepper("unit-test-pepper-0123456789abcdef-xyz")
NOW_MS: Final = 1_800_000_000_000
INJECTIONS: Final = [
    "x' OR '1'='1",
    "acme;DROP TABLE teams",
    "..%2F..%2Fetc%2Fpasswd",
    "%00",
    "acme%0Aadmin",
    "%E2%80%AEacme",
    "a" * 65,
    "key_ZZZZZZZZZZZZZZZZ",
]


class Env:
    def __init__(self, key: str | None = KEY) -> None:
        self.store = TenancyStore()
        self.writer = MemoryConfigWriter()
        self.now_ms = NOW_MS
        self.admin = TenancyAdmin(self.store, self.writer, PEPPER, clock_ms=lambda: self.now_ms)
        budgets = parse_budgets('- {scope: "team:acme", window: 24h, limit_usd: "5.00"}')
        state: BudgetState = {
            "scope_type": "team", "scope_id": "acme", "window": "24h",
            "spent_nano_usd": 1_250_000_000, "limit_nano_usd": 5_000_000_000,
            "remaining_nano_usd": 3_750_000_000, "status": "ok", "enforcement": "hard",
            "frees_at_ms": None, "watermark_ms": 0, "updated_at_ms": 42,
        }  # fmt: skip
        self.api = AdminApi(
            self.store,
            self.admin,
            AdminKey(key) if key is not None else None,
            budgets=budgets,
            budget_states=lambda: {"team:acme:24h": state},
            clock_ms=lambda: self.now_ms,
        )
        app = build_app(
            IngressSettings(id_secret="unit-test", auth="open"),
            default_routes({}),
            MemoryBus(_never),
            extra_routes=[lambda _: self.api.routes()],
        )
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")

    async def call(
        self, method: str, path: str, *, auth: bool = True, **kwargs: Any
    ) -> httpx.Response:
        headers = {**(AUTH if auth else {}), **kwargs.pop("headers", {})}
        return await self.client.request(method, f"/admin/v1{path}", headers=headers, **kwargs)

    async def ok(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = await self.call(method, path, **kwargs)
        assert response.status_code == status, response.text
        assert response.headers["cache-control"] == "no-store"
        return response.json()

    async def team(self, team_id: str = "acme", **body: Any) -> Any:
        return await self.ok("POST", "/teams", 201, json={"id": team_id, **body})

    async def key(self, team_id: str = "acme", **body: Any) -> Any:
        return await self.ok("POST", "/keys", 201, json={"team_id": team_id, **body})


async def _never(_: object) -> None:
    return None


@pytest_asyncio.fixture
async def env() -> AsyncIterator[Env]:
    made = Env()
    yield made
    await made.client.aclose()


def error(response: httpx.Response, status: int, code: str | None) -> ErrorBody:
    assert response.status_code == status, response.text
    body = ErrorBody.model_validate_json(response.content)
    assert body.error.code == code
    assert KEY not in response.text
    return body


# --- the credential ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong-key-wrong-key-wrong-key"},
        {"authorization": f"Basic {KEY}"},
        {"authorization": "Bearer x' OR '1'='1"},
        {"authorization": f"Bearer {KEY}x"},
    ],
)
async def test_routes_need_the_admin_key(env: Env, headers: dict[str, str]) -> None:
    for method, path in (("GET", "/teams"), ("POST", "/keys"), ("DELETE", "/teams/acme")):
        response = await env.call(method, path, auth=False, headers=headers, json={})
        error(response, 401, "invalid_api_key")
    assert env.writer.changes == []


async def test_a_virtual_key_never_passes(env: Env) -> None:
    await env.team()
    created = await env.key()
    response = await env.call(
        "GET", "/teams", auth=False, headers={"authorization": f"Bearer {created['key']}"}
    )
    error(response, 401, "invalid_api_key")


async def test_without_an_admin_key_everything_is_403() -> None:
    off = Env(key=None)
    try:
        for method, path in (("GET", "/teams"), ("POST", "/teams"), ("GET", "/budgets")):
            error(await off.call(method, path, json={"id": "x"}), 403, "permission_denied")
    finally:
        await off.client.aclose()


# --- teams ----------------------------------------------------------------------------------


async def test_team_crud(env: Env) -> None:
    created = await env.team(
        name="Acme", allowed_models=["gpt-4o-mini"], limits={"rpm": 60}, metadata={"o": "p"}
    )
    assert created["id"] == "acme"
    assert created["limits"]["rpm"] == 60
    assert created["created_at_ms"] == NOW_MS
    error(await env.call("POST", "/teams", json={"id": "acme"}), 409, "conflict")
    got = await env.ok("GET", "/teams/acme")
    assert got["name"] == "Acme"
    assert got["key_count"] == 0
    env.now_ms += 1
    patched = await env.ok("PATCH", "/teams/acme", json={"wallet": {"max_output_tokens": 100}})
    assert patched["wallet"]["max_output_tokens"] == 100
    assert patched["limits"]["rpm"] == 60
    assert patched["updated_at_ms"] == NOW_MS + 1
    listed = await env.ok("GET", "/teams")
    assert [t["id"] for t in listed["data"]] == ["acme"]
    assert await env.ok("DELETE", "/teams/acme") == {
        "object": "team",
        "id": "acme",
        "deleted": True,
    }
    error(await env.call("GET", "/teams/acme"), 404, "not_found")
    assert [e.action for e in env.writer.events] == ["create", "update", "delete"]


async def test_a_patch_that_changes_nothing_writes_nothing(env: Env) -> None:
    await env.team(name="Acme")
    await env.ok("PATCH", "/teams/acme", json={"name": "Acme"})
    assert len(env.writer.changes) == len(env.writer.events) == 1


async def test_a_team_with_keys_is_not_deleted(env: Env) -> None:
    await env.team()
    created = await env.key()
    error(await env.call("DELETE", "/teams/acme"), 409, "conflict")
    await env.ok("DELETE", f"/keys/{created['id']}")
    await env.ok("DELETE", "/teams/acme")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"id": "bad id"}, "id"),
        ({"id": "acme", "limits": {"rpm": -1}}, "limits.rpm"),
        ({"id": "acme", "allowed_models": ["ok", "no spaces"]}, "allowed_models.1"),
        ({"id": "acme", "surprise": True}, "surprise"),
        ({"id": "acme", "metadata": {"bad key": "v"}}, "metadata.?.[key]"),
        (["not", "an", "object"], None),  # the whole body: no param
    ],
)
async def test_invalid_bodies_are_400_naming_the_field(
    env: Env, body: object, param: str | None
) -> None:
    found = error(await env.call("POST", "/teams", json=body), 400, None)
    assert found.error.param == param
    assert "bad key" not in found.error.message
    assert "no spaces" not in found.error.message


async def test_malformed_json_and_oversized_bodies(env: Env) -> None:
    error(await env.call("POST", "/teams", content=b"{nope"), 400, "invalid_json")
    big = b'{"id": "acme", "name": "' + b"x" * 300_000 + b'"}'
    error(await env.call("POST", "/teams", content=big), 413, "request_too_large")


@pytest.mark.parametrize("raw", INJECTIONS)
async def test_hostile_path_ids_are_404_and_never_echoed(env: Env, raw: str) -> None:
    for method, path in (
        ("GET", f"/teams/{raw}"),
        ("PATCH", f"/teams/{raw}"),
        ("DELETE", f"/keys/{raw}"),
        ("POST", f"/keys/{raw}/revoke"),
        ("GET", f"/policies/{raw}"),
    ):
        response = await env.call(method, path, json={})
        assert response.status_code == 404, (method, path, response.text)
        assert raw not in response.text
        for fragment in ("OR", "DROP", "passwd"):
            assert fragment not in response.text
    assert env.writer.changes == []


# --- keys -----------------------------------------------------------------------------------


async def test_key_create_shows_the_key_once_and_stores_only_its_digest(env: Env) -> None:
    await env.team()
    created = await env.key(name="bot", tags=["support"], limits={"rpm": 60})
    plain = created["key"]
    assert plain.startswith("tw-")
    assert len(plain) == 46
    assert created["display_prefix"] == plain[:8]
    assert created["status"] == "active"
    record = env.store.key(created["id"])
    assert record is not None
    assert record.key_digest == PEPPER.digest(plain)
    got = await env.call("GET", f"/keys/{created['id']}")
    listed = await env.call("GET", "/keys")
    for response in (got, listed):
        assert plain not in response.text
        assert record.key_digest not in response.text
        assert '"key":' not in response.text  # the field only the create answer has
    for event in env.writer.events:
        assert plain not in repr(event)
        assert record.key_digest not in repr(event)


async def test_key_for_a_missing_team_or_with_a_past_expiry_is_400(env: Env) -> None:
    found = error(await env.call("POST", "/keys", json={"team_id": "ghost"}), 400, None)
    assert found.error.param == "team_id"
    await env.team()
    body = {"team_id": "acme", "expires_at_ms": NOW_MS - 1}
    assert error(await env.call("POST", "/keys", json=body), 400, None).error.param == (
        "expires_at_ms"
    )


async def test_key_update_revoke_delete(env: Env) -> None:
    await env.team()
    key_id = (await env.key())["id"]
    patched = await env.ok(
        "PATCH",
        f"/keys/{key_id}",
        json={"limits": {"tpm": 1000}, "allowed_models": ["m"], "expires_at_ms": NOW_MS + 60_000},
    )
    assert patched["limits"] == {"rpm": None, "tpm": 1000, "max_concurrency": None}
    assert patched["expires_at_ms"] == NOW_MS + 60_000
    cleared = await env.ok("PATCH", f"/keys/{key_id}", json={"expires_at_ms": None})
    assert cleared["expires_at_ms"] is None
    assert cleared["allowed_models"] == ["m"]
    error(
        await env.call("PATCH", f"/keys/{key_id}", json={"team_id": "other"}), 400, None
    )  # a key never moves
    revoked = await env.ok("POST", f"/keys/{key_id}/revoke")
    assert revoked["status"] == "revoked"
    assert revoked["revoked_at_ms"] == NOW_MS
    await env.ok("POST", f"/keys/{key_id}/revoke")  # idempotent: no second write
    await env.ok("DELETE", f"/keys/{key_id}")
    error(await env.call("GET", f"/keys/{key_id}"), 404, "not_found")
    actions = [e.action for e in env.writer.events]
    assert actions == ["create", "create", "update", "update", "revoke", "delete"]
    assert len(env.writer.changes) == len(env.writer.events)


async def test_key_listing_filters_and_pages(env: Env) -> None:
    await env.team()
    await env.team("beta")
    ids = sorted([(await env.key())["id"] for _ in range(3)])
    await env.key("beta")
    await env.ok("POST", f"/keys/{ids[0]}/revoke")
    page = await env.ok("GET", "/keys", params={"team_id": "acme", "limit": "2"})
    assert [k["id"] for k in page["data"]] == ids[:2]
    assert page["has_more"]
    rest = await env.ok("GET", "/keys", params={"team_id": "acme", "after": ids[1]})
    assert [k["id"] for k in rest["data"]] == ids[2:]
    assert not rest["has_more"]
    active = await env.ok("GET", "/keys", params={"team_id": "acme", "status": "active"})
    assert [k["id"] for k in active["data"]] == ids[1:]
    assert len((await env.ok("GET", "/keys"))["data"]) == 4
    for params in ({"team_id": "x y"}, {"status": "x"}, {"after": "1"}, {"limit": "0"}):
        error(await env.call("GET", "/keys", params=params), 400, None)


async def test_an_expired_key_lists_as_expired(env: Env) -> None:
    await env.team()
    key_id = (await env.key(expires_at_ms=NOW_MS + 10))["id"]
    env.now_ms += 10
    assert (await env.ok("GET", f"/keys/{key_id}"))["status"] == "expired"


async def test_a_failed_write_changes_nothing_and_answers_503(env: Env) -> None:
    await env.team()
    env.writer.available = False
    error(await env.call("POST", "/keys", json={"team_id": "acme"}), 503, "service_unavailable")
    error(await env.call("DELETE", "/teams/acme"), 503, "service_unavailable")
    assert env.store.keys() == []
    assert env.store.team("acme") is not None


# --- audit ----------------------------------------------------------------------------------


async def test_every_change_is_audited_with_the_actor(env: Env) -> None:
    await env.ok("POST", "/teams", 201, json={"id": "acme"}, headers={"x-tollway-actor": "alice"})
    event = env.writer.events[0]
    assert (event.actor, event.source, event.action, event.entity, event.entity_id) == (
        "admin:alice", "api", "create", "team", "acme",
    )  # fmt: skip
    assert event.before is None
    assert event.after is not None
    assert event.after["name"] == "acme"
    bad = await env.call("POST", "/teams", json={"id": "b"}, headers={"x-tollway-actor": "a b"})
    error(bad, 400, None)


# --- tag policies ----------------------------------------------------------------------------


async def test_policy_crud(env: Env) -> None:
    body = {"tag": "support-bot", "allowed_models": ["gpt-4o-mini"]}
    created = await env.ok("POST", "/policies", 201, json=body)
    assert created["allowed_models"] == ["gpt-4o-mini"]
    error(await env.call("POST", "/policies", json=body), 409, "conflict")
    replaced = await env.ok("PUT", "/policies/support-bot", json={"allowed_models": ["a", "b"]})
    assert replaced["allowed_models"] == ["a", "b"]
    await env.ok("PUT", "/policies/new-tag", json={"allowed_models": ["a"]})
    mismatch = await env.call("PUT", "/policies/x", json={"tag": "y", "allowed_models": ["a"]})
    error(mismatch, 400, None)
    error(await env.call("PUT", "/policies/x", json={"allowed_models": []}), 400, None)
    listed = await env.ok("GET", "/policies")
    assert [p["tag"] for p in listed["data"]] == ["new-tag", "support-bot"]
    await env.ok("DELETE", "/policies/new-tag")
    error(await env.call("GET", "/policies/new-tag"), 404, "not_found")
    assert [e.action for e in env.writer.events] == ["create", "update", "create", "delete"]


# --- budgets --------------------------------------------------------------------------------


async def test_budgets_list_the_rules_with_their_spend(env: Env) -> None:
    (budget,) = (await env.ok("GET", "/budgets"))["data"]
    assert budget["scope"] == "team:acme"
    assert budget["window"] == "24h"
    assert Decimal(budget["limit_usd"]) == Decimal("5")
    assert (budget["spent_usd"], budget["remaining_usd"]) == ("1.25", "3.75")


def test_the_route_table_is_under_admin_v1() -> None:
    routes: list[Callable[..., Any]] = AdminApi(TenancyStore(), None, None).routes()  # type: ignore[assignment]
    assert all(getattr(r, "path", "").startswith("/admin/v1/") for r in routes)
    assert len(routes) == 17
