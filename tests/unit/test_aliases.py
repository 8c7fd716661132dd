"""Aliases per team and per key (schemas/routes.py), in the config, the ingress and the router.

Today every envelope carries team `default` and key None; these tests use other ids so
the mechanism is proven before tenancy lands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import orjson
import pytest

from ingress.admission import parse_chat_request
from schemas.errors import ProviderBadRequest, UnknownModel
from schemas.records import RequestEnvelope
from schemas.routes import (
    Aliases,
    Deployment,
    ModelRoute,
    RoutesConfig,
    RoutesConfigError,
    load_routes,
)
from tests.unit.test_execution import NOW_MS, FakeProvider, _envelope, _reply
from workers.router.execution import Executor
from workers.router.fallback import RetryPolicy


def _route(deployment: str, model: str | None = None) -> ModelRoute:
    return ModelRoute(
        deployments=(Deployment(name=deployment, base_url="http://x.invalid/v1", model=model),)
    )


ROUTES: Final = RoutesConfig(
    models={
        "gpt-4": _route("d-gpt-4"),
        "gpt-4o-mini": _route("d-mini"),
        "claude-haiku": _route("d-haiku", model="claude-haiku-4-5"),
        "mock-*": _route("d-mock"),
    },
    aliases=Aliases(
        teams={"acme": {"gpt-4": "gpt-4o-mini", "fast": "gpt-4o-mini"}, "beta": {"fast": "gpt-4"}},
        keys={"key_123": {"fast": "claude-haiku", "gpt-4o-mini": "gpt-4"}},
    ),
)


@pytest.mark.parametrize(
    ("model", "team_id", "key_id", "routed"),
    [
        ("gpt-4", "acme", None, "gpt-4o-mini"),  # the team's alias shadows the global name
        ("gpt-4", "other", None, "gpt-4"),  # other teams see the global name
        ("gpt-4", None, None, "gpt-4"),
        ("fast", "acme", None, "gpt-4o-mini"),
        ("fast", "beta", None, "gpt-4"),  # each team its own table
        ("fast", "acme", "key_123", "claude-haiku"),  # the key's alias wins over the team's
        ("fast", "beta", "key_123", "claude-haiku"),
        ("fast", None, "key_123", "claude-haiku"),
        ("gpt-4", "acme", "key_123", "gpt-4o-mini"),  # key has no alias for it: the team's
        ("gpt-4", "acme", "key_999", "gpt-4o-mini"),  # an unknown key: the team's
        # One step, never chained: key_123 maps gpt-4o-mini -> gpt-4, which acme would map
        # back to gpt-4o-mini; the key's answer is final.
        ("gpt-4o-mini", "acme", "key_123", "gpt-4"),
        ("mock-flaky-5", "acme", "key_123", "mock-flaky-5"),  # no alias: unchanged
        ("unknown", "acme", "key_123", "unknown"),  # unknown stays unknown (resolve says 404)
    ],
)
def test_aliased(model: str, team_id: str | None, key_id: str | None, routed: str) -> None:
    assert ROUTES.aliased(model, team_id=team_id, key_id=key_id) == routed


def test_resolve_for_routes_the_alias_and_unknown_names_stay_404() -> None:
    route = ROUTES.resolve_for("fast", team_id="acme", key_id="key_123")
    assert route.deployments[0].name == "d-haiku"
    with pytest.raises(UnknownModel) as info:
        ROUTES.resolve_for("fast", team_id="nobody", key_id=None)
    assert info.value.http_status == 404


def test_routes_without_aliases_have_empty_tables() -> None:
    routes = RoutesConfig(models={"m": _route("d")})
    assert routes.aliases == Aliases()
    assert routes.aliased("m", team_id="acme", key_id="k") == "m"


def test_a_deployment_without_model_calls_the_name_it_is_listed_under() -> None:
    assert ROUTES.resolve("gpt-4o-mini").deployments[0].model == "gpt-4o-mini"
    assert ROUTES.resolve("claude-haiku").deployments[0].model == "claude-haiku-4-5"  # kept
    assert ROUTES.resolve("mock-slow-5").deployments[0].model is None  # pattern: requested name


ALIASES_YAML: Final = """
models:
  gpt-4o-mini:
    deployments: [{name: mini, base_url: "http://127.0.0.1:1/v1"}]
  claude-haiku:
    deployments: [{name: haiku, base_url: "http://127.0.0.1:1/v1", model: claude-haiku-4-5}]
aliases:
  teams: {acme: {gpt-4: gpt-4o-mini}}
  keys: {key_123: {fast: claude-haiku}}
