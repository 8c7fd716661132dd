"""The admin API: teams, virtual keys and tag policies, behind the admin credential.

    GET    /admin/v1/teams                      list
    POST   /admin/v1/teams                      create {id, name, allowed_models, limits,
                                                wallet, metadata}
    GET    /admin/v1/teams/{team_id}
    PATCH  /admin/v1/teams/{team_id}            change the fields given
    DELETE /admin/v1/teams/{team_id}            409 while the team has keys
    GET    /admin/v1/keys?team_id=&status=&limit=&after=
    POST   /admin/v1/keys                       create {team_id, name, tags, allowed_models,
                                                limits, expires_at_ms, metadata}: 201 with the
                                                plain key in `key` (shown this once only)
    GET    /admin/v1/keys/{key_id}
    PATCH  /admin/v1/keys/{key_id}              name, tags, allowed_models, limits, expires_at_ms
    POST   /admin/v1/keys/{key_id}/revoke       idempotent
    DELETE /admin/v1/keys/{key_id}
    GET    /admin/v1/policies                   tag policies
    POST   /admin/v1/policies                   create {tag, allowed_models} (409 if it exists)
    GET    /admin/v1/policies/{tag}
    PUT    /admin/v1/policies/{tag}             create or replace {allowed_models}
    DELETE /admin/v1/policies/{tag}
    GET    /admin/v1/budgets                    the budgets file's rules with their latest spend

Every route needs `Authorization: Bearer <TOLLWAY_ADMIN_KEY>` (ingress/admin_auth.py),
checked before anything else; a virtual key never passes. Unset: every route answers
403. Optional `X-Tollway-Actor: <name>` labels the audit events (`admin:<name>`).

Every change is a record on a compacted `tollway.config.*` topic plus an event on
`tollway.audit`, committed together; the answer comes after Kafka acknowledged both
(workers/tenancy/admin.py, config_kafka.py). Ids in paths must match their strict
pattern (workers/tenancy/names.py) or the answer is 404 without echoing them; query
parameters likewise answer 400. Errors are OpenAI error bodies.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ingress.admin_auth import AdminKey, check_admin
from ingress.admin_objects import (
    budget_objects,
    created_key_object,
    deleted_object,
    key_object,
    key_status,
    list_object,
    policy_object,
    team_object,
)
from ingress.app import read_body
from ingress.settings import IngressSettings
from schemas.errors import InvalidRequest, MalformedJSON, NotFound, PermissionDenied
from schemas.records import BudgetState
from schemas.settings import KafkaSettings
from workers.budget.config import BudgetsConfig
from workers.tenancy import names
from workers.tenancy.admin import Actor, TenancyAdmin, wall_ms
from workers.tenancy.service import TenancyService
from workers.tenancy.settings import TenancySettings
from workers.tenancy.specs import KeyPatch, KeySpec, PolicySpec, TeamPatch, TeamSpec, parse
from workers.tenancy.store import TenancyStore

log = logging.getLogger("tollway.ingress.admin")

WHAT: Final = "The admin API"
PREFIX: Final = "/admin/v1"
ACTOR_HEADER: Final = "x-tollway-actor"
MAX_BODY_BYTES: Final = 256 * 1024
MAX_PAGE: Final = 1000
_NO_STORE: Final = {"cache-control": "no-store"}

_T = TypeVar("_T")
Sync = Callable[[], Awaitable[None]]
BudgetStates = Callable[[], Mapping[str, BudgetState]]


async def _no_sync() -> None:
    return None


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status, _NO_STORE, media_type="application/json")


def _path_id(request: Request, name: str, valid: Callable[[str], bool], what: str) -> str:
    """A path id that matches its pattern; 404 otherwise, without echoing it."""
    value: str = request.path_params[name]
    if not valid(value):
        raise NotFound(f"No {what} with this id.", param=name)
    return value


class AdminApi:
    """The handlers, closed over the store, the admin side, the admin key and the clock."""

    def __init__(
        self,
        store: TenancyStore,
        admin: TenancyAdmin | None,
        admin_key: AdminKey | None,
        *,
        sync: Sync = _no_sync,
        budgets: BudgetsConfig | None = None,
        budget_states: BudgetStates | None = None,
        clock_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.store = store
        self.admin = admin
        self.admin_key = admin_key
        self.sync = sync
        self.budgets = budgets or BudgetsConfig()
        self.budget_states = budget_states
        self.clock_ms = clock_ms

    # --- shared steps -------------------------------------------------------------------

    def _authorize(self, request: Request) -> Actor:
        check_admin(request.headers.get("authorization"), self.admin_key, what=WHAT)
        label = request.headers.get(ACTOR_HEADER)
        if label is None:
            return Actor("admin")
        if not names.is_actor(label):
            raise InvalidRequest(
                f"{ACTOR_HEADER} must be 1-64 of letters, digits and ._@+-", param=ACTOR_HEADER
            )
        return Actor(f"admin:{label}")

    def _writer(self) -> TenancyAdmin:
        if self.admin is None:
            raise PermissionDenied(f"{WHAT} cannot change config in this process.")
        return self.admin

    async def _body(self, request: Request) -> object:
        raw = await read_body(request, MAX_BODY_BYTES)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise MalformedJSON("The body is not valid JSON.") from None

    async def _found(self, lookup: Callable[[], _T | None], what: str, param: str) -> _T:
        """`lookup()`, once more after catching up with the topics (created elsewhere a
        moment ago), else 404."""
        found = lookup()
        if found is None:
            await self.sync()
            found = lookup()
        if found is None:
            raise NotFound(f"No {what} with this id.", param=param)
        return found

    # --- teams --------------------------------------------------------------------------

    async def list_teams(self, request: Request) -> Response:
        self._authorize(request)
        data = [team_object(t, self.store.key_count(t.team_id)) for t in self.store.teams()]
        return _json(list_object(data))

    async def create_team(self, request: Request) -> Response:
        actor = self._authorize(request)
        spec = parse(TeamSpec, await self._body(request))
        team = await self._writer().create_team(spec, actor)
        return _json(team_object(team, 0), 201)

    async def get_team(self, request: Request) -> Response:
        self._authorize(request)
        team_id = _path_id(request, "team_id", names.is_team_id, "team")
        team = await self._found(lambda: self.store.team(team_id), "team", "team_id")
        return _json(team_object(team, self.store.key_count(team_id)))

    async def update_team(self, request: Request) -> Response:
        actor = self._authorize(request)
        team_id = _path_id(request, "team_id", names.is_team_id, "team")
        patch = parse(TeamPatch, await self._body(request))
        team = await self._writer().update_team(team_id, patch, actor)
        return _json(team_object(team, self.store.key_count(team_id)))

    async def delete_team(self, request: Request) -> Response:
        actor = self._authorize(request)
        team_id = _path_id(request, "team_id", names.is_team_id, "team")
        await self._writer().delete_team(team_id, actor)
        return _json(deleted_object("team", team_id))

    # --- keys ---------------------------------------------------------------------------

    async def list_keys(self, request: Request) -> Response:
        self._authorize(request)
        query = request.query_params
        team_id = query.get("team_id")
        if team_id is not None and not names.is_team_id(team_id):
            raise InvalidRequest("team_id is not a valid team id.", param="team_id")
        status = query.get("status", "all")
        if status not in ("all", "active", "revoked", "expired"):
            raise InvalidRequest("status is one of all, active, revoked, expired.", param="status")
        after = query.get("after")
        if after is not None and not names.is_key_id(after):
            raise InvalidRequest("after is not a valid key id.", param="after")
        limit_text = query.get("limit", "100")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_PAGE:
            raise InvalidRequest(f"limit is a whole number from 1 to {MAX_PAGE}.", param="limit")
        limit = int(limit_text)
        now_ms = self.clock_ms()
        keys = [
            k
            for k in self.store.keys(team_id)
            if (after is None or k.key_id > after)
            and (status == "all" or key_status(k, now_ms) == status)
        ]
        page = [key_object(k, now_ms) for k in keys[:limit]]
        return _json(list_object(page, has_more=len(keys) > limit))

    async def create_key(self, request: Request) -> Response:
        actor = self._authorize(request)
        spec = parse(KeySpec, await self._body(request))
        record, plain = await self._writer().create_key(spec, actor)
        log.info("key %s created for team %s by %s", record.key_id, record.team_id, actor.name)
        return _json(created_key_object(record, plain, self.clock_ms()), 201)

    async def get_key(self, request: Request) -> Response:
        self._authorize(request)
        key_id = _path_id(request, "key_id", names.is_key_id, "key")
        key = await self._found(lambda: self.store.key(key_id), "key", "key_id")
        return _json(key_object(key, self.clock_ms()))

    async def update_key(self, request: Request) -> Response:
        actor = self._authorize(request)
        key_id = _path_id(request, "key_id", names.is_key_id, "key")
        patch = parse(KeyPatch, await self._body(request))
        key = await self._writer().update_key(key_id, patch, actor)
        return _json(key_object(key, self.clock_ms()))

    async def revoke_key(self, request: Request) -> Response:
        actor = self._authorize(request)
        key_id = _path_id(request, "key_id", names.is_key_id, "key")
        key = await self._writer().revoke_key(key_id, actor)
        log.info("key %s revoked by %s", key_id, actor.name)
        return _json(key_object(key, self.clock_ms()))

    async def delete_key(self, request: Request) -> Response:
        actor = self._authorize(request)
        key_id = _path_id(request, "key_id", names.is_key_id, "key")
        await self._writer().delete_key(key_id, actor)
        return _json(deleted_object("key", key_id))

    # --- tag policies --------------------------------------------------------------------

    async def list_policies(self, request: Request) -> Response:
        self._authorize(request)
        return _json(list_object([policy_object(p) for p in self.store.tag_policies()]))

    async def create_policy(self, request: Request) -> Response:
        actor = self._authorize(request)
        spec = parse(PolicySpec, await self._body(request))
        policy = await self._writer().put_policy(spec, actor, create=True)
        return _json(policy_object(policy), 201)

    async def get_policy(self, request: Request) -> Response:
        self._authorize(request)
        tag = _path_id(request, "tag", names.is_tag, "tag policy")
        policy = await self._found(lambda: self.store.tag_policy(tag), "tag policy", "tag")
        return _json(policy_object(policy))

    async def put_policy(self, request: Request) -> Response:
        actor = self._authorize(request)
        tag = _path_id(request, "tag", names.is_tag, "tag policy")
        body = await self._body(request)
        if isinstance(body, dict) and body.get("tag", tag) != tag:
            raise InvalidRequest("The body's tag differs from the path's.", param="tag")
        spec = parse(PolicySpec, {**body, "tag": tag} if isinstance(body, dict) else body)
        policy = await self._writer().put_policy(spec, actor, create=False)
        return _json(policy_object(policy))

    async def delete_policy(self, request: Request) -> Response:
        actor = self._authorize(request)
        tag = _path_id(request, "tag", names.is_tag, "tag policy")
        await self._writer().delete_policy(tag, actor)
        return _json(deleted_object("tag_policy", tag))

    # --- budgets -------------------------------------------------------------------------

    async def list_budgets(self, request: Request) -> Response:
        self._authorize(request)
        states = None if self.budget_states is None else self.budget_states()
        return _json(list_object(budget_objects(self.budgets, states)))

    def routes(self) -> list[BaseRoute]:
        p = PREFIX
        return [
            Route(f"{p}/teams", self.list_teams, methods=["GET"]),
            Route(f"{p}/teams", self.create_team, methods=["POST"]),
            Route(f"{p}/teams/{{team_id}}", self.get_team, methods=["GET"]),
            Route(f"{p}/teams/{{team_id}}", self.update_team, methods=["PATCH"]),
            Route(f"{p}/teams/{{team_id}}", self.delete_team, methods=["DELETE"]),
            Route(f"{p}/keys", self.list_keys, methods=["GET"]),
            Route(f"{p}/keys", self.create_key, methods=["POST"]),
            Route(f"{p}/keys/{{key_id}}", self.get_key, methods=["GET"]),
            Route(f"{p}/keys/{{key_id}}", self.update_key, methods=["PATCH"]),
            Route(f"{p}/keys/{{key_id}}", self.delete_key, methods=["DELETE"]),
            Route(f"{p}/keys/{{key_id}}/revoke", self.revoke_key, methods=["POST"]),
            Route(f"{p}/policies", self.list_policies, methods=["GET"]),
            Route(f"{p}/policies", self.create_policy, methods=["POST"]),
            Route(f"{p}/policies/{{tag}}", self.get_policy, methods=["GET"]),
            Route(f"{p}/policies/{{tag}}", self.put_policy, methods=["PUT"]),
            Route(f"{p}/policies/{{tag}}", self.delete_policy, methods=["DELETE"]),
            Route(f"{p}/budgets", self.list_budgets, methods=["GET"]),
        ]


@dataclass
class AdminMount:
    """What the ingress mounts: the routes, and the tenancy service to start and stop.

    `service.view` is the process's `TenancyView` (ingress authentication reads it too:
    one view per process)."""

    service: TenancyService
    routes: list[BaseRoute]

    async def start(self) -> None:
        await self.service.start()

    async def stop(self) -> None:
        await self.service.stop()


def admin_api_for(
    kafka: KafkaSettings,
    settings: IngressSettings,
    *,
    budgets: BudgetsConfig | None = None,
    budget_states: BudgetStates | None = None,
    tenancy: TenancySettings | None = None,
    environ: Mapping[str, str] = os.environ,
) -> AdminMount:
    """The tenancy service and the admin routes of one ingress, from its settings.

    With `TOLLWAY_ADMIN_KEY` set, the admin side runs and `TOLLWAY_KEY_PEPPER` is required
    (PepperError otherwise); unset, the routes answer 403 and only the view (and a
    bootstrap file, if configured) runs. Nothing connects before `start()`."""
    key = settings.admin_key
    service = TenancyService(
        kafka,
        tenancy or TenancySettings(),
        admin=key is not None,
        client_id="tollway-ingress-tenancy",
        environ=environ,
    )
    api = AdminApi(
        service.view.store,
        service.admin,
        AdminKey(key.get_secret_value()) if key is not None else None,
        sync=service.sync,
        budgets=budgets,
        budget_states=budget_states,
    )
    if key is None:
        log.info("admin API is off: TOLLWAY_ADMIN_KEY is not set")
    return AdminMount(service, api.routes())
