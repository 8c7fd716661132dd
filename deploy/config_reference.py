"""Generate docs/configuration.md from the code: `make docs`.

    python -m deploy.config_reference            print the reference (Markdown)
    python -m deploy.config_reference --write    rewrite docs/configuration.md
    python -m deploy.config_reference --check    exit 1 when docs/configuration.md is stale

Three sources, all read from the code so the page cannot drift from it:

1. every `BaseSettings` subclass in Tollway's packages, found by reading the source
   (`ast`, no guessing of module names), then imported for its fields: env names
   (prefix + field name; a `validation_alias` replaces it, and with `populate_by_name`
   both are read), type, default, constraints, description;
2. variables read directly from the environment (`os.environ.get("TOLLWAY_...")`,
   `environ.get(NAME_CONSTANT, ...)`), with their default when it is a literal or a
   module constant;
3. the `${TOLLWAY_...:-default}` variables of the local Kafka script.

The output is deterministic: defaults are rendered as they are with no `TOLLWAY_*`
variable set, and paths under the repository are shown relative to it.
`known_env_vars()` is the same list as a set, for tests that check that deployment
files and docs name only variables the code reads.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final

from pydantic import AliasChoices, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
PACKAGES: Final = ("schemas", "ingress", "workers", "analytics", "deploy")
"""Where settings are looked for (the installable packages, pyproject.toml)."""
OUTPUT: Final = REPO_ROOT / "docs" / "configuration.md"
KAFKA_SCRIPT: Final = REPO_ROOT / "deploy" / "kafka" / "kafka.sh"
REGENERATE: Final = "make docs"

#: Sections in the order data flows; settings in other modules follow, by path.
FLOW_ORDER: Final = (
    "schemas/",
    "ingress/",
    "workers/router/",
    "workers/providers/",
    "workers/budget/",
    "workers/cost/",
    "analytics/",
    "workers/batches/",
    "workers/callbacks/",
)

#: Which `tollway` commands build each settings class (docs only: a class missing
#: here is still documented, without the "read by" line).
READ_BY: Final[dict[str, tuple[str, ...]]] = {
    "KafkaSettings": (
        "ingress",
        "router",
        "cost-processor",
        "budget-processor",
        "loader",
        "batches-worker",
        "callbacks",
        "topics",
        "webhooks replay",
    ),
    "IngressSettings": ("ingress",),
    "IdempotencySettings": ("ingress",),
    "RouterSettings": ("router",),
    "EnforcementSettings": ("ingress", "router", "batches-worker"),
    "BudgetSettings": ("budget-processor",),
    "CostSettings": ("cost-processor", "router", "batches-worker"),
    "AnalyticsSettings": (
        "loader",
        "ingress",
        "analytics serve",
        "analytics migrate",
        "spend",
        "usage",
        "sql",
    ),
    "BatchesSettings": ("batches-worker", "ingress"),
    "CallbacksSettings": ("callbacks",),
    "CacheSettings": ("router",),
    "TenancySettings": ("ingress", "router"),
}

#: Meanings of fields whose settings class gives no description (keyed by env name;
#: a test checks that every key is still a variable the code reads).
FALLBACK_DESCRIPTIONS: Final[dict[str, str]] = {
    "TOLLWAY_KAFKA_REQUEST_TIMEOUT_MS": "Kafka client request timeout; a publish that takes "
    "longer answers 503 at the ingress.",
    "TOLLWAY_INGRESS_HOST": "Interface the ingress listens on (0.0.0.0 in a container).",
    "TOLLWAY_INGRESS_PORT": "Port the ingress listens on.",
    "TOLLWAY_ROUTES_FILE": "YAML routing table (schemas/routes.py); unset = the built-in "
    "catalogue. Must be the same file for ingress, routers and batch workers.",
    "TOLLWAY_ROUTER_GROUP_ID": "Consumer group of the routers.",
    "TOLLWAY_ROUTER_COMMIT_INTERVAL_MS": "How often finished offsets are committed.",
    "TOLLWAY_ROUTER_MAX_POLL_INTERVAL_MS": "Kafka max.poll.interval.ms of the router consumer.",
    "TOLLWAY_ROUTER_SESSION_TIMEOUT_MS": "Kafka session timeout: a dead router's partitions "
    "move after this.",
    "TOLLWAY_BUDGET_PRUNE_EVERY_S": "How often expired buckets and dedup slots are dropped.",
    "TOLLWAY_BUDGET_WEB_PORT": "faust's web server; unset = off.",
    "TOLLWAY_BUDGET_SESSION_TIMEOUT_S": "Kafka session timeout of the budget processor.",
    "TOLLWAY_BUDGET_COMMIT_INTERVAL_S": "faust offset commit interval.",
    "TOLLWAY_BUDGET_REPLICATION_FACTOR": "Replication of the topics the processor creates "
    "itself (its faust leader and changelog topics); 3 on a production cluster.",
    "TOLLWAY_COST_SESSION_TIMEOUT_S": "Kafka session timeout of the cost processor.",
    "TOLLWAY_COST_COMMIT_INTERVAL_S": "faust offset commit interval.",
    "TOLLWAY_COST_REPLICATION_FACTOR": "Replication of the topics the processor creates itself "
    "(its faust leader topic); 3 on a production cluster.",
    "TOLLWAY_LOG_LEVEL": "Log level (DEBUG, INFO, WARNING, ...).",
    "TOLLWAY_ANALYTICS_DATABASE": "ClickHouse database of Tollway's tables.",
    "TOLLWAY_ANALYTICS_SERVER_HOST": "`tollway analytics serve`: interface to listen on.",
    "TOLLWAY_ANALYTICS_SERVER_PORT": "`tollway analytics serve`: port (ClickHouse HTTP).",
    "TOLLWAY_ANALYTICS_DATA_PATH": "`tollway analytics serve`: the chdb data directory "
    "(one process per path).",
    "TOLLWAY_ANALYTICS_GROUP_ID": "Consumer group of the loaders.",
    "TOLLWAY_ANALYTICS_RETRY_MAX_BACKOFF_S": "Longest wait between two insert retries.",
    "TOLLWAY_ANALYTICS_SESSION_TIMEOUT_MS": "Kafka session timeout of the loader.",
    "TOLLWAY_BATCHES_GROUP_ID": "Consumer group of the batch workers.",
    "TOLLWAY_BATCHES_SESSION_TIMEOUT_MS": "Kafka session timeout of the batch workers.",
    "TOLLWAY_CALLBACKS_GROUP_ID": "Consumer group of the dispatcher (its retry lane: "
    "`<group>-retry`).",
    "TOLLWAY_CALLBACKS_RETRY_BASE_S": "First retry delay of a failed webhook delivery.",
    "TOLLWAY_CALLBACKS_RETRY_FACTOR": "Backoff factor between delivery retries.",
    "TOLLWAY_CALLBACKS_RETRY_MAX_DELAY_S": "Longest delay between two delivery attempts.",
    "TOLLWAY_CALLBACKS_RETRY_GIVE_UP_AFTER_S": "After this long a delivery goes to "
    "tollway.callbacks.dead.",
    "TOLLWAY_CALLBACKS_RETRY_JITTER": "Random share added to or taken from each delay.",
    "TOLLWAY_CALLBACKS_COMMIT_INTERVAL_MS": "How often finished offsets are committed.",
}

#: Meanings of variables read directly from the environment (not through settings).
DIRECT_DESCRIPTIONS: Final[dict[str, str]] = {
    "TOLLWAY_LOG_LEVEL": "Log level of every `tollway` command (DEBUG, INFO, WARNING, ...).",
    "TOLLWAY_STATE_DIR": "Local state of `tollway up` (logs, webhooks file, files, faust data).",
    "TOLLWAY_MOCK_URL": "The mock provider used by the built-in catalogue (no routes file).",
    "TOLLWAY_PROVIDER_HTTP_CLIENT": "`lean` (default: the raw-asyncio client for "
    "non-streaming provider calls, aiohttp for streams) or `aiohttp` for every call "
    "(docs/decisions/0012).",
    "TOLLWAY_URL": "`tollway batch ...`: the ingress to talk to (or --url).",
    "TOLLWAY_API_KEY": "`tollway batch ...`: sent as `Authorization: Bearer` when set.",
    "TOLLWAY_MOCK_FAST_HOST": "The benchmark's raw-asyncio mock (fast_server.py): interface.",
    "TOLLWAY_MOCK_FAST_PORT": "The benchmark's raw-asyncio mock (fast_server.py): port.",
    "OPENAI_API_KEY": "Set: the built-in catalogue routes `gpt-*` to OpenAI (and `tollway up` "
    "starts no mock). Any routes file names its own key variables (`api_key_env`).",
    "TOLLWAY_LOG_FORMAT": "`json` or `text`; unset: json for the long-running processes, "
    "text for interactive commands (docs/observability-tracing.md).",
    "TOLLWAY_OTEL_EXPORTER": "Tracing: `none` (unset: off), `otlp` (to "
    "OTEL_EXPORTER_OTLP_ENDPOINT) or `jsonl:<path>` (docs/observability-tracing.md).",
}

_ENV_NAME: Final = re.compile(r"^[A-Z][A-Z0-9_]*$")
_SHELL_VAR: Final = re.compile(r"\$\{(TOLLWAY_[A-Z0-9_]+):-([^}]*)\}")
_SHELL_DOC: Final = re.compile(r"^#\s+(TOLLWAY_[A-Z0-9_]+)\s+(.+?)\s*(?:\(default [^)]*\))?$")


@dataclass(frozen=True, slots=True)
class Variable:
    """One environment variable and what the code does with it."""

    name: str
    type: str
    default: str
    description: str
    also: tuple[str, ...] = ()
    """Other names read for the same value."""
    constraints: str = ""
    secret: bool = False
    where: str = ""
    """Where it is read (a file), for variables read outside settings classes."""


@dataclass(frozen=True, slots=True)
class SettingsGroup:
    """One settings class: its variables in declaration order."""

    class_name: str
    path: str
    doc: str
    variables: tuple[Variable, ...]


# --- discovery ----------------------------------------------------------------------


@cache
def _sources() -> tuple[tuple[str, ast.Module], ...]:
    """(path relative to the repo, parsed module) of every package source file; read once."""
    found = []
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            rel = path.relative_to(REPO_ROOT).as_posix()
            found.append((rel, ast.parse(path.read_text("utf-8"), filename=rel)))
    return tuple(found)


def _is_settings_class(node: ast.ClassDef) -> bool:
    for base in node.bases:
        name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
        if name == "BaseSettings":
            return True
    return False


def settings_classes() -> list[tuple[str, type[BaseSettings]]]:
    """(source path, class) of every BaseSettings subclass, in FLOW_ORDER then by path."""
    found: list[tuple[str, type[BaseSettings]]] = []
    for rel, tree in _sources():
        names = [n.name for n in tree.body if isinstance(n, ast.ClassDef) and _is_settings_class(n)]
        if names:
            module = importlib.import_module(rel.removesuffix(".py").replace("/", "."))
            found.extend((rel, getattr(module, name)) for name in names)

    def rank(item: tuple[str, type[BaseSettings]]) -> tuple[int, str]:
        path = item[0]
        order = next((i for i, p in enumerate(FLOW_ORDER) if path.startswith(p)), len(FLOW_ORDER))
        return order, path

    return sorted(found, key=rank)


def env_names(cls: type[BaseSettings], name: str, field: FieldInfo) -> tuple[str, ...]:
    """The environment variables pydantic-settings reads for a field, primary first."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    alias = field.validation_alias if field.validation_alias is not None else field.alias
    names: list[str] = []
    if isinstance(alias, str):
        names.append(alias)
    elif isinstance(alias, AliasChoices):
        names.extend(c for c in alias.choices if isinstance(c, str))
    if not names or cls.model_config.get("populate_by_name"):
        names.append(prefix + name)
    return tuple(dict.fromkeys(n.upper() for n in names))


