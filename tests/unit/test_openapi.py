"""ingress/openapi.py: a valid OpenAPI 3.1 document that lists exactly the app's routes.

The app is the one ingress/server.py serves (every surface, fakes behind it); its
Starlette routes are compared with the document's paths and methods, so a route added
without documentation (or documented and gone) fails here.
"""

from __future__ import annotations

from typing import Any, Final

import httpx
import jsonschema_rs
import orjson
import pytest
import schemathesis
from schemathesis import checks as builtin
from schemathesis.core.failures import FailureGroup
from starlette.routing import Route

from analytics.queries import QUERIES
from ingress.analytics_params import http_params
from ingress.dashboard_api import ASSET_PATH, PAGE_PATH
from ingress.openapi import OPENAPI_PATH, build_openapi, openapi_json
from schemas.openai import ErrorBody
from tests.unit.ingress_stack import ADMIN_KEY, build_stack

ANALYTICS_QUERY_ROUTE: Final = "/v1/analytics/{query_name}"
CHAT: Final = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _app_operations() -> set[tuple[str, str]]:
    """(METHOD, path) of every route of the served app; the analytics route per query."""
    operations: set[tuple[str, str]] = set()
    for route in build_stack().app.routes:
        assert isinstance(route, Route), route
        assert route.methods is not None
        paths = (
            [f"/v1/analytics/{name}" for name in QUERIES]
            if route.path == ANALYTICS_QUERY_ROUTE
            else [route.path]
        )
        operations |= {(m, p) for m in route.methods - {"HEAD"} for p in paths}
    return operations


def _documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }


@pytest.mark.parametrize("keys_required", [True, False])
def test_the_document_is_valid_openapi_3_1(keys_required: bool) -> None:
    document = build_openapi(keys_required=keys_required)
    assert document["openapi"] == "3.1.0"
    schema = schemathesis.openapi.from_dict(document)
    schema.validate()  # the OpenAPI 3.1 meta-schema; raises on the first violation
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]  # an Err would raise: the test fails
    assert len(operations) == len(_documented(document))


def test_an_invalid_document_is_caught_by_the_same_validation() -> None:
    """The check above can fail: a broken document does not pass it."""
    document = build_openapi()
    document["paths"]["/v1/models"]["get"]["responses"] = "none"
    with pytest.raises(jsonschema_rs.ValidationError):
        schemathesis.openapi.from_dict(document).validate()


def test_it_lists_exactly_the_routes_of_the_app() -> None:
    app = _app_operations()
    documented = _documented(build_openapi())
    assert documented - app == set(), "documented but not served"
    assert app - documented == set(), "served but not documented"
    assert ("GET", OPENAPI_PATH) in app


def _validator(document: dict[str, Any], name: str) -> jsonschema_rs.Validator:
    """A Draft 2020-12 validator of one component, with the document as root (refs resolve)."""
    root = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema_rs.Draft202012Validator(root)


def test_every_component_is_a_json_schema_whose_refs_resolve() -> None:
    document = build_openapi()
    names = sorted(document["components"]["schemas"])
    assert len(names) > 30
    for name in names:
        _validator(document, name).is_valid({})  # compiles; a dangling $ref raises here


# body -> valid by the document (the app accepts it too: tests/unit/test_bad_input.py)
BODIES: Final = [
    ("ChatCompletionRequest", CHAT, True),
    ("ChatCompletionRequest", {**CHAT, "temprature": 1}, False),
    ("ChatCompletionRequest", {**CHAT, "max_tokens": 0}, False),
    ("ChatCompletionRequest", {**CHAT, "metadata": {"tollway.callback_url": "x"}}, False),
    ("ChatCompletionRequest", {**CHAT, "callback_url": "https://hooks.example.com"}, False),
    ("AsyncChatCompletionRequest", {**CHAT, "callback_url": "https://hooks.example.com"}, True),
    ("AsyncChatCompletionRequest", {**CHAT, "stream": True}, False),
    ("EmbeddingsRequest", {"model": "text-embedding-3-small", "input": ["a", "b"]}, True),
    ("EmbeddingsRequest", {"model": "text-embedding-3-small", "input": ""}, False),
    ("EmbeddingsRequest", {"model": "text-embedding-3-small", "input": [[]]}, False),
    ("MessagesRequest", {**CHAT, "max_tokens": 5}, True),
    ("MessagesRequest", CHAT, False),
    ("ErrorBody", {"error": {"message": "m", "type": "t", "param": None, "code": None}}, True),
    ("ErrorBody", {"message": "m"}, False),
]