"""


def test_load_aliases_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(ALIASES_YAML, "utf-8")
    routes = load_routes(path, {})
    assert routes.aliases.teams == {"acme": {"gpt-4": "gpt-4o-mini"}}
    assert routes.aliases.keys == {"key_123": {"fast": "claude-haiku"}}
    assert routes.resolve_for("gpt-4", team_id="acme", key_id=None).deployments[0].name == "mini"
    assert routes.public_names() == ["claude-haiku", "gpt-4o-mini"]  # aliases are per caller


_MODELS: Final = (
    "models:\n"
    "  a: {deployments: [{name: da, base_url: 'http://x/v1'}]}\n"
    "  b: {deployments: [{name: db, base_url: 'http://x/v1'}]}\n"
    "  'mock-*': {deployments: [{name: dm, base_url: 'http://x/v1'}]}\n"
)


@pytest.mark.parametrize(
    ("aliases", "config_path", "says"),
    [
        ("teams: {acme: {x: nope}}", "aliases.teams.acme.x", "not a model defined"),
        ("keys: {k1: {x: nope}}", "aliases.keys.k1.x", "not a model defined"),
        # a name a pattern would route is still not a model of `models`
        ("teams: {acme: {x: mock-flaky-5}}", "aliases.teams.acme.x", "not a model defined"),
        ("teams: {acme: {x: 'mock-*'}}", "aliases.teams.acme.x", "not a model defined"),
        ("teams: {acme: {x: a, a: b}}", "aliases.teams.acme.x", "do not chain"),
        ("keys: {k1: {a: a}}", "aliases.keys.k1.a", "do not chain"),
        ("teams: {acme: {'x*': a}}", "aliases.teams.acme.x*", "one exact model name"),
        ("teams: {acme: {'': a}}", "aliases.teams.acme.", "one exact model name"),
        ("teams: {acme: {x: 5}}", "aliases.teams.acme.x", "valid string"),
        ("teams: {acme: [a]}", "aliases.teams.acme", "valid dictionary"),
        ("groups: {acme: {x: a}}", "aliases.groups", "Extra inputs"),
    ],
)
def test_invalid_aliases_name_the_config_path(
    tmp_path: Path, aliases: str, config_path: str, says: str
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(f"{_MODELS}aliases:\n  {aliases}\n", "utf-8")
    with pytest.raises(RoutesConfigError) as info:
        load_routes(path, {})
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert f"{config_path}: " in message
    assert says in message


def test_parse_chat_request_accepts_the_callers_aliases_only() -> None:
    body = orjson.dumps({"model": "fast", "messages": [{"role": "user", "content": "hi"}]})
    assert parse_chat_request(body, ROUTES, team_id="acme", key_id=None).model == "fast"
    assert parse_chat_request(body, ROUTES, team_id="x", key_id="key_123").model == "fast"
    with pytest.raises(UnknownModel):
        parse_chat_request(body, ROUTES, team_id="other", key_id=None)
    with pytest.raises(UnknownModel):
        parse_chat_request(body, ROUTES)


def _executor(routes: RoutesConfig, provider: FakeProvider) -> Executor:
    return Executor(
        routes=routes,
        provider=provider,
        router_id="r",
        retry=RetryPolicy(retries_per_route=0),
        clock_ms=lambda: NOW_MS,
    )


def _for(model: str, team_id: str, key_id: str | None) -> RequestEnvelope:
    envelope = _envelope(model=model)
    envelope["team_id"] = team_id
    envelope["key_id"] = key_id
    return envelope


@pytest.mark.parametrize(
    ("team_id", "key_id", "deployment", "upstream_model"),
    [
        ("acme", None, "d-mini", "gpt-4o-mini"),
        ("acme", "key_123", "d-haiku", "claude-haiku-4-5"),
        ("beta", None, "d-gpt-4", "gpt-4"),
    ],
)
async def test_the_router_plans_the_alias_and_records_what_was_asked(
    team_id: str, key_id: str | None, deployment: str, upstream_model: str
) -> None:
    provider = FakeProvider({deployment: [_reply(deployment)]})
    execution = await _executor(ROUTES, provider).execute(_for("fast", team_id, key_id))
    assert [name for name, _ in provider.calls] == [deployment]
    result = execution.result
    assert result["status"] == "succeeded"
    assert result["deployment"] == deployment
    assert result["requested_model"] == "fast"  # what the client asked for
    assert result["served_model"] == f"served-by-{deployment}"
    assert (result["team_id"], result["key_id"]) == (team_id, key_id)
    (attempt,) = execution.attempts
    assert attempt["model"] == upstream_model  # what was called, and is priced


async def test_a_name_aliased_for_another_team_fails_as_unknown() -> None:
    provider = FakeProvider({})
    execution = await _executor(ROUTES, provider).execute(_for("fast", "other", None))
    assert execution.result["status"] == "failed"
    assert execution.result["http_status"] == 404
    assert execution.result["error_type"] == "UnknownModel"
    assert not provider.calls
    assert not execution.attempts


async def test_a_context_window_chain_calls_the_chain_model_by_its_own_name() -> None:
    # The chain's deployment has no `model`: it is called as `long`, not as the name the
    # client sent (which would be refused again for the same reason).
    routes = RoutesConfig(
        models={
            "short": ModelRoute(
                deployments=(Deployment(name="d-short", base_url="http://s.invalid/v1"),),
                context_window_fallbacks=("long",),
            ),
            "long": _route("d-long"),
        }
    )
    refusal = ProviderBadRequest(
        "too long", upstream_status=400, upstream_code="context_length_exceeded"
    )
    provider = FakeProvider({"d-short": [refusal], "d-long": [_reply("d-long")]})
    execution = await _executor(routes, provider).execute(_for("short", "default", None))
    assert execution.result["deployment"] == "d-long"
    assert [a["model"] for a in execution.attempts] == ["short", "long"]