_CONTAINERS: Final[dict[Any, str]] = {
    tuple: "JSON list",
    list: "JSON list",
    set: "JSON list",
    frozenset: "JSON list",
    dict: "JSON object",
}
_PLAIN_NAMES: Final[dict[Any, str]] = {type(None): "None", SecretStr: "secret str"}


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin in _CONTAINERS:
        kind = _CONTAINERS[origin]
        return f"{kind} of {_type_name(args[0])}" if kind == "JSON list" and args else kind
    plain = _PLAIN_NAMES.get(annotation)
    return plain if plain is not None else str(getattr(annotation, "__name__", annotation))


@contextlib.contextmanager
def _without_tollway_env() -> Iterator[None]:
    """Computed defaults as they are on a machine with no TOLLWAY_* variable set."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("TOLLWAY_")}
    for key in saved:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(saved)


def _show_path(value: Path) -> str:
    if value.is_absolute() and value.is_relative_to(REPO_ROOT):
        return f"`<install dir>/{value.relative_to(REPO_ROOT).as_posix()}`"
    return f"`{value.as_posix()}`"


def _show(value: object) -> str:
    """A default as the docs show it (code-quoted; `unset` for None)."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, Path):
        return _show_path(value)
    if value is None or value == "":
        return "unset" if value is None else "empty"
    if isinstance(value, set | frozenset | tuple):
        value = sorted(value) if isinstance(value, set | frozenset) else list(value)
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, int) and abs(value) >= 100_000:
        text = f"{value:_}".replace("_", ",")
    else:
        text = str(value)
    return f"`{text}`"


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        with _without_tollway_env():
            return _show(field.default_factory())  # type: ignore[call-arg]  # no-arg factories
    if field.default is PydanticUndefined:
        return "required"
    return _show(field.default)


