"""Routing configuration: client-facing model names -> provider deployments.

Loaded once from YAML (`TOLLWAY_ROUTES_FILE`) and frozen. Without a file the
default catalogue routes well-known model names to the real OpenAI API when
`OPENAI_API_KEY` is set, and to Tollway's own mock provider otherwise, so the
stack runs offline. Credentials are named by environment variable, never
written in the file; no request field can choose an upstream host.

`provider` names the wire format: `openai` (also any OpenAI-compatible server),
`anthropic` (Messages API), `gemini` (generateContent) or `azure` (Azure OpenAI,
where `model` is the Azure deployment name and `api_version` is required).

A model name ending in `*` is a prefix pattern: `mock-*` routes every model
whose name starts with `mock-` (the mock provider chooses behaviour by name).

A deployment without `model` calls upstream with the name of the model it is
listed under (under a prefix pattern: the requested name). So a
context-window chain or an alias that lands on `gpt-4.1` calls `gpt-4.1`, not
the name the client sent.

`aliases` rewrite a client-facing name for one team or one API key before
planning (`RoutesConfig.aliased`): the key's table wins over the team's, which
wins over the global names. Resolution is one step: an alias names a model
defined in `models`, never another alias.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Final, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from schemas.errors import UnknownModel

DEFAULT_MOCK_URL: Final = "http://127.0.0.1:18080/v1"
_DEFAULT_MODELS: Final = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "gpt-4.1",
    "text-embedding-3-small",
    "text-embedding-3-large",
)

ProviderKind = Literal["openai", "anthropic", "gemini", "azure"]
"""The wire formats Tollway speaks upstream; one adapter each (workers/providers/)."""
EMBEDDING_PROVIDERS: Final[frozenset[str]] = frozenset({"openai", "azure", "gemini"})
"""The wire formats with an embeddings API (Anthropic has none): an embeddings request
is planned over these deployments of its route only."""


class Deployment(BaseModel):
    """One upstream endpoint that can serve a model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1)]
    provider: ProviderKind = "openai"
    base_url: Annotated[str, Field(pattern=r"^https?://")]
    model: str | None = Field(
        default=None,
        description="Upstream model name; defaults to the name of the model it is listed "
        "under (the requested name under a prefix pattern).",
    )
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the API key."
    )
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 600.0
    first_token_timeout_s: Annotated[float, Field(gt=0, le=3600)] | None = Field(
        default=None,
        description="Streamed calls: seconds until the first chunk arrives, else the call "
        "fails as a retriable timeout and the plan falls over (nothing was relayed yet). "
        "Unset: only `timeout_s` (the whole call) applies. The connect timeout is the "
        "transport's (workers/providers/transport.py CONNECT_TIMEOUT_S, 10 s).",
    )
    weight: Annotated[float, Field(ge=0, le=1_000_000)] = Field(
        default=1.0, description="Share of traffic under the `weighted` strategy."
    )
    rpm: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Requests per minute this deployment allows (paces queued work)."
    )
    tpm: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Tokens per minute this deployment allows (paces queued work)."
    )
    input_usd_per_mtok: Annotated[Decimal, Field(ge=0)] | None = Field(
        default=None, description="Price hint for `lowest_cost` routing, USD per 1M input tokens."
    )
    output_usd_per_mtok: Annotated[Decimal, Field(ge=0)] | None = Field(
        default=None, description="Price hint for `lowest_cost` routing, USD per 1M output tokens."
    )
    api_version: Annotated[str, Field(min_length=1)] | None = Field(
        default=None,
        validate_default=True,  # so a missing one is reported at this field's path
        description="Azure OpenAI `api-version` query parameter (azure only, required there).",
    )

    @field_validator("api_version", mode="before")
    @classmethod
    def _api_version_as_written(cls, value: object) -> object:
        # YAML reads an unquoted 2024-10-21 as a date; the API wants the text.
        return value.isoformat() if isinstance(value, datetime.date) else value

    @field_validator("api_version")
    @classmethod
    def _api_version_only_for_azure(cls, value: str | None, info: ValidationInfo) -> str | None:
        provider = info.data.get("provider")
        if provider is None:
            return value  # `provider` itself is invalid and reported already
        if provider == "azure" and value is None:
            raise ValueError("an azure deployment needs `api_version`")
        if provider != "azure" and value is not None:
            raise ValueError(f"`api_version` is only used by azure, not {provider}")
        return value

    def cost_hint_usd_per_mtok(self) -> Decimal | None:
        """Input + output price per 1M tokens, for ordering by cost (None: unknown)."""
        if self.input_usd_per_mtok is None or self.output_usd_per_mtok is None:
            return None
        return self.input_usd_per_mtok + self.output_usd_per_mtok


Strategy = Literal["priority", "weighted", "least_latency", "lowest_cost"]


class ModelRoute(BaseModel):
    """A client-facing model: its deployments, how to order them, and special chains.

    `context_window_fallbacks` and `content_policy_fallbacks` name other
    client-facing models to try, in order, when every deployment refused the
    request as too long (`context_length_exceeded`) or by content policy.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    deployments: Annotated[tuple[Deployment, ...], Field(min_length=1)]
    strategy: Strategy = "priority"
    context_window_fallbacks: tuple[str, ...] = ()
    content_policy_fallbacks: tuple[str, ...] = ()


AliasTable = Mapping[str, str]
"""Client-facing name -> the model (a name in `models`) it stands for."""


class Aliases(BaseModel):
    """Model names rewritten per team and per API key (`aliases:` in the routes file).

    `teams` and `keys` map a team id / key id to its alias table. A caller's
    key table is consulted first, then its team's; the first hit is the model
    routed, and it is never looked up again (no chains).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    teams: Mapping[str, AliasTable] = Field(default_factory=dict)
    keys: Mapping[str, AliasTable] = Field(default_factory=dict)


