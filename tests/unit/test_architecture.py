"""Import rules (STYLE.md "Pure core, thin shell" and "Faust stays in the wiring").

Read with `ast`, never by importing, so a violation cannot hide behind a lazy import
or an import that fails.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Final

import pytest

from schemas import topics

ROOT: Final = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES: Final = ("schemas", "ingress", "workers", "analytics", "deploy")

#: Modules that take their inputs as arguments and do no I/O.
PURE: Final = (
    "schemas/errors.py",
    "schemas/records.py",
    "schemas/openai.py",
    "schemas/topics.py",
    "ingress/ids.py",
    "ingress/admin_auth.py",
    "schemas/kafka_partitioner.py",
    "schemas/avro_writer.py",
    "ingress/admission.py",
    "ingress/embeddings.py",
    "ingress/idempotency.py",
    "workers/router/offsets.py",
    "workers/router/policy.py",
    "workers/router/fallback.py",
    "workers/router/health.py",
    "workers/router/pacing.py",
    "workers/router/lanes.py",
    "workers/router/rate_limits.py",
    "workers/router/membership.py",
    "workers/router/stream_assembly.py",
    "workers/providers/sse.py",
    "workers/providers/canonical.py",
    "workers/providers/base.py",
    "workers/providers/tokens.py",
    "workers/providers/chunks.py",
    "workers/providers/anthropic_stream.py",
    "workers/providers/gemini_stream.py",
    "workers/providers/mock/stream_plan.py",
    "workers/batches/jsonl.py",
    "workers/batches/state.py",
    "workers/batches/assembler.py",
    "workers/batches/expander.py",
    "workers/batches/progress.py",
    "workers/callbacks/signing.py",
    "workers/callbacks/ssrf.py",
    "workers/callbacks/retry.py",
    "workers/callbacks/endpoints.py",
    "workers/callbacks/events.py",
    "schemas/batch_topics.py",
    "workers/providers/mock/behaviour.py",
    "workers/providers/mock/embeddings.py",
    "workers/cost/pricing.py",
    "workers/cost/catalogue.py",
    "workers/cost/usage.py",
    "workers/cost/build_catalogue.py",
    "workers/budget/windows.py",
    "workers/budget/config.py",
    "workers/budget/ledger.py",
    "workers/budget/states.py",
    "workers/budget/freshness.py",
    "workers/budget/enforcement.py",
    "workers/budget/reservations.py",
    "workers/budget/ownership.py",
    "workers/delivery.py",
    "workers/tenancy/model.py",
    "workers/cache/canonical.py",
    "workers/cache/store.py",
    "workers/cache/wordpiece.py",
    "workers/cache/answers.py",
    "workers/telemetry/metrics_labels.py",
)
#: Third-party roots a pure module may import (besides the standard library).
ALLOWED_THIRD_PARTY: Final = frozenset({"pydantic", "orjson", "yaml"})
#: Never reachable from a pure module, not even through a `schemas` module it imports.
FORBIDDEN: Final = frozenset(
    {
        "aiokafka",
        "faust",
        "mode",
        "httpx",
        "httpx_aiohttp",
        "aiohttp",
        "starlette",
        "uvicorn",
        "uvloop",
        "clickhouse_connect",
        "chdb",
        "fastavro",
    }
)
#: Faust belongs in the faust app module and the stages' `agent.py` files only.
FAUST_WIRING_NAMES: Final = frozenset({"agent.py", "faust_app.py"})


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _imports(path: Path) -> frozenset[str]:
    """Absolute dotted names of everything `path` imports (relative imports resolved)."""
    return frozenset(_walk_imports(path))


def _walk_imports(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            yield module
            for alias in node.names:  # `from schemas import codec` imports schemas.codec
                yield f"{module}.{alias.name}"


def _project_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_inits(module: str) -> Iterator[Path]:
    """Importing a.b.c runs a/__init__.py and a/b/__init__.py too."""
    parts = module.split(".")
    for i in range(1, len(parts)):
        init = ROOT.joinpath(*parts[:i], "__init__.py")
        if init.is_file():
            yield init


@cache
def _closure(path: Path) -> frozenset[str]:
    """Every non-project import reachable from `path` through project modules."""
    seen: set[Path] = set()
    todo = [path, *_package_inits(_module_name(path))]
    external: set[str] = set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for name in _imports(current):
            if name.split(".")[0] in PROJECT_PACKAGES:
                found = _project_file(name)
                if found is not None:
                    todo.append(found)
                todo.extend(_package_inits(name))
            else:
                external.add(name.split(".")[0])
    return frozenset(external)


def _is_stdlib(root: str) -> bool:
    return root in sys.stdlib_module_names


@pytest.mark.parametrize("relative", PURE)
def test_pure_modules_import_only_stdlib_pydantic_orjson_yaml_and_schemas(relative: str) -> None:
    path = ROOT / relative
    allowed_project = {_module_name(ROOT / p) for p in PURE}
    bad = sorted(
        name
        for name in _imports(path)
        if not _is_stdlib(name.split(".")[0])
        and name.split(".")[0] not in ALLOWED_THIRD_PARTY
        and name.split(".")[0] != "schemas"
        and name not in allowed_project
        and not any(name.startswith(f"{m}.") for m in allowed_project)  # `from m import X`
    )
    assert bad == [], f"{relative} imports {bad}"


@pytest.mark.parametrize("relative", PURE)
def test_pure_modules_reach_no_io_library_even_indirectly(relative: str) -> None:
    reached = _closure(ROOT / relative)
    assert reached & FORBIDDEN == set(), f"{relative} reaches {sorted(reached & FORBIDDEN)}"
    third_party = {r for r in reached if not _is_stdlib(r)}
    assert third_party <= ALLOWED_THIRD_PARTY, f"{relative} reaches {sorted(third_party)}"


def test_fastavro_stays_in_the_codec() -> None:
    users = sorted(
        str(path.relative_to(ROOT))
        for path in _project_sources()
        if any(name.split(".")[0] == "fastavro" for name in _imports(path))
    )
    assert users == ["schemas/codec.py"]


def _project_sources() -> Iterator[Path]:
    for package in PROJECT_PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def test_faust_is_imported_only_in_faust_wiring() -> None:
    offenders = sorted(
        str(path.relative_to(ROOT))
        for path in _project_sources()
        if path.name not in FAUST_WIRING_NAMES
        and any(name.split(".")[0] in {"faust", "mode"} for name in _imports(path))
    )
    assert offenders == []


def test_the_walker_sees_what_it_should() -> None:
    """Guards the guard: the checks above would pass vacuously on an empty walk."""
    assert len(list(_project_sources())) > 20
    assert "fastavro" in _closure(ROOT / "schemas/codec.py")
    assert {"starlette", "orjson"} <= _closure(ROOT / "ingress/app.py")
    assert "schemas.routes" in _imports(ROOT / "workers/router/execution.py")


# --- topics ---------------------------------------------------------------------------


def test_topic_names_are_namespaced_and_unique() -> None:
    names = [topic.name for topic in topics.ALL_TOPICS]
    assert all(name.startswith("tollway.") for name in names), names
    assert len(names) == len(set(names))


def test_every_topic_constant_is_listed() -> None:
    declared = [v.name for v in vars(topics).values() if isinstance(v, topics.Topic)]
    assert sorted(declared) == sorted(topic.name for topic in topics.ALL_TOPICS)


@pytest.mark.parametrize("topic", topics.ALL_TOPICS, ids=lambda t: t.name)
def test_topic_shape(topic: topics.Topic) -> None:
    assert topic.partitions >= 1
    assert topic.doc
    assert all("_" not in key for key in topic.config)  # Kafka config names are dotted
    if "compact" in topic.config.get("cleanup.policy", "delete"):
        return  # a compacted topic keeps the latest record per key instead of aging out
    assert int(topic.config["retention.ms"]) > 0