_BOUNDS: Final = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def _constraints(field: FieldInfo) -> str:
    parts: list[str] = []
    for item in field.metadata:
        for attr, symbol in _BOUNDS:
            bound = getattr(item, attr, None)
            if bound is not None:
                parts.append(f"{symbol} {bound:_}".replace("_", ","))
        pattern = getattr(item, "pattern", None)
        if pattern is not None:
            parts.append(f"matches `{pattern}`")
    return ", ".join(parts)


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


@cache
def settings_groups() -> tuple[SettingsGroup, ...]:
    groups = []
    for path, cls in settings_classes():
        variables = []
        for name, field in cls.model_fields.items():
            names = env_names(cls, name, field)
            description = field.description or FALLBACK_DESCRIPTIONS.get(names[0], "")
            variables.append(
                Variable(
                    name=names[0],
                    also=names[1:],
                    type=_type_name(field.annotation),
                    default=_default(field),
                    constraints=_constraints(field),
                    description=" ".join(description.split()),
                    secret=_is_secret(field.annotation),
                )
            )
        doc = " ".join((cls.__doc__ or "").split())
        groups.append(SettingsGroup(cls.__name__, path, doc, tuple(variables)))
    return tuple(groups)


def _module_constants(tree: ast.Module) -> dict[str, object]:
    constants: dict[str, object] = {}
    for node in tree.body:
        target, value = None, None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
            constants[target.id] = value.value
    return constants


