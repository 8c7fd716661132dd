"""Import rules for analytics/ (STYLE.md "Pure core, thin shell"), read with `ast`.

The loader's record->row and batching logic, the sink contract and the report
formatting import only the standard library and `schemas`' pure modules, so they are
tested without a broker or a database.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[2]
PURE: Final = (
    "analytics/loader/rows.py",
    "analytics/loader/batching.py",
    "analytics/loader/sink.py",
    "analytics/report.py",
)
ALLOWED_PROJECT: Final = ("schemas.records", "schemas.topics", "schemas", "analytics.loader.rows")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("relative", PURE)
def test_pure_modules_import_only_the_standard_library_and_pure_project_modules(
    relative: str,
) -> None:
    bad = sorted(
        name
        for name in _imports(ROOT / relative)
        if name.split(".")[0] not in sys.stdlib_module_names
        and name != "__future__"
        and name not in ALLOWED_PROJECT
    )
    assert bad == [], f"{relative} imports {bad}"


def test_clickhouse_stays_in_the_adapters() -> None:
    users = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "analytics").rglob("*.py")
        if any(n.split(".")[0] in {"clickhouse_connect", "chdb"} for n in _imports(path))
    )
    assert users == [
        "analytics/chserver.py",  # the engine owner
        "analytics/cli.py",  # for typing only (TYPE_CHECKING)
        "analytics/connection.py",
        "analytics/loader/clickhouse.py",
        "analytics/migrate.py",  # for typing only (TYPE_CHECKING)
        "analytics/queries.py",  # for typing only (TYPE_CHECKING)
    ]
