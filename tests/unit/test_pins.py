"""Pinned dependencies: every requirement of pyproject.toml is `name==version`, and
deploy/constraints.txt locks the whole tree (transitive dependencies included) to what
this environment runs (`make setup` installs with `-c deploy/constraints.txt`).

After changing a pin: `make setup`, then `.venv/bin/python -m deploy.lock >
deploy/constraints.txt` (deploy/lock.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

import pytest

from deploy.lock import PYPROJECT, canonical, closure, project_requirements, render

CONSTRAINTS: Final = Path(__file__).resolve().parents[2] / "deploy" / "constraints.txt"
PIN: Final = re.compile(
    r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[A-Za-z0-9_,-]+\])?==([0-9][A-Za-z0-9.+!]*)$"
)


def _pins(lines: list[str]) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in lines:
        match = PIN.match(line.strip())
        assert match is not None, f"not pinned with ==: {line!r}"
        name = canonical(match.group(1))
        assert name not in pins, f"listed twice: {name}"
        pins[name] = match.group(3)
    return pins


def _constraint_lines() -> list[str]:
    text = CONSTRAINTS.read_text("utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_every_requirement_in_pyproject_is_pinned_exactly() -> None:
    requirements = project_requirements(PYPROJECT)
    assert len(requirements) > 20
    pins = _pins(requirements)
    assert {"aiokafka", "faust-streaming", "schemathesis"} <= set(pins)


@pytest.mark.parametrize(
    "requirement", ["httpx>=0.28", "httpx", "httpx~=0.28.1", "httpx==0.28.*", "httpx<1"]
)
def test_a_loose_requirement_is_caught(requirement: str) -> None:
    with pytest.raises(AssertionError):
        _pins([requirement])


def test_the_lock_pins_every_line_once_and_in_order() -> None:
    lines = _constraint_lines()
    pins = _pins(lines)
    assert list(pins) == sorted(pins)
    assert "tollway" not in pins  # the project itself is not a constraint
    assert not any("@" in line or "file:" in line for line in lines)  # no local wheels


def test_pyproject_and_the_lock_agree() -> None:
    locked = _pins(_constraint_lines())
    for name, version in _pins(project_requirements(PYPROJECT)).items():
        assert locked.get(name) == version, f"{name}: pyproject {version}, lock {locked.get(name)}"


def test_the_lock_is_what_this_environment_runs() -> None:
    """The closure of pyproject's requirements at the installed versions, byte for byte."""
    assert CONSTRAINTS.read_text("utf-8") == render(closure()), (
        "deploy/constraints.txt is stale: run `.venv/bin/python -m deploy.lock > "
        "deploy/constraints.txt` (after `make setup`)"
    )
