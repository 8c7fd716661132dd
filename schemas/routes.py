"""Routing configuration: client-facing model names -> provider deployments.

Loaded once from YAML (`TOLLWAY_ROUTES_FILE`) and frozen. Without a file the
default catalogue routes well-known model names to the real OpenAI API when
`OPENAI_API_KEY` is set, and to Tollway's own mock provider otherwise, so the
stack runs offline. Credentials are named by environment variable, never
written in the file; no request field can choose an upstream host.

A model name ending in `*` is a prefix pattern: `mock-*` routes every model
whose name starts with `mock-` (the mock provider chooses behaviour by name).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.errors import UnknownModel

DEFAULT_MOCK_URL: Final = "http://127.0.0.1:18080/v1"
_DEFAULT_MODELS: Final = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1")


class Deployment(BaseModel):
    """One upstream endpoint that can serve a model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1)]
    provider: Literal["openai"] = "openai"
    base_url: Annotated[str, Field(pattern=r"^https?://")]
    model: str | None = Field(
        default=None, description="Upstream model name; defaults to the requested name."
    )
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the API key."
    )
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 600.0


class ModelRoute(BaseModel):
    """A client-facing model: its deployments in fallback order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deployments: Annotated[tuple[Deployment, ...], Field(min_length=1)]


class RoutesConfig(BaseModel):
    """The whole routing table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: Mapping[str, ModelRoute]

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

    def public_names(self) -> list[str]:
        return sorted(name for name in self.models if not name.endswith("*"))


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
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise RoutesConfigError(f"{path}: {problems}") from exc
    except yaml.YAMLError as exc:
        raise RoutesConfigError(f"{path}: not valid YAML ({exc})") from exc