def _literal(node: ast.expr, constants: dict[str, object]) -> object:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def _reads_environment(func: ast.expr) -> bool:
    """`os.getenv`, or `.get` on something named like the environment."""
    if isinstance(func, ast.Attribute) and func.attr == "getenv":
        return True
    if not (isinstance(func, ast.Attribute) and func.attr == "get"):
        return False
    return "environ" in ast.unparse(func.value)


def direct_reads(source: str) -> list[tuple[str, object]]:
    """(name, default) of every environment variable a module reads directly.

    Recognised: `os.environ.get(NAME, default)`, `environ.get(...)` on any mapping named
    like the environment, `os.getenv`, `os.environ[NAME]` and `NAME in os.environ`,
    where NAME is a literal or a module constant. Pure: takes the source text."""
    return _direct_reads(ast.parse(source))


def _direct_reads(tree: ast.Module) -> list[tuple[str, object]]:
    constants = _module_constants(tree)
    found: list[tuple[str, object]] = []
    for node in ast.walk(tree):
        name: object = None
        default: object = None
        if isinstance(node, ast.Call) and node.args and _reads_environment(node.func):
            name = _literal(node.args[0], constants)
            default = _literal(node.args[1], constants) if len(node.args) > 1 else None
        elif isinstance(node, ast.Subscript) and "environ" in ast.unparse(node.value):
            name = _literal(node.slice, constants)
        elif (
            isinstance(node, ast.Compare)
            and any(isinstance(op, ast.In | ast.NotIn) for op in node.ops)
            and "environ" in ast.unparse(node.comparators[0])
        ):
            name = _literal(node.left, constants)
        if isinstance(name, str) and _ENV_NAME.match(name):
            found.append((name, default))
    return found


