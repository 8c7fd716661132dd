"""docs/configuration.md is generated from the code and current; the docs name only what exists.

The generator (deploy/config_reference.py) must derive the same environment names as
pydantic-settings reads (checked by setting them), find direct reads in every form the
code uses, and its hand-written descriptions must name live variables. The operator
docs (architecture, runbooks, upgrading, the Kubernetes README) may name only
`tollway` commands that parse and variables the code reads.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Final

import pytest
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from analytics.settings import AnalyticsSettings
from deploy import config_reference, topics_manifest
from deploy.cli import parser
from ingress.settings import IngressSettings
from workers.budget.settings import BudgetSettings
from workers.cost.settings import CostSettings
from workers.router.settings import RouterSettings

ROOT: Final = Path(__file__).resolve().parents[2]
OPERATOR_DOCS: Final = (
    "docs/architecture.md",
    "docs/runbooks.md",
    "docs/upgrading.md",
    "deploy/k8s/README.md",
)


def test_configuration_md_is_current() -> None:
    current = config_reference.OUTPUT.read_text("utf-8")
    assert current == config_reference.render(), (
        "docs/configuration.md is out of date: run `make docs` "
        "(python -m deploy.config_reference --write)"
    )


def test_check_mode_reports_a_stale_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("old\n", "utf-8")
    monkeypatch.setattr(config_reference, "REPO_ROOT", tmp_path)
    assert config_reference.generator_main(["--check"], "", stale, lambda: "new\n") == 1
    assert "run `make docs`" in capsys.readouterr().out
    assert config_reference.generator_main(["--write"], "", stale, lambda: "new\n") == 0
    assert stale.read_text("utf-8") == "new\n"
    assert config_reference.generator_main(["--check"], "", stale, lambda: "new\n") == 0


@pytest.mark.parametrize(
    ("variable", "value", "settings", "field", "expected"),
    [
        ("TOLLWAY_INGRESS_PORT", "9001", IngressSettings, "port", 9001),  # prefix + name
        ("TOLLWAY_ROUTES_FILE", "/r.yaml", RouterSettings, "routes_file", Path("/r.yaml")),
        # populate_by_name: the alias and the prefixed name are both read
        ("TOLLWAY_INGRESS_ROUTES_FILE", "/i.yaml", IngressSettings, "routes_file", Path("/i.yaml")),
        ("CLICKHOUSE_URL", "http://h:1", AnalyticsSettings, "clickhouse_url", "http://h:1"),
        (
            "TOLLWAY_ANALYTICS_CLICKHOUSE_URL",
            "http://h:2",
            AnalyticsSettings,
            "clickhouse_url",
            "http://h:2",
        ),
        ("TOLLWAY_BUDGETS_FILE", "/b.yaml", BudgetSettings, "budgets_file", Path("/b.yaml")),
        ("TOLLWAY_LOG_LEVEL", "DEBUG", CostSettings, "log_level", "DEBUG"),
    ],
)
def test_derived_names_are_the_ones_pydantic_settings_reads(
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    settings: type[BaseSettings],
    field: str,
    expected: object,
) -> None:
    names = config_reference.env_names(settings, field, settings.model_fields[field])
    assert variable in names
    monkeypatch.setenv(variable, value)
    got = getattr(settings(), field)
    assert (got.get_secret_value() if isinstance(got, SecretStr) else got) == expected


def test_an_alias_without_populate_by_name_hides_the_prefixed_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    field = RouterSettings.model_fields["routes_file"]
    assert config_reference.env_names(RouterSettings, "routes_file", field) == (
        "TOLLWAY_ROUTES_FILE",
    )
    monkeypatch.delenv("TOLLWAY_ROUTES_FILE", raising=False)
    monkeypatch.setenv("TOLLWAY_ROUTER_ROUTES_FILE", "/ignored.yaml")
    assert RouterSettings().routes_file is None


def test_direct_reads_are_found_in_every_form() -> None:
    source = """