class RoutesConfig(BaseModel):
    """The whole routing table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: Mapping[str, ModelRoute]
    aliases: Aliases = Field(default_factory=Aliases)

    def resolve(self, model: str) -> ModelRoute:
        """The route for `model`: an exact name first, then the longest prefix pattern."""
        route = self.models.get(model)
        if route is not None:
            return route
        best: tuple[int, ModelRoute] | None = None
        for name, candidate in self.models.items():
            is_match = name.endswith("*") and model.startswith(name[:-1])
            if is_match and (best is None or len(name) > best[0]):
                best = (len(name), candidate)
        if best is None:
            raise UnknownModel(f"The model `{model}` does not exist", param="model")
        return best[1]

    def aliased(self, model: str, *, team_id: str | None, key_id: str | None) -> str:
        """The model name to route for this caller: the key's alias of `model`, else the
        team's, else `model` itself. One lookup per table, never repeated (no chains)."""
        if key_id is not None:
            target = self.aliases.keys.get(key_id, {}).get(model)
            if target is not None:
                return target
        if team_id is not None:
            target = self.aliases.teams.get(team_id, {}).get(model)
            if target is not None:
                return target
        return model

    def resolve_for(self, model: str, *, team_id: str | None, key_id: str | None) -> ModelRoute:
        """`resolve` after the caller's aliases: the route a team's/key's request takes."""
        return self.resolve(self.aliased(model, team_id=team_id, key_id=key_id))

    @field_validator("models")
    @classmethod
    def _upstream_model_defaults_to_route_name(
        cls, models: Mapping[str, ModelRoute]
    ) -> Mapping[str, ModelRoute]:
        # Filled once here, so every plan (aliases and special chains included) calls the
        # model it routed to and every attempt records (and is priced as) that model.
        return {
            name: route if name.endswith("*") else _with_default_model(route, name)
            for name, route in models.items()
        }

    @model_validator(mode="after")
    def _fallback_models_exist(self) -> RoutesConfig:
        for name, route in self.models.items():
            for chain in (route.context_window_fallbacks, route.content_policy_fallbacks):
                for target in chain:
                    if target not in self.models:
                        raise ValueError(f"models.{name}: fallback model {target!r} is not defined")
        return self

    @model_validator(mode="after")
    def _aliases_name_models(self) -> RoutesConfig:
        for scope, tables in (("teams", self.aliases.teams), ("keys", self.aliases.keys)):
            for owner, table in tables.items():
                for alias, target in table.items():
                    problem = _alias_problem(alias, target, table, self.models)
                    if problem is not None:
                        raise ValueError(f"aliases.{scope}.{owner}.{alias}: {problem}")
        return self

    def public_names(self) -> list[str]:
        return sorted(name for name in self.models if not name.endswith("*"))


def _with_default_model(route: ModelRoute, name: str) -> ModelRoute:
    if all(d.model is not None for d in route.deployments):
        return route
    deployments = tuple(
        d if d.model is not None else d.model_copy(update={"model": name})
        for d in route.deployments
    )
    return route.model_copy(update={"deployments": deployments})


def _alias_problem(
    alias: str, target: str, table: AliasTable, models: Mapping[str, ModelRoute]
) -> str | None:
    """Why `alias -> target` is not allowed in `table`, or None."""
    if not alias or alias.endswith("*"):
        return "an alias is one exact model name (not empty, no `*` pattern)"
    if target.endswith("*") or target not in models:
        return f"target {target!r} is not a model defined in `models`"
    if target in table:
        return f"target {target!r} is itself an alias in the same table (aliases do not chain)"
    return None


class RoutesConfigError(ValueError):
    """The routes file is invalid; the message names each bad config path."""


def default_routes(environ: Mapping[str, str]) -> RoutesConfig:
    """The built-in catalogue: real OpenAI when a key is set, the mock provider otherwise."""
    mock = Deployment(name="mock", base_url=environ.get("TOLLWAY_MOCK_URL", DEFAULT_MOCK_URL))
    models: dict[str, ModelRoute] = {"mock-*": ModelRoute(deployments=(mock,))}
    if environ.get("OPENAI_API_KEY"):
        upstream = Deployment(
            name="openai", base_url="https://api.openai.com/v1", api_key_env="OPENAI_API_KEY"
        )
    else:
        upstream = mock
    for name in _DEFAULT_MODELS:
        models[name] = ModelRoute(deployments=(upstream,))
    return RoutesConfig(models=models)


def load_routes(path: Path | None, environ: Mapping[str, str] = os.environ) -> RoutesConfig:
    """Load and validate a routes file, or the default catalogue when `path` is None."""
    if path is None:
        return default_routes(environ)
    try:
        raw = yaml.safe_load(path.read_text("utf-8"))
        return RoutesConfig.model_validate(raw)
    except ValidationError as exc:
        # Whole-table checks have no location of their own: their message starts with the path.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" if err["loc"] else err["msg"]
            for err in exc.errors()
        )
        raise RoutesConfigError(f"{path}: {problems}") from exc
    except yaml.YAMLError as exc:
        raise RoutesConfigError(f"{path}: not valid YAML ({exc})") from exc
