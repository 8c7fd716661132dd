"""The admin routes of the ingress's OpenAPI document (ingress/openapi.py). Pure.

Both behind the admin key (`TOLLWAY_ADMIN_KEY`, never a virtual key):
- /v1/analytics: each named query is its own path, with exactly the parameters it
  takes (ingress/analytics_params.py), so a fuzzer sends each query what it accepts;
- /admin/v1/...: teams, virtual keys, tag policies, budgets (ingress/admin_api.py), the
  bodies from the pydantic specs the handlers parse with (workers/tenancy/specs.py).
"""

from __future__ import annotations

from typing import Any

from analytics.queries import QUERIES
from ingress.admin_api import ACTOR_HEADER
from ingress.admin_api import MAX_PAGE as ADMIN_MAX_PAGE
from ingress.admin_api import PREFIX as ADMIN_PREFIX
from ingress.analytics_params import MAX_ROWS, http_params
from ingress.openapi_parts import errors, json_content, ok, path_param, ref


def _analytics_param(name: str, description: str, required: bool) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if name == "limit":
        schema = {"type": "integer", "minimum": 1, "maximum": MAX_ROWS}
    elif name == "format":
        schema = {"enum": ["json", "csv"]}
    elif name == "scope_type":
        schema = {"enum": ["team", "key", "model", "global"]}
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


def analytics_paths() -> dict[str, Any]:
    admin: list[dict[str, list[str]]] = [{"adminKey": []}]
    refused = ("401", "403", "500", "503", "504")
    paths: dict[str, Any] = {
        "/v1/analytics": {
            "get": {
                "operationId": "listAnalyticsQueries",
                "summary": "The named queries, their parameters and columns.",
                "security": admin,
                "responses": {
                    "200": ok("The queries.", json_content(ref("AnalyticsListing"))),
                    **errors(refused),
                },
            }
        }
    }
    for name, query in QUERIES.items():
        params = http_params(query)
        paths[f"/v1/analytics/{name}"] = {
            "get": {
                "operationId": f"analytics_{name}",
                "summary": query.description,
                "security": admin,
                "parameters": [
                    _analytics_param(p.name, f"{p.description} ({p.type})", p.required)
                    for p in params
                ],
                "responses": {
                    "200": ok(
                        "Rows as a JSON list object, or CSV with format=csv.",
                        {
                            **json_content(ref("AnalyticsAnswer")),
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    ),
                    **errors(("400", "404", *refused)),
                },
            }
        }
    return paths


def _admin_object(kind: str, *required: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["object", *required],
        "properties": {"object": {"const": kind}},
    }


def admin_paths() -> dict[str, Any]:
    """The admin API (ingress/admin_api.py): teams, virtual keys, tag policies, budgets."""
    admin: list[dict[str, list[str]]] = [{"adminKey": []}]
    actor = {
        "name": ACTOR_HEADER,
        "in": "header",
        "required": False,
        "description": "Labels the audit events (`admin:<name>`).",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._@+-]{1,64}$"},
    }
    refused = ("400", "401", "403", "500", "503")

    def op(
        operation_id: str,
        answer: tuple[str, dict[str, Any]],
        *,
        body: str | dict[str, Any] | None = None,
        path_id: str | None = None,
        query: list[dict[str, Any]] | None = None,
        also: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        parameters = [actor, *(query or [])]
        if path_id is not None:
            # Any text: a malformed id is a plain 404 (not echoed), like an unknown one.
            parameters.insert(0, path_param(path_id))
        operation: dict[str, Any] = {
            "operationId": operation_id,
            "security": admin,
            "parameters": parameters,
            "responses": {
                answer[0]: ok("The object(s).", json_content(answer[1])),
                **errors(refused + also + (("404",) if path_id else ())),
            },
        }
        if body is not None:
            schema = ref(body) if isinstance(body, str) else body
            operation["requestBody"] = {"required": True, "content": json_content(schema)}
            operation["responses"].update(errors(("413",)))
        return operation

    listed = {
        "type": "object",
        "required": ["object", "data", "has_more"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"type": "object"}},
            "has_more": {"type": "boolean"},
        },
    }
    deleted = {
        "type": "object",
        "required": ["object", "id", "deleted"],
        "properties": {"id": {"type": "string"}, "deleted": {"const": True}},
    }
    team = _admin_object("team", "id")
    key = _admin_object("key", "id")
    created_key = _admin_object("key", "id", "key")
    policy = _admin_object("tag_policy", "tag")
    key_query = [
        {"name": "team_id", "in": "query", "required": False, "schema": {"type": "string"}},
        {
            "name": "status",
            "in": "query",
            "required": False,
            "schema": {"enum": ["all", "active", "revoked", "expired"]},
        },
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": ADMIN_MAX_PAGE},
        },
        {"name": "after", "in": "query", "required": False, "schema": {"type": "string"}},
    ]
    put_policy = {
        "type": "object",
        "additionalProperties": False,
        "required": ["allowed_models"],
        "properties": {
            "tag": {"type": "string", "description": "If given, the path's tag."},
            "allowed_models": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        },
    }
    p = ADMIN_PREFIX
    return {
        f"{p}/teams": {
            "get": op("listTeams", ("200", listed)),
            "post": op("createTeam", ("201", team), body="TeamSpec", also=("409",)),
        },
        f"{p}/teams/{{team_id}}": {
            "get": op("getTeam", ("200", team), path_id="team_id"),
            "patch": op("updateTeam", ("200", team), body="TeamPatch", path_id="team_id"),
            "delete": op("deleteTeam", ("200", deleted), path_id="team_id", also=("409",)),
        },
        f"{p}/keys": {
            "get": op("listKeys", ("200", listed), query=key_query),
            "post": op("createKey", ("201", created_key), body="KeySpec", also=("404", "409")),
        },
        f"{p}/keys/{{key_id}}": {
            "get": op("getKey", ("200", key), path_id="key_id"),
            "patch": op("updateKey", ("200", key), body="KeyPatch", path_id="key_id"),
            "delete": op("deleteKey", ("200", deleted), path_id="key_id"),
        },
        f"{p}/keys/{{key_id}}/revoke": {
            "post": op("revokeKey", ("200", key), path_id="key_id"),
        },
        f"{p}/policies": {
            "get": op("listPolicies", ("200", listed)),
            "post": op("createPolicy", ("201", policy), body="PolicySpec", also=("409",)),
        },
        f"{p}/policies/{{tag}}": {
            "get": op("getPolicy", ("200", policy), path_id="tag"),
            "put": op("putPolicy", ("200", policy), body=put_policy, path_id="tag"),
            "delete": op("deletePolicy", ("200", deleted), path_id="tag"),
        },
        f"{p}/budgets": {"get": op("listBudgets", ("200", listed))},
    }