import os
NAME: Final = "TOLLWAY_NAMED"
DEFAULT = "d"
os.environ.get("TOLLWAY_A", "1")
environ.get(NAME, DEFAULT)
os.getenv("TOLLWAY_B")
os.environ["TOLLWAY_C"]
if "TOLLWAY_D" not in os.environ: pass
{**os.environ, **extra}.get("TOLLWAY_E")
settings.get("TOLLWAY_NOT_ENV")
environ.get(deployment.api_key_env)
"""
    expected = [
        ("TOLLWAY_A", "1"),
        ("TOLLWAY_B", None),
        ("TOLLWAY_C", None),
        ("TOLLWAY_D", None),
        ("TOLLWAY_E", None),
        ("TOLLWAY_NAMED", "d"),
    ]
    assert sorted(config_reference.direct_reads(source), key=str) == expected


def test_script_variables_with_defaults_and_descriptions() -> None:
    script = (
        "#   TOLLWAY_X_PORT   broker port (default 1)\n"
        'port="${TOLLWAY_X_PORT:-1}"\n'
        'dir="${TOLLWAY_X_DIR:-/tmp/x}"\n'
    )
    found = {v.name: v for v in config_reference.script_variables(script)}
    assert found["TOLLWAY_X_PORT"].default == "`1`"
    assert found["TOLLWAY_X_PORT"].description == "broker port"
    assert found["TOLLWAY_X_DIR"].default == "`/tmp/x`"
    real = {
        v.name: v
        for v in config_reference.script_variables(config_reference.KAFKA_SCRIPT.read_text("utf-8"))
    }
    assert real["TOLLWAY_KAFKA_PORT"].default == "`19092`"


def test_known_variables_cover_settings_direct_reads_and_the_kafka_script() -> None:
    known = config_reference.known_env_vars()
    assert {
        "TOLLWAY_KAFKA_BOOTSTRAP",  # a settings field
        "TOLLWAY_ROUTES_FILE",  # an alias
        "CLICKHOUSE_URL",  # an alias without the prefix
        "TOLLWAY_MOCK_URL",  # read directly
        "TOLLWAY_PROVIDER_HTTP_CLIENT",  # read directly through a module constant
        "TOLLWAY_KAFKA_PORT",  # the Kafka script
    } <= known
    assert "TOLLWAY_NO_SUCH_THING" not in known


def test_hand_written_descriptions_name_live_variables_and_classes() -> None:
    known = config_reference.known_env_vars()
    stale = sorted(
        (set(config_reference.FALLBACK_DESCRIPTIONS) | set(config_reference.DIRECT_DESCRIPTIONS))
        - known
    )
    assert not stale, f"deploy/config_reference.py describes variables no code reads: {stale}"
    classes = {cls.__name__ for _, cls in config_reference.settings_classes()}
    assert set(config_reference.READ_BY) <= classes
    commands = subcommands(parser())
    for readers in config_reference.READ_BY.values():
        assert set(readers) <= commands, sorted(set(readers) - commands)


def subcommands(cli: argparse.ArgumentParser, prefix: str = "") -> set[str]:
    """Every command path of the `tollway` parser: `router`, `analytics serve`, ..."""
    found: set[str] = set()
    for action in cli._actions:  # argparse offers no public walk of its subparsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                path = f"{prefix}{name}"
                found |= {path} | subcommands(sub, f"{path} ")
    return found


def test_every_settings_class_is_documented() -> None:
    page = config_reference.OUTPUT.read_text("utf-8")
    for path, cls in config_reference.settings_classes():
        assert f"`{cls.__name__}` ({path})" in page


# --- the operator docs name only what exists -------------------------------------


def doc_commands(text: str) -> list[str]:
    """`tollway ...` in inline code spans and at the start of code-block lines."""
    found = [m.group(1) for m in re.finditer(r"`tollway ([^`]+)`", text)]
    in_block = False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            in_block = not in_block
        elif in_block and line.strip().startswith("tollway "):
            found.append(line.strip().removeprefix("tollway ").split("#")[0])
    return found


@pytest.mark.parametrize("doc", OPERATOR_DOCS)
def test_docs_name_only_commands_that_parse(doc: str) -> None:
    text = (ROOT / doc).read_text("utf-8")
    commands = doc_commands(text)
    assert commands, f"{doc} names no command: is the extraction broken?"
    for command in commands:
        try:
            parser().parse_args(shlex.split(command))
        except SystemExit as exc:
            pytest.fail(f"{doc}: `tollway {command}` does not parse ({exc})")


@pytest.mark.parametrize("doc", [*OPERATOR_DOCS, "README.md", "deploy/docker/compose.yaml"])
def test_docs_name_only_variables_the_code_reads(doc: str) -> None:
    # bench/ is not a package: its variables (docstrings, f-string prefixes) count as named.
    bench = "".join(p.read_text("utf-8") for p in sorted((ROOT / "bench").glob("*.py")))
    known = config_reference.known_env_vars() | set(re.findall(r"TOLLWAY_[A-Z0-9_]+", bench))
    text = (ROOT / doc).read_text("utf-8")
    unknown = []
    for match in re.finditer(r"\b(TOLLWAY_[A-Z0-9_]*)(\*)?", text):
        name, star = match.groups()
        if star or name.endswith("_"):
            if not any(k.startswith(name) for k in known):
                unknown.append(name + "*")
        elif name not in known:
            unknown.append(name)
    assert not unknown, f"{doc} names variables no code reads: {sorted(set(unknown))}"


def test_architecture_lists_every_topic_with_its_partitions() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text("utf-8")
    rows = dict(re.findall(r"^\| `(tollway\.[a-z.-]+)` \| (\d+) \|", text, re.MULTILINE))
    for topic in topics_manifest.wanted_topics():
        assert topic.name in rows, f"docs/architecture.md: add {topic.name} to the topics table"
        assert int(rows[topic.name]) == topic.partitions, f"docs/architecture.md: {topic.name}"
