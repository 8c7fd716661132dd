"""The whole ingress as ingress/server.py wires it, over in-memory fakes (no Kafka, no disk,
no ClickHouse): every API surface (the admin API's writes go to an in-memory config
writer), /openapi.json, the auth and Idempotency-Key middlewares.

Used by the fuzzing, bad-input and OpenAPI tests. The fake bus answers each published
request at once, by endpoint: a chat completion (chunks then the result when the body
asks for a stream), an embeddings list, so every 2xx path of the app is reachable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from starlette.applications import Starlette

from ingress.admin_api import AdminApi
from ingress.admin_auth import AdminKey
from ingress.analytics_api import analytics_routes
from ingress.analytics_runner import QueryRunner, StaticRunner
from ingress.anthropic_api import anthropic_routes
from ingress.app import Ingress, build_app
from ingress.auth import Authenticator, AuthMiddleware, open_authenticator
from ingress.batches_api import batches_routes
from ingress.bulk_api import bulk_routes
from ingress.bus import MemoryBus, StreamItem
from ingress.dashboard_api import DashboardApi
from ingress.files_api import MAX_HEADER_BYTES, files_routes
from ingress.idempotency import MemoryIdempotencyStore
from ingress.idempotency_middleware import ASGIApp, IdempotencySettings, with_idempotency
from ingress.openapi import openapi_routes
from ingress.settings import IngressSettings
from schemas.openai import EMBEDDINGS_ENDPOINT
from schemas.records import RequestEnvelope, Result
from schemas.routes import default_routes
from workers.batches.filestore import MemoryFileStore
from workers.batches.view import MemoryBatchView
from workers.tenancy.admin import MemoryConfigWriter, TenancyAdmin
from workers.tenancy.keys import Pepper, issue_key
from workers.tenancy.model import KeyRecord, TeamRecord
from workers.tenancy.store import ConfigChange, TenancyStore

SECRET: Final = "unit-test-id-secret"
ADMIN_KEY: Final = "unit-test-admin-key-0123456789abcdef"
ROUTES: Final = default_routes({})
PEPPER: Final = Pepper("unit-test-pepper-0123456789abcdefghij")
TEAM: Final = "team-a"
MAX_FILE_BYTES: Final = 64 * 1024
COMPLETION: Final = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
EMBEDDINGS: Final = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
    "model": "text-embedding-3-small",
    "usage": {"prompt_tokens": 2, "total_tokens": 2},
}
CHUNK: Final = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}}],
}


def result_for(envelope: RequestEnvelope, body: dict[str, Any]) -> Result:
    return {
        "request_id": envelope["request_id"],
        "team_id": envelope["team_id"],
        "key_id": envelope["key_id"],
        "mode": envelope["mode"],
        "execution_id": "exec-1",
        "status": "succeeded",
        "http_status": 200,
        "body": orjson.dumps(body),
        "error_type": None,
        "requested_model": envelope["model"],
        "served_model": str(body["model"]),
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


async def respond(envelope: RequestEnvelope) -> Result | list[StreamItem]:
    """What a router would answer, at once."""
    if envelope["endpoint"] == EMBEDDINGS_ENDPOINT:
        return result_for(envelope, EMBEDDINGS)
    result = result_for(envelope, COMPLETION)
    if envelope["mode"] == "sync" and orjson.loads(envelope["body"]).get("stream"):
        chunk: StreamItem = {
            "request_id": envelope["request_id"],
            "execution_id": "exec-1",
            "seq": 0,
            "data": orjson.dumps(CHUNK),
            "cache": None,
        }
        return [chunk, result]
    return result


@dataclass
class IngressStack:
    """The app and its fakes, to assert on what a request did (or did not) leave behind."""

    app: Starlette
    asgi: ASGIApp
    """`app` behind the Idempotency-Key middleware, as ingress/server.py serves it."""
    bus: MemoryBus
    store: MemoryFileStore
    view: MemoryBatchView
    runner: QueryRunner
    keys: MemoryIdempotencyStore = field(default_factory=MemoryIdempotencyStore)
    virtual_key: str | None = None
    """The plain key of team `TEAM` (keys mode); None in open mode."""
    revoked_key: str | None = None
    """A revoked key of the same team (keys mode)."""
    expired_key: str | None = None
    """An expired key of the same team (keys mode)."""


def _tenancy(view: TenancyStore) -> list[str]:
    """Team `TEAM` with an active, a revoked and an expired key (plain keys in that order)."""
    view.apply(ConfigChange.upsert(TeamRecord(team_id=TEAM, name="Team A")))
    plain: list[str] = []
    for name, revoked_at_ms, expires_at_ms in (
        ("active", None, None),
        ("revoked", 1, None),
        ("expired", None, 1),
    ):
        issued = issue_key(PEPPER)
        record = KeyRecord(
            key_id=issued.key_id,
            team_id=TEAM,
            key_digest=issued.key_digest,
            display_prefix=issued.display_prefix,
            name=name,
            revoked_at_ms=revoked_at_ms,
            expires_at_ms=expires_at_ms,
        )
        view.apply(ConfigChange.upsert(record))
        plain.append(issued.plain_key)
    return plain


def build_stack(
    *,
    auth: str = "open",
    admin_key: str | None = ADMIN_KEY,
    runner: QueryRunner | None = None,
    **settings: Any,
) -> IngressStack:
    """Every surface of ingress/server.py over fakes; `settings` override IngressSettings.
    `auth`: "open" (no key read, team `default`) or "keys" (virtual keys, `_tenancy`)."""
    bus = MemoryBus(respond)
    store = MemoryFileStore()
    view = MemoryBatchView()
    runner = runner or StaticRunner()
    admin = AdminKey(admin_key) if admin_key is not None else None
    config = IngressSettings(id_secret=SECRET, auth=auth, **{"sync_timeout_s": 5.0, **settings})
    tenancy = TenancyStore()  # one view per process: authentication and the admin API
    plain_keys: list[str | None] = [None, None, None]
    if auth == "keys":
        plain_keys = list(_tenancy(tenancy))
        authenticator = Authenticator("keys", tenancy, PEPPER.digest)
    else:
        authenticator = open_authenticator(tenancy)
    admin_api = AdminApi(tenancy, TenancyAdmin(tenancy, MemoryConfigWriter(), PEPPER), admin)

    def batch_surface(ingress: Ingress) -> list[Any]:
        return [
            *files_routes(store, max_file_bytes=MAX_FILE_BYTES),
            *batches_routes(store, view, gatekeeper=ingress.gatekeeper),
        ]

    app = build_app(
        config,
        ROUTES,
        bus,
        ingress_id="ingress-test",
        authenticator=authenticator,
        batch_states=lambda team_id: view.list(team_id, 1_000_000, None)[0],
        extra_routes=[
            anthropic_routes,
            bulk_routes,
            batch_surface,
            lambda _: analytics_routes(runner, admin),
            lambda _: admin_api.routes(),
            lambda _: DashboardApi(runner, admin).routes(),
            openapi_routes,
        ],
    )
    keys = MemoryIdempotencyStore()
    # As ingress/server.py: authentication first (the Idempotency-Key middleware scopes
    # keys by the caller's team), then idempotency, then the app (whose own
    # AuthMiddleware finds the principal already there).
    asgi = AuthMiddleware(
        with_idempotency(
            app,
            keys,
            IdempotencySettings(enabled=True),
            max_body_bytes=config.max_body_bytes,
            max_upload_bytes=MAX_FILE_BYTES + MAX_HEADER_BYTES,
        ),
        authenticator,
    )
    return IngressStack(app, asgi, bus, store, view, runner, keys, *plain_keys)
