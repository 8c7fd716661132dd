"""schemas/routes.py: model name resolution, the default catalogue and the YAML loader."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest

from schemas.errors import UnknownModel
from schemas.routes import (
    DEFAULT_MOCK_URL,
    Deployment,
    ModelRoute,
    RoutesConfig,
    RoutesConfigError,
    default_routes,
    load_routes,
)


def _route(name: str) -> ModelRoute:
    return ModelRoute(deployments=(Deployment(name=name, base_url="http://127.0.0.1:1/v1"),))


ROUTES: Final = RoutesConfig(
    models={
        "gpt-4o": _route("exact-gpt-4o"),
        "gpt-*": _route("gpt-prefix"),
        "gpt-4*": _route("gpt-4-prefix"),
        "mock-*": _route("mock-prefix"),
        "mock-slow-*": _route("mock-slow-prefix"),
    }
)


@pytest.mark.parametrize(
    ("model", "deployment"),
    [
        ("gpt-4o", "exact-gpt-4o"),  # exact beats every pattern
        ("gpt-4o-mini", "gpt-4-prefix"),  # longest prefix wins
        ("gpt-4", "gpt-4-prefix"),
        ("gpt-3.5-turbo", "gpt-prefix"),
        ("gpt-", "gpt-prefix"),  # a prefix pattern matches its bare prefix
        ("mock-error-500", "mock-prefix"),
        ("mock-slow-250", "mock-slow-prefix"),
        ("mock-", "mock-prefix"),
    ],
)
def test_resolve(model: str, deployment: str) -> None:
    assert ROUTES.resolve(model).deployments[0].name == deployment


@pytest.mark.parametrize(
    "model", ["", "mock", "gpt", "claude-3", "GPT-4o", " gpt-4o", "xgpt-4o", "gpt*"]
)
def test_resolve_unknown_model(model: str) -> None:
    with pytest.raises(UnknownModel) as info:
        ROUTES.resolve(model)
    assert info.value.param == "model"
    assert info.value.http_status == 404
    assert f"`{model}`" in info.value.message


def test_public_names_leave_out_patterns_and_are_sorted() -> None:
    assert ROUTES.public_names() == ["gpt-4o"]


def test_default_routes_without_a_key_send_everything_to_the_mock() -> None:
    routes = default_routes({})
    assert routes.public_names() == [
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4o",
        "gpt-4o-mini",
        "text-embedding-3-large",
        "text-embedding-3-small",
    ]
    for name in [*routes.public_names(), "mock-anything"]:
        (deployment,) = routes.resolve(name).deployments
        assert deployment.name == "mock"
        assert deployment.base_url == DEFAULT_MOCK_URL
        assert deployment.api_key_env is None


def test_default_routes_with_an_empty_key_still_use_the_mock() -> None:
    assert default_routes({"OPENAI_API_KEY": ""}).resolve("gpt-4o").deployments[0].name == "mock"


def test_default_routes_with_a_key_use_openai_and_never_copy_the_key() -> None:
    routes = default_routes({"OPENAI_API_KEY": "sk-secret"})
    (deployment,) = routes.resolve("gpt-4o-mini").deployments
    assert deployment.name == "openai"
    assert deployment.base_url == "https://api.openai.com/v1"
    assert deployment.api_key_env == "OPENAI_API_KEY"
    assert "sk-secret" not in routes.model_dump_json()
    assert routes.resolve("mock-fast").deployments[0].name == "mock"


def test_default_routes_honour_the_mock_url() -> None:
    routes = default_routes({"TOLLWAY_MOCK_URL": "http://mock.internal:9000/v1"})
    assert routes.resolve("mock-x").deployments[0].base_url == "http://mock.internal:9000/v1"
    assert routes.resolve("gpt-4o").deployments[0].base_url == "http://mock.internal:9000/v1"


def test_load_routes_without_a_path_is_the_default_catalogue() -> None:
    assert load_routes(None, {}) == default_routes({})


VALID_YAML: Final = """
models:
  gpt:
    deployments:
      - name: primary
        base_url: https://api.openai.com/v1
        model: gpt-4o-mini-2024-07-18
        api_key_env: OPENAI_API_KEY
        timeout_s: 30
      - name: backup
        base_url: http://127.0.0.1:18080/v1
  "mock-*":
    deployments:
      - name: mock
        base_url: http://127.0.0.1:18080/v1
