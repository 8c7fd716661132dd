"""OSV advisories (https://ossf.github.io/osv-schema/) read and evaluated for PyPI
packages: which pinned versions an advisory affects. Pure: records come in decoded (JSON
or YAML), nothing is read here. Used by the dependency audit (deploy/audit.py,
docs/decisions/0024).

Evaluation follows the schema's: an `affected[]` entry concerns a package when its
ecosystem is `PyPI` and its name equals the package's PEP 503 name; a version is
affected when the entry's `versions` list holds it or one of its `ECOSYSTEM` ranges
contains it. A range is a timeline of `introduced` / `fixed` / `last_affected` events
sorted in PEP 440 order (`packaging.version`; `introduced: "0"` sorts before every
version; at one version `introduced` sorts first, so `introduced X, fixed X` is empty),
bounded by its `limit` events (none, or `"*"`: no bound). Not evaluated, on purpose:
`GIT` ranges (commit hashes need the project's commit graph; the PyPA database expands
them into the entry's `versions` list, which is checked) and `SEMVER` ranges (SemVer
precedence is not PEP 440 order; PyPI entries use `ECOSYSTEM`). Withdrawn advisories
are parsed; the caller skips them.

A record this module cannot evaluate (an `ECOSYSTEM` event that is no PEP 440 version,
an event with two keys, a package without ecosystem or name) raises
`AdvisoryFormatError` when parsed, so evaluation never meets one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from packaging.version import InvalidVersion, Version

from deploy.lock import canonical

EventKind = Literal["introduced", "fixed", "last_affected", "limit"]
EVENT_KINDS: Final[tuple[EventKind, ...]] = ("introduced", "fixed", "last_affected", "limit")
#: At one version, `introduced` sorts before the events that end a stretch.
_EVENT_ORDER: Final[Mapping[str, int]] = {"introduced": 0, "fixed": 1, "last_affected": 2}


class AdvisoryFormatError(ValueError):
    """An advisory (or a file of them) is not the OSV shape this module evaluates: the
    audit stops rather than pass a version it could not check."""


@dataclass(frozen=True)
class Event:
    """One point of a range's timeline."""

    kind: EventKind
    version: str


@dataclass(frozen=True)
class Range:
    """`affected[].ranges[]`: its `type` (ECOSYSTEM, GIT, SEMVER) and events in file order."""

    type: str
    events: tuple[Event, ...]


@dataclass(frozen=True)
class Affected:
    """`affected[]`: one package of one ecosystem, with its affected ranges and versions."""

    ecosystem: str
    name: str  #: PEP 503 normalised when the ecosystem is PyPI, else as written
    ranges: tuple[Range, ...]
    versions: tuple[str, ...]


@dataclass(frozen=True)
class Advisory:
    """The part of an OSV record the audit reads."""

    id: str
    aliases: tuple[str, ...]
    summary: str
    withdrawn: str | None  #: when set the advisory no longer applies
    affected: tuple[Affected, ...]