def direct_variables(covered: frozenset[str] = frozenset()) -> list[Variable]:
    """Variables read outside settings classes, one entry per name (first default found).

    Names in `covered` (settings fields, documented with their class) are left out unless
    DIRECT_DESCRIPTIONS says more about them (TOLLWAY_LOG_LEVEL: every command reads it)."""
    defaults: dict[str, object] = {}
    files: dict[str, set[str]] = {}
    for rel, tree in _sources():
        for name, default in _direct_reads(tree):
            if name in covered and name not in DIRECT_DESCRIPTIONS:
                continue
            files.setdefault(name, set()).add(rel)
            if defaults.get(name) is None:
                defaults[name] = default
    return [
        Variable(
            name=name,
            type="str",
            default=_show(defaults[name]),
            description=DIRECT_DESCRIPTIONS.get(name, ""),
            where=", ".join(sorted(files[name])),
        )
        for name in sorted(files)
    ]


def script_variables(script: str) -> list[Variable]:
    """`${TOLLWAY_X:-default}` variables of a shell script, described by its header comment."""
    docs = {m.group(1): m.group(2).strip() for m in map(_SHELL_DOC.match, script.splitlines()) if m}
    found: dict[str, Variable] = {}
    for name, default in _SHELL_VAR.findall(script):
        found.setdefault(
            name, Variable(name, "str", f"`{default}`", " ".join(docs.get(name, "").split()))
        )
    return sorted(found.values(), key=lambda v: v.name)


def _settings_names(groups: tuple[SettingsGroup, ...]) -> frozenset[str]:
    return frozenset(n for g in groups for v in g.variables for n in (v.name, *v.also))


@cache
def known_env_vars() -> frozenset[str]:
    """Every variable name the code reads: settings fields, direct reads, the Kafka script."""
    names = set(_settings_names(settings_groups()))
    names.update(v.name for v in direct_variables())
    names.update(v.name for v in script_variables(KAFKA_SCRIPT.read_text("utf-8")))
    return frozenset(names)


# --- rendering ----------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|") or "-"