@pytest.mark.parametrize(("name", "body", "valid"), BODIES)
def test_request_and_error_schemas_hold_the_handlers_rules(
    name: str, body: dict[str, Any], valid: bool
) -> None:
    assert _validator(build_openapi(), name).is_valid(body) is valid


def test_every_error_status_carries_the_error_body() -> None:
    document = build_openapi()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            statuses = [s for s in operation["responses"] if s.startswith(("4", "5"))]
            assert "500" in statuses, (method, path)
            for status in statuses:
                schema = operation["responses"][status]["content"]["application/json"]["schema"]
                refs = [schema.get("$ref")] + [s["$ref"] for s in schema.get("anyOf", [])]
                assert "#/components/schemas/ErrorBody" in refs, (method, path, status)


def test_security_data_plane_keys_admin_routes_admin_key_probes_nothing() -> None:
    document = build_openapi()
    assert document["security"] == [{"virtualKey": []}]
    paths = document["paths"]
    # the dashboard's page and assets hold no data: public (ingress/dashboard_api.py)
    admin = [
        p
        for p in paths
        if p.startswith(("/admin/", "/v1/analytics")) and p not in {PAGE_PATH, ASSET_PATH}
    ]
    assert len(admin) == len(QUERIES) + 1 + 8 + 1  # + the dashboard's data
    for name in (PAGE_PATH, ASSET_PATH):
        assert paths[name]["get"]["security"] == []
    for name in admin:
        for operation in paths[name].values():
            assert operation["security"] == [{"adminKey": []}], name
    for name in ("/healthz", "/readyz", OPENAPI_PATH):
        assert paths[name]["get"]["security"] == []
    open_document = build_openapi(keys_required=False)
    assert {} in open_document["security"]


def test_each_analytics_query_documents_exactly_its_parameters() -> None:
    document = build_openapi()
    for name, query in QUERIES.items():
        params = document["paths"][f"/v1/analytics/{name}"]["get"]["parameters"]
        assert [(p["name"], p["required"]) for p in params] == [
            (p.name, p.required) for p in http_params(query)
        ]
        assert all(p["in"] == "query" for p in params)


@pytest.mark.parametrize("auth", ["open", "keys"])
async def test_the_app_serves_the_document_without_a_key(auth: str) -> None:
    stack = build_stack(auth=auth)
    transport = httpx.ASGITransport(app=stack.asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get(OPENAPI_PATH)
        refused = await client.get("/v1/analytics", headers={"authorization": "Bearer nope"})
        admin = await client.get("/v1/analytics", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == openapi_json(keys_required=auth == "keys")
    served = orjson.loads(response.content)
    assert ({} in served["security"]) is (auth == "open")
    ErrorBody.model_validate_json(refused.content)
    assert refused.status_code == 401
    assert admin.status_code == 200


STREAMED: Final = [
    ("/v1/chat/completions", {**CHAT, "stream": True}),
    ("/v1/messages", {**CHAT, "max_tokens": 5, "stream": True}),
]


@pytest.mark.parametrize(("path", "body"), STREAMED)
def test_streamed_answers_conform_event_by_event(path: str, body: dict[str, Any]) -> None:
    """Schemathesis checks each server-sent event against the documented event schema; a
    document that called an event a plain string would fail (the control below)."""
    stack = build_stack()
    checks = [builtin.response_schema_conformance, builtin.content_type_conformance]
    schema = schemathesis.openapi.from_asgi(OPENAPI_PATH, stack.asgi)
    case = schema[path]["POST"].Case(body=body, media_type="application/json")
    response = case.call()
    assert response.headers["content-type"] == ["text/event-stream; charset=utf-8"]
    case.validate_response(response, checks=checks)

    wrong = build_openapi(keys_required=False)
    content = wrong["paths"][path]["post"]["responses"]["200"]["content"]
    content["text/event-stream"]["schema"] = {"type": "string"}
    control = schemathesis.openapi.from_dict(wrong)
    control.app = stack.asgi
    case = control[path]["POST"].Case(body=body, media_type="application/json")
    with pytest.raises(FailureGroup):
        case.validate_response(case.call(), checks=checks)