"""


def test_load_routes_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(VALID_YAML, "utf-8")
    routes = load_routes(path, {})
    primary, backup = routes.resolve("gpt").deployments
    assert primary == Deployment(
        name="primary",
        base_url="https://api.openai.com/v1",
        model="gpt-4o-mini-2024-07-18",
        api_key_env="OPENAI_API_KEY",
        timeout_s=30.0,
    )
    assert (backup.name, backup.provider, backup.model, backup.timeout_s) == (
        "backup",
        "openai",
        "gpt",  # no `model`: upstream is called with the name it is listed under
        600.0,
    )
    assert routes.resolve("mock-1").deployments[0].model is None  # a pattern: the requested name
    assert routes.resolve("mock-1").deployments[0].name == "mock"
    assert routes.public_names() == ["gpt"]


@pytest.mark.parametrize(
    ("text", "config_path"),
    [
        (
            "models:\n  gpt:\n    deployments:\n      - name: a\n        base_url: ftp://x\n",
            "models.gpt.deployments.0.base_url",
        ),
        (
            "models:\n  gpt:\n    deployments:\n      - name: a\n        base_url: http://x\n"
            "      - name: b\n        base_url: http://y\n        timeout_s: 0\n",
            "models.gpt.deployments.1.timeout_s",
        ),
        (
            "models:\n  gpt:\n    deployments:\n      - name: a\n        base_url: http://x\n"
            "        api_key: sk-inline\n",
            "models.gpt.deployments.0.api_key",
        ),
        (
            "models:\n  gpt:\n    deployments:\n      - name: a\n        base_url: http://x\n"
            "        provider: bedrock\n",  # a wire format Tollway does not speak
            "models.gpt.deployments.0.provider",
        ),
        (
            "models:\n  gpt:\n    deployments:\n      - name: a\n        base_url: http://x\n"
            "        provider: azure\n",
            "models.gpt.deployments.0.api_version",
        ),
        (
            "models:\n  gpt:\n    deployments:\n      - name: a\n        base_url: http://x\n"
            "        api_version: '2024-10-21'\n",
            "models.gpt.deployments.0.api_version",
        ),
        ("models:\n  gpt:\n    deployments: []\n", "models.gpt.deployments"),
        (
            "models:\n  gpt:\n    deployments:\n      - base_url: http://x\n",
            "models.gpt.deployments.0.name",
        ),
        ("models:\n  gpt: {}\n", "models.gpt.deployments"),
        ("routes: {}\n", "models"),
    ],
)
def test_load_routes_invalid_names_the_config_path(
    tmp_path: Path, text: str, config_path: str
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(text, "utf-8")
    with pytest.raises(RoutesConfigError) as info:
        load_routes(path, {})
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert f"{config_path}: " in message


PROVIDERS_YAML: Final = """
models:
  smart:
    deployments:
      - name: claude
        provider: anthropic
        base_url: https://api.anthropic.com
        model: claude-sonnet-4-5
        api_key_env: ANTHROPIC_API_KEY
      - name: gemini
        provider: gemini
        base_url: https://generativelanguage.googleapis.com
        model: gemini-2.5-pro
        api_key_env: GEMINI_API_KEY
      - name: azure
        provider: azure
        base_url: https://contoso.openai.azure.com
        model: gpt4o-prod
        api_key_env: AZURE_OPENAI_API_KEY
        api_version: 2024-10-21  # unquoted: YAML reads a date, kept as written
"""


def test_load_routes_with_every_provider_kind(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(PROVIDERS_YAML, "utf-8")
    claude, gemini, azure = load_routes(path, {}).resolve("smart").deployments
    assert (claude.provider, gemini.provider, azure.provider) == ("anthropic", "gemini", "azure")
    assert (claude.api_version, gemini.api_version, azure.api_version) == (None, None, "2024-10-21")


@pytest.mark.parametrize("text", ["models: [unclosed\n", "models:\n  gpt: {a: 1\n", "\t- x\n"])
def test_load_routes_invalid_yaml(tmp_path: Path, text: str) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(text, "utf-8")
    with pytest.raises(RoutesConfigError, match="not valid YAML"):
        load_routes(path, {})


def test_load_routes_empty_file_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text("", "utf-8")
    with pytest.raises(RoutesConfigError):
        load_routes(path, {})


def test_routes_config_is_frozen() -> None:
    deployment = ROUTES.resolve("gpt-4o").deployments[0]
    with pytest.raises(ValueError, match="frozen"):
        deployment.base_url = "http://evil.example/v1"  # type: ignore[misc]  # the point of the test
