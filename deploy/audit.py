"""Offline dependency audit: the pins of `deploy/constraints.txt` against a vendored
snapshot of PyPA's advisory database (OSV records), run by `make audit` (and so by
`make test`).

    .venv/bin/python -m deploy.audit                       # exit 0: no pin affected, 1: some are
    .venv/bin/python -m deploy.audit --refresh PATH        # rebuild deploy/osv-advisories.json

Why offline: the machines that run the tests cannot reach pip-audit's services or the
OSV API, so the advisories live in the repository (`deploy/osv-advisories.json`, only
those of pinned packages) with the commit and date of the snapshot they came from. The
audit is therefore as old as that snapshot, and it prints its age on every run
(docs/decisions/0024). `--refresh` reads a checkout (or bare git directory) of
pypa/advisory-database at its HEAD commit with `git`, keeps the advisories of the
packages currently pinned and records that list: a pin whose package the snapshot was
not built for fails the audit until the file is refreshed, so a new dependency is
never passed unexamined.

Matching (deploy/osv.py) follows the OSV schema's evaluation: ecosystem `PyPI`, PEP 503
names, the explicit `versions` list and `ECOSYSTEM` ranges in PEP 440 order; `GIT` and
`SEMVER` ranges are not evaluated (osv.py says why) and withdrawn advisories are skipped.

The pure part (pins, findings, the report, the vendored file's content) takes its inputs
as arguments; the I/O (files, `git`, the clock) is in the functions after the `I/O`
marker below.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

from packaging.version import Version

from deploy.lock import canonical
from deploy.osv import Advisory, AdvisoryFormatError, affects, fixed_versions, parse_advisory

ROOT: Final = Path(__file__).resolve().parent.parent
CONSTRAINTS: Final = ROOT / "deploy" / "constraints.txt"
ADVISORIES: Final = ROOT / "deploy" / "osv-advisories.json"

SOURCE_NAME: Final = "PyPA Advisory Database (pypa/advisory-database)"
SOURCE_URL: Final = "https://github.com/pypa/advisory-database"
LICENCE: Final = "CC-BY-4.0"
LICENCE_URL: Final = "https://creativecommons.org/licenses/by/4.0/"
ATTRIBUTION: Final = (
    "Advisories from the PyPA Advisory Database (https://github.com/pypa/advisory-database), "
    "by its contributors, licensed under CC BY 4.0 "
    "(https://creativecommons.org/licenses/by/4.0/)."
)
CHANGES: Final = (
    "Converted from YAML to JSON by `python -m deploy.audit --refresh`; only the advisories "
    "of Tollway's pinned packages are kept, and of each only id, aliases, summary, dates, "
    "severity and affected packages, ranges and versions (details and references are "
    "dropped: look an advisory up by its id)."
)
#: Fields of an OSV record kept in the vendored file (the rest is dropped, CHANGES says so).
KEPT_FIELDS: Final = ("id", "aliases", "summary", "published", "modified", "withdrawn", "severity")

# ---------------------------------------------------------------------------- pure part


@dataclass(frozen=True)
class Pin:
    """One exact pin of the lock."""

    name: str  #: PEP 503 normalised
    version: str  #: as written after `==`


_PIN_LINE: Final = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(\S+)$")


def parse_constraints(text: str) -> tuple[Pin, ...]:
    """The pins of a constraints file (`name==version` per line, `#` comments), sorted by
    name. Anything but an exact pin is an error: a range cannot be audited offline."""
    pins: dict[str, Pin] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", maxsplit=1)[0].strip()
        if not line:
            continue
        match = _PIN_LINE.match(line)
        if match is None:
            raise ValueError(f"line {number}: not an exact pin `name==version`: {raw!r}")
        name = canonical(match.group(1))
        if name in pins:
            raise ValueError(f"line {number}: {name} is pinned twice")
        pins[name] = Pin(name, match.group(2))
    return tuple(pins[name] for name in sorted(pins))


@dataclass(frozen=True)
class Finding:
    """A pinned version that an advisory affects."""

    pin: Pin
    advisory_id: str
    aliases: tuple[str, ...]
    summary: str
    fixed: tuple[str, ...]  #: every fixed version of the advisory's ranges, PEP 440 order

    @property
    def upgrade_to(self) -> str | None:
        """The lowest fixed version above the pin, if any."""
        pinned = Version(self.pin.version)
        return next((f for f in self.fixed if Version(f) > pinned), None)


def findings(pins: Iterable[Pin], advisories: Iterable[Advisory]) -> tuple[Finding, ...]:
    """Every (pin, advisory) pair where the pin is affected; withdrawn advisories are
    skipped. Sorted by package, then advisory id."""
    by_name = {pin.name: pin for pin in pins}
    found: list[Finding] = []
    for advisory in advisories:
        if advisory.withdrawn is not None:
            continue
        for entry in advisory.affected:
            pin = by_name.get(entry.name) if entry.ecosystem == "PyPI" else None
            if pin is not None and affects(entry, pin.name, pin.version):
                found.append(
                    Finding(
                        pin, advisory.id, advisory.aliases, advisory.summary, fixed_versions(entry)
                    )
                )
                break  # one finding per advisory and pin
    return tuple(sorted(found, key=lambda f: (f.pin.name, f.advisory_id)))


@dataclass(frozen=True)
class Snapshot:
    """The vendored advisories and where they came from."""

    commit: str
    commit_date: datetime  #: the snapshot's date: its source commit's
    packages: frozenset[str]  #: the pinned names the refresh selected advisories for
    advisories: tuple[Advisory, ...]


def parse_snapshot(document: Mapping[str, Any]) -> Snapshot:
    """The vendored file's JSON object -> `Snapshot`."""
    try:
        source = document["source"]
        commit_date = datetime.fromisoformat(source["commit_date"])
        packages = frozenset(canonical(p) for p in document["packages"])
        raw_advisories = document["advisories"]
        commit = str(source["commit"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AdvisoryFormatError(f"not a vendored advisory file: {exc!r}") from exc
    return Snapshot(commit, commit_date, packages, tuple(parse_advisory(a) for a in raw_advisories))


@dataclass(frozen=True)
class AuditResult:
    """What one run found."""

    findings: tuple[Finding, ...]
    uncovered: tuple[str, ...]  #: pinned names the snapshot was not built for
    pins_checked: int
    advisories_checked: int  #: advisories in the snapshot, withdrawn ones excluded
    withdrawn: int

    @property
    def passed(self) -> bool:
        return not self.findings and not self.uncovered


def audit(pins: Sequence[Pin], snapshot: Snapshot) -> AuditResult:
    """Check every pin against the snapshot."""
    withdrawn = sum(1 for a in snapshot.advisories if a.withdrawn is not None)
    return AuditResult(
        findings=findings(pins, snapshot.advisories),
        uncovered=tuple(p.name for p in pins if p.name not in snapshot.packages),
        pins_checked=len(pins),
        advisories_checked=len(snapshot.advisories) - withdrawn,
        withdrawn=withdrawn,
    )


def render_report(result: AuditResult, snapshot: Snapshot, today: date) -> str:
    """The text `python -m deploy.audit` prints."""
    age_days = (today - snapshot.commit_date.date()).days
    lines = [
        f"advisories: {SOURCE_NAME} at {snapshot.commit[:12]}, "
        f"snapshot of {snapshot.commit_date.date().isoformat()} ({age_days} days old; "
        "advisories published since are not known here, docs/decisions/0024)",
        f"checked {result.pins_checked} pins against {result.advisories_checked} advisories "
        f"({result.withdrawn} withdrawn ones ignored)",
    ]
    for finding in result.findings:
        also = f" ({', '.join(finding.aliases)})" if finding.aliases else ""
        fixed = ", ".join(finding.fixed) or "no fixed version"
        upgrade = f"; lowest fix above the pin: {finding.upgrade_to}" if finding.upgrade_to else ""
        lines.append(
            f"AFFECTED {finding.pin.name}=={finding.pin.version}: {finding.advisory_id}{also}; "
            f"fixed in {fixed}{upgrade}"
        )
    if result.uncovered:
        lines.append(
            "NOT COVERED (the snapshot was built before these were pinned; run "
            f"`python -m deploy.audit --refresh PATH`): {', '.join(result.uncovered)}"
        )
    lines.append(
        "audit passed"
        if result.passed
        else f"audit FAILED: {len(result.findings)} affected, {len(result.uncovered)} not covered"
    )
    return "\n".join(lines) + "\n"


def _concerns(raw: Mapping[str, Any], names: frozenset[str]) -> bool:
    return any(
        isinstance(a, dict)
        and isinstance(a.get("package"), dict)
        and a["package"].get("ecosystem") == "PyPI"
        and canonical(str(a["package"].get("name", ""))) in names
        for a in raw.get("affected") or []
    )


def _reduced(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of KEPT_FIELDS, plus each affected entry's package (ecosystem, name),
    ranges and versions; dates as strings (YAML may decode unquoted ones as datetimes)."""
    kept: dict[str, Any] = {}
    for field in KEPT_FIELDS:
        if raw.get(field) is not None:
            value = raw[field]
            kept[field] = value.isoformat() if isinstance(value, datetime | date) else value
    kept["affected"] = [
        {
            "package": {"ecosystem": a["package"]["ecosystem"], "name": a["package"]["name"]},
            **{key: a[key] for key in ("ranges", "versions") if a.get(key)},
        }
        for a in raw.get("affected") or []
    ]
    return kept


def build_snapshot_document(
    records: Iterable[Mapping[str, Any]], pins: Sequence[Pin], commit: str, commit_date: datetime
) -> dict[str, Any]:
    """The vendored file's content: the advisories of `records` that concern a pinned
    package, reduced (CHANGES), sorted by id, each checked to parse."""
    names = frozenset(pin.name for pin in pins)
    selected = sorted(
        (_reduced(r) for r in records if _concerns(r, names)), key=lambda r: str(r["id"])
    )
    for record in selected:
        parse_advisory(record)  # fail the refresh, not a later audit
    return {
        "source": {
            "name": SOURCE_NAME,
            "url": SOURCE_URL,
            "commit": commit,
            "commit_date": commit_date.isoformat(),
        },
        "licence": {
            "name": LICENCE,
            "url": LICENCE_URL,
            "attribution": ATTRIBUTION,
            "changes": CHANGES,
        },
        "refresh": "python -m deploy.audit --refresh <advisory-database checkout or git dir>",
        "packages": sorted(names),
        "advisories": selected,
    }


# ---------------------------------------------------------------------------- I/O


def load_snapshot(path: Path = ADVISORIES) -> Snapshot:
    return parse_snapshot(json.loads(path.read_text("utf-8")))


def _git(source: Path, *args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(
        ["git", "-C", str(source), *args], input=data, capture_output=True, check=True
    ).stdout


def read_source(source: Path) -> tuple[str, datetime, list[dict[str, Any]]]:
    """(HEAD commit, its commit date, every OSV record under vulns/) of an advisory-database
    checkout or bare git directory, read from the HEAD commit with `git` (local edits of a
    checkout are not taken). Needs PyYAML (a Tollway dependency)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C parser when built
    commit = _git(source, "rev-parse", "HEAD").decode().strip()
    commit_date = datetime.fromisoformat(
        _git(source, "log", "-1", "--format=%cI", commit).decode().strip()
    )
    paths = [
        p
        for p in _git(source, "ls-tree", "-r", "--name-only", commit, "vulns/").decode().split("\n")
        if p.endswith((".yaml", ".yml", ".json"))
    ]
    if not paths:
        raise AdvisoryFormatError(f"{source}: no advisories under vulns/ at {commit}")
    blob = _git(
        source, "cat-file", "--batch", data="".join(f"{commit}:{p}\n" for p in paths).encode()
    )
    records: list[dict[str, Any]] = []
    position = 0
    for path in paths:  # `cat-file --batch` answers in request order: header, body, newline
        header_end = blob.index(b"\n", position)
        size = int(blob[position:header_end].split()[2])
        body = blob[header_end + 1 : header_end + 1 + size]
        position = header_end + 1 + size + 1
        record = json.loads(body) if path.endswith(".json") else yaml.load(body, Loader=loader)  # noqa: S506 (a safe loader)
        if not isinstance(record, dict):
            raise AdvisoryFormatError(f"{path}: not an OSV record")
        records.append(record)
    return commit, commit_date, records


def refresh(source: Path, constraints: Path = CONSTRAINTS, target: Path = ADVISORIES) -> str:
    """Rebuild the vendored file from `source` for the packages of `constraints`; returns a
    one-line summary."""
    pins = parse_constraints(constraints.read_text("utf-8"))
    commit, commit_date, records = read_source(source)
    document = build_snapshot_document(records, pins, commit, commit_date)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(document, indent=1) + "\n", "utf-8")  # built in a fixed order
    return (
        f"wrote {target}: {len(document['advisories'])} of {len(records)} advisories "
        f"(for {len(pins)} pinned packages) from {commit[:12]} of {commit_date.date()}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.audit",
        description="Check the pins of deploy/constraints.txt against vendored OSV advisories.",
    )
    parser.add_argument("--constraints", type=Path, default=CONSTRAINTS)
    parser.add_argument("--advisories", type=Path, default=ADVISORIES)
    parser.add_argument(
        "--refresh",
        type=Path,
        metavar="PATH",
        help="rebuild the advisories file from a pypa/advisory-database checkout or bare git dir",
    )
    args = parser.parse_args(argv)
    if args.refresh is not None:
        print(refresh(args.refresh, args.constraints, args.advisories))
        return 0
    pins = parse_constraints(args.constraints.read_text("utf-8"))
    snapshot = load_snapshot(args.advisories)
    result = audit(pins, snapshot)
    sys.stdout.write(render_report(result, snapshot, datetime.now(UTC).date()))
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