def _settings_section(group: SettingsGroup) -> list[str]:
    lines = [f"## `{group.class_name}` ({group.path})", ""]
    if group.doc:
        lines += [group.doc, ""]
    readers = READ_BY.get(group.class_name)
    if readers:
        lines += ["Read by: " + ", ".join(f"`tollway {r}`" for r in readers) + ".", ""]
    lines += ["| variable | type | default | meaning |", "|---|---|---|---|"]
    for v in group.variables:
        name = f"`{v.name}`" + "".join(f"<br>or `{a}`" for a in v.also)
        kind = v.type + (f" ({v.constraints})" if v.constraints else "")
        meaning = v.description + (" **Secret.**" if v.secret else "")
        lines.append(f"| {name} | {_cell(kind)} | {_cell(v.default)} | {_cell(meaning.strip())} |")
    return [*lines, ""]


def render() -> str:
    """The whole of docs/configuration.md."""
    groups = settings_groups()
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from the code by `python -m deploy.config_reference --write` "
        f"(`{REGENERATE}`). Do not edit by hand: a unit test fails when this page is stale. -->",
        "",
        "Every Tollway process reads its settings from the environment once, at start, into "
        "a frozen settings object; an invalid value stops the process with the variable's "
        "name (secrets are never echoed). Names are case-insensitive. List values are JSON "
        '(`["127.0.0.0/8"]`). Defaults are what a process uses when the variable is unset; '
        "`<install dir>` is the directory that holds the `analytics` package (the repository "
        "in a checkout).",
        "",
        "Sections, in the order data flows:",
        "",
    ]
    lines += [f"- [`{g.class_name}`](#{_anchor(g)}) ({g.path})" for g in groups]
    lines += [
        "- [Variables read directly](#variables-read-directly)",
        "- [The local Kafka script](#the-local-kafka-script)",
        "",
    ]
    for group in groups:
        lines += _settings_section(group)
    lines += [
        "## Variables read directly",
        "",
        "Read with `os.environ` where they are used, not through a settings class.",
        "",
        "| variable | default | read in | meaning |",
        "|---|---|---|---|",
    ]
    for v in direct_variables(_settings_names(groups)):
        lines.append(f"| `{v.name}` | {_cell(v.default)} | {v.where} | {_cell(v.description)} |")
    lines += [
        "",
        "Provider keys: a routes file names the variable that holds each deployment's key "
        "(`api_key_env`, schemas/routes.py); the routers read those variables.",
        "",
        "## The local Kafka script",
        "",
        "`deploy/kafka/kafka.sh` (used by `tollway up`, `tollway kafka ...` and `make test`), "
        "not by the Tollway processes:",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for v in script_variables(KAFKA_SCRIPT.read_text("utf-8")):
        lines.append(f"| `{v.name}` | {_cell(v.default)} | {_cell(v.description)} |")
    return "\n".join([*lines, ""])


def _anchor(group: SettingsGroup) -> str:
    """GitHub's heading anchor of a settings section."""
    heading = f"{group.class_name} ({group.path})".lower()
    return re.sub(r"[^a-z0-9 _-]", "", heading).replace(" ", "-")


def generator_main(
    argv: list[str] | None, description: str, output: Path, render_text: Callable[[], str]
) -> int:
    """The command line of a generated file: print it, `--write` it, or `--check` it."""
    cli = argparse.ArgumentParser(description=description)
    mode = cli.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"rewrite {output.name}")
    mode.add_argument("--check", action="store_true", help=f"exit 1 if {output.name} is stale")
    args = cli.parse_args(argv)
    text = render_text()
    shown = output.relative_to(REPO_ROOT)
    if args.write:
        output.write_text(text, "utf-8")
        print(f"wrote {shown}")
        return 0
    if args.check:
        if (output.read_text("utf-8") if output.exists() else "") != text:
            print(f"{shown} is out of date: run `{REGENERATE}`")
            return 1
        return 0
    sys.stdout.write(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    return generator_main(argv, __doc__.split("\n", 1)[0], OUTPUT, render)


if __name__ == "__main__":
    sys.exit(main())