def _strings(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AdvisoryFormatError(f"{where}: expected a list of strings")
    return tuple(value)


def _event(raw: object, where: str) -> Event:
    if not isinstance(raw, dict) or len(raw) != 1:
        raise AdvisoryFormatError(f"{where}: an event has exactly one key")
    ((kind, version),) = raw.items()
    if kind not in EVENT_KINDS or not isinstance(version, str):
        raise AdvisoryFormatError(f"{where}: unknown event {raw!r}")
    return Event(kind, version)


def _range(raw: object, where: str) -> Range:
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise AdvisoryFormatError(f"{where}: a range needs a type")
    events = raw.get("events")
    if not isinstance(events, list):
        raise AdvisoryFormatError(f"{where}: a range needs events")
    parsed = Range(raw["type"], tuple(_event(e, where) for e in events))
    if parsed.type == "ECOSYSTEM":  # checked once here, so evaluation cannot meet a bad one
        for event in parsed.events:
            if not (event.kind == "introduced" and event.version == "0") and not (
                event.kind == "limit" and event.version == "*"
            ):
                _version(event.version, where)
    return parsed


def _version(text: str, where: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion as exc:
        raise AdvisoryFormatError(f"{where}: {text!r} is not a PEP 440 version") from exc


def parse_advisory(raw: Mapping[str, Any]) -> Advisory:
    """An OSV record (as decoded from JSON or YAML) -> `Advisory`; raises
    `AdvisoryFormatError` on a shape this audit cannot evaluate."""
    advisory_id = raw.get("id")
    if not isinstance(advisory_id, str):
        raise AdvisoryFormatError(f"an advisory without an id: {str(raw)[:80]}")
    affected: list[Affected] = []
    for raw_affected in raw.get("affected") or []:
        package = raw_affected.get("package") if isinstance(raw_affected, dict) else None
        if not isinstance(package, dict):
            raise AdvisoryFormatError(f"{advisory_id}: affected[] without a package")
        ecosystem, name = package.get("ecosystem"), package.get("name")
        if not isinstance(ecosystem, str) or not isinstance(name, str):
            raise AdvisoryFormatError(f"{advisory_id}: package without ecosystem and name")
        ranges = tuple(_range(r, advisory_id) for r in raw_affected.get("ranges") or [])
        versions = _strings(raw_affected.get("versions"), advisory_id)
        affected.append(
            Affected(ecosystem, canonical(name) if ecosystem == "PyPI" else name, ranges, versions)
        )
    withdrawn = raw.get("withdrawn")
    return Advisory(
        id=advisory_id,
        aliases=_strings(raw.get("aliases"), advisory_id),
        summary=str(raw.get("summary") or ""),
        withdrawn=None if withdrawn is None else str(withdrawn),
        affected=tuple(affected),
    )


def _sort_key(event: Event) -> tuple[int, Version, int]:
    if event.kind == "introduced" and event.version == "0":
        return (0, Version("0"), 0)  # "0": before every version
    return (1, Version(event.version), _EVENT_ORDER.get(event.kind, 3))


def _before_limits(version: Version, events: Sequence[Event]) -> bool:
    limits = [e.version for e in events if e.kind == "limit"]
    return not limits or any("*" in limit or version < Version(limit) for limit in limits)


def in_ecosystem_range(version: Version, events: Sequence[Event]) -> bool:
    """Whether `version` lies in an ECOSYSTEM range's timeline (OSV's evaluation): walk the
    events in PEP 440 order; `introduced` at or below the version opens, `fixed` at or
    below it closes, `last_affected` below it closes; outside the `limit`s nothing is."""
    if not _before_limits(version, events):
        return False
    affected = False
    for event in sorted((e for e in events if e.kind != "limit"), key=_sort_key):
        if event.kind == "introduced":
            if event.version == "0" or version >= Version(event.version):
                affected = True
        elif event.kind == "fixed":
            if version >= Version(event.version):
                affected = False
        elif version > Version(event.version):  # last_affected
            affected = False
    return affected


def _listed(version: Version, versions: Iterable[str]) -> bool:
    """In the explicit list, compared as PEP 440 versions (`1.0` == `1.0.0`); a listed string
    that is no PEP 440 version matches only itself."""
    for listed in versions:
        try:
            if Version(listed) == version:
                return True
        except InvalidVersion:
            if listed == str(version):
                return True
    return False


def affects(entry: Affected, name: str, version: str) -> bool:
    """Whether this `affected[]` entry covers `version` of the package `name` (PEP 503
    normalised); GIT and SEMVER ranges are not evaluated (the module docstring says why)."""
    if entry.ecosystem != "PyPI" or entry.name != name:
        return False
    parsed = Version(version)
    if _listed(parsed, entry.versions):
        return True
    return any(r.type == "ECOSYSTEM" and in_ecosystem_range(parsed, r.events) for r in entry.ranges)


def fixed_versions(entry: Affected) -> tuple[str, ...]:
    """The `fixed` versions of the entry's ECOSYSTEM ranges, in PEP 440 order."""
    fixed = {
        e.version
        for r in entry.ranges
        if r.type == "ECOSYSTEM"
        for e in r.events
        if e.kind == "fixed"
    }
    return tuple(sorted(fixed, key=Version))
