"""The offline dependency audit (deploy/audit.py, docs/decisions/0024): OSV range
evaluation in PEP 440 order and name matching (deploy/osv.py), the vendored snapshot of
this repository, and `--refresh` from a small advisory-database git repository built in
a temp dir."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

from deploy import audit
from deploy.audit import Pin, Snapshot, findings, parse_constraints
from deploy.lock import canonical
from deploy.osv import (
    Advisory,
    AdvisoryFormatError,
    Affected,
    Event,
    Range,
    affects,
    in_ecosystem_range,
    parse_advisory,
)


def _events(*pairs: tuple[str, str]) -> tuple[Event, ...]:
    return tuple(Event(kind, version) for kind, version in pairs)  # type: ignore[arg-type]  # kinds are literals of the table


I0 = ("introduced", "0")

RANGE_TABLE = [
    # each row: the range's events, a version, whether that version is affected
    ((I0, ("fixed", "1.0.2")), "0.0.1", True),
    ((I0, ("fixed", "1.0.2")), "1.0.1", True),
    ((I0, ("fixed", "1.0.2")), "1.0.2", False),
    ((I0, ("fixed", "1.0.2")), "2.0", False),
    ((I0,), "99.0", True),  # never fixed
    ((("introduced", "1.0"), ("fixed", "1.1")), "0.9", False),
    ((("introduced", "1.0"), ("fixed", "1.1")), "1.0", True),
    # two introduced/fixed pairs in one range
    *[
        (
            (
                ("introduced", "1.0.0"),
                ("fixed", "1.0.2"),
                ("introduced", "3.0"),
                ("fixed", "3.2.5"),
            ),
            version,
            expected,
        )
        for version, expected in [
            ("0.9", False),
            ("1.0.0", True),
            ("1.0.2", False),
            ("2.9", False),
            ("3.0", True),
            ("3.2.4", True),
            ("3.2.5", False),
            ("4", False),
        ]
    ],
    # events out of order are sorted first
    ((("fixed", "3.2.5"), ("introduced", "3.0"), ("fixed", "1.0.2"), I0), "3.1", True),
    ((("fixed", "3.2.5"), ("introduced", "3.0"), ("fixed", "1.0.2"), I0), "2.0", False),
    # last_affected: the named version is still affected, the next is not
    ((I0, ("last_affected", "2.1.214")), "2.1.214", True),
    ((I0, ("last_affected", "2.1.214")), "2.1.215", False),
    ((I0, ("last_affected", "2.1.214")), "2.1.214.post1", False),
    # limit bounds the whole range; "*" is no bound
    ((I0, ("limit", "2.0")), "1.9", True),
    ((I0, ("limit", "2.0")), "2.0", False),
    ((I0, ("limit", "*")), "9.0", True),
    ((I0, ("fixed", "1.5"), ("limit", "2.0")), "1.6", False),
    # PEP 440 order, not string order
    ((I0, ("fixed", "1.10")), "1.9", True),
    ((I0, ("fixed", "1.10")), "1.10.0", False),
    # pre-releases, dev and post releases
    ((I0, ("fixed", "2.0")), "2.0rc1", True),
    ((I0, ("fixed", "2.0")), "2.0.dev3", True),
    ((I0, ("fixed", "2.0")), "2.0.post1", False),
    ((("introduced", "2.0"), ("fixed", "2.1")), "2.0rc1", False),
    ((("introduced", "2.0"), ("fixed", "2.1")), "2.1a1", True),
    ((I0, ("fixed", "2.0rc2")), "2.0rc1", True),
    ((I0, ("fixed", "2.0rc2")), "2.0", False),
    ((I0, ("fixed", "1.0")), "1!0.5", False),  # an epoch sorts after every plain version
    ((I0, ("fixed", "1.0")), "0.9+local.1", True),
    # introduced and fixed at one version: an empty stretch
    ((("introduced", "1.0"), ("fixed", "1.0")), "1.0", False),
]


@pytest.mark.parametrize(("events", "version", "expected"), RANGE_TABLE)
def test_ecosystem_range_evaluation(
    events: tuple[tuple[str, str], ...], version: str, expected: bool
) -> None:
    assert in_ecosystem_range(Version(version), _events(*events)) is expected


def _entry(
    name: str = "demo-pkg",
    *,
    ecosystem: str = "PyPI",
    ranges: tuple[Range, ...] = (),
    versions: tuple[str, ...] = (),
) -> Affected:
    return Affected(ecosystem, canonical(name), ranges, versions)


def _eco(*pairs: tuple[str, str]) -> Range:
    return Range("ECOSYSTEM", _events(*pairs))


def test_several_ranges_any_one_affects() -> None:
    entry = _entry(
        ranges=(_eco(I0, ("fixed", "1.0")), _eco(("introduced", "2.0"), ("fixed", "2.3")))
    )
    assert affects(entry, "demo-pkg", "0.5")
    assert not affects(entry, "demo-pkg", "1.5")
    assert affects(entry, "demo-pkg", "2.2")
    assert not affects(entry, "demo-pkg", "2.3")


def test_the_explicit_versions_list_affects_by_itself_compared_as_pep440() -> None:
    entry = _entry(versions=("0.9", "1.0", "not-a-version"))
    assert affects(entry, "demo-pkg", "1.0.0")  # 1.0 == 1.0.0 in PEP 440
    assert affects(entry, "demo-pkg", "0.9")
    assert not affects(entry, "demo-pkg", "1.0.1")


def test_versions_list_or_range_either_one_affects() -> None:
    entry = _entry(ranges=(_eco(I0, ("fixed", "1.0")),), versions=("3.0",))
    assert affects(entry, "demo-pkg", "3.0")
    assert affects(entry, "demo-pkg", "0.1")
    assert not affects(entry, "demo-pkg", "2.0")


def test_git_and_semver_ranges_are_not_evaluated() -> None:
    git = Range("GIT", _events(I0, ("fixed", "2545222a3853e31ace15d87ae0e2effb7da0c96b")))
    semver = Range("SEMVER", _events(I0, ("fixed", "9.0.0")))
    assert not affects(_entry(ranges=(git, semver)), "demo-pkg", "1.0")


def test_names_match_after_pep503_normalisation_and_only_in_pypi() -> None:
    raw: dict[str, Any] = {
        "id": "PYSEC-0-1",
        "affected": [
            {
                "package": {"ecosystem": "PyPI", "name": "Demo_Pkg.Extra"},
                "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}],
            }
        ],
    }
    advisory = parse_advisory(raw)
    pins = parse_constraints("DEMO.pkg-extra==1.0\n")
    assert [f.pin.name for f in findings(pins, [advisory])] == ["demo-pkg-extra"]
    npm = parse_advisory(
        {
            **raw,
            "affected": [
                {**raw["affected"][0], "package": {"ecosystem": "npm", "name": "demo-pkg-extra"}}
            ],
        }
    )
    assert findings(pins, [npm]) == ()


def _advisory(advisory_id: str, entry: Affected, *, withdrawn: str | None = None) -> Advisory:
    return Advisory(advisory_id, ("CVE-0000-1",), "", withdrawn, (entry,))


def test_withdrawn_advisories_are_ignored() -> None:
    entry = _entry(ranges=(_eco(I0),))
    pins = (Pin("demo-pkg", "1.0"),)
    assert findings(pins, [_advisory("A", entry, withdrawn="2024-01-01T00:00:00Z")]) == ()
    assert [f.advisory_id for f in findings(pins, [_advisory("A", entry)])] == ["A"]


def test_a_finding_names_the_advisory_aliases_and_fixed_versions() -> None:
    entry = _entry(
        ranges=(_eco(I0, ("fixed", "1.2.7"), ("introduced", "2.0"), ("fixed", "2.0.3")),)
    )
    (finding,) = findings([Pin("demo-pkg", "2.0.1")], [_advisory("PYSEC-X", entry)])
    assert (finding.advisory_id, finding.aliases) == ("PYSEC-X", ("CVE-0000-1",))
    assert finding.fixed == ("1.2.7", "2.0.3")
    assert finding.upgrade_to == "2.0.3"
    (unfixed,) = findings([Pin("demo-pkg", "2.0.1")], [_advisory("B", _entry(ranges=(_eco(I0),)))])
    assert (unfixed.fixed, unfixed.upgrade_to) == ((), None)


def test_findings_are_one_per_advisory_and_pin_and_sorted() -> None:
    entry = _entry(ranges=(_eco(I0),), versions=("1.0",))
    other = _entry("other", ranges=(_eco(I0),))
    pins = parse_constraints("other==1\ndemo-pkg==1.0\n")
    found = findings(pins, [_advisory("Z", entry), _advisory("B", other), _advisory("A", entry)])
    assert [(f.pin.name, f.advisory_id) for f in found] == [
        ("demo-pkg", "A"),
        ("demo-pkg", "Z"),
        ("other", "B"),
    ]


def test_constraints_parse_to_normalised_exact_pins() -> None:
    text = "# header\n\nZope.Interface==6.0\nPyYAML==6.0.4  # comment\nuvicorn[standard]==0.54.0\n"
    assert parse_constraints(text) == (
        Pin("pyyaml", "6.0.4"),
        Pin("uvicorn", "0.54.0"),
        Pin("zope-interface", "6.0"),
    )


@pytest.mark.parametrize("line", ["httpx>=0.28", "httpx", "httpx==0.28.*\nhttpx==1", "a==1\nA==2"])
def test_constraints_other_than_one_exact_pin_per_package_are_refused(line: str) -> None:
    with pytest.raises(ValueError, match="line"):
        parse_constraints(line)


@pytest.mark.parametrize(
    "affected",
    [
        [
            {
                "package": {"ecosystem": "PyPI", "name": "x"},
                "ranges": [
                    {
                        "type": "ECOSYSTEM",
                        "events": [{"introduced": "0"}, {"fixed": "not a version"}],
                    }
                ],
            }
        ],
        [
            {
                "package": {"ecosystem": "PyPI", "name": "x"},
                "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0", "fixed": "1"}]}],
            }
        ],
        [
            {
                "package": {"ecosystem": "PyPI", "name": "x"},
                "ranges": [{"type": "ECOSYSTEM", "events": [{"patched": "1"}]}],
            }
        ],
        [{"package": {"name": "x"}}],
    ],
)
def test_an_advisory_that_cannot_be_evaluated_stops_the_audit(affected: list[Any]) -> None:
    with pytest.raises(AdvisoryFormatError, match="PYSEC-BAD"):
        parse_advisory({"id": "PYSEC-BAD", "affected": affected})


def _snapshot(*advisories: Advisory, packages: frozenset[str]) -> Snapshot:
    return Snapshot(
        "3ccb612573e2511ab5cad7dafecd838605c80cda",
        datetime(2024, 10, 10, 17, 35, tzinfo=UTC),
        packages,
        advisories,
    )


def test_a_pin_the_snapshot_was_not_built_for_fails_the_audit() -> None:
    pins = parse_constraints("demo-pkg==1.0\nnewcomer==0.1\n")
    result = audit.audit(pins, _snapshot(packages=frozenset({"demo-pkg"})))
    assert (result.uncovered, result.findings, result.passed) == (("newcomer",), (), False)


def test_the_report_states_the_snapshot_age_counts_and_each_finding() -> None:
    entry = _entry(ranges=(_eco(I0, ("fixed", "1.1")),))
    snapshot = _snapshot(
        _advisory("PYSEC-1", entry),
        _advisory("PYSEC-2", entry, withdrawn="2024-01-01"),
        packages=frozenset({"demo-pkg", "safe"}),
    )
    pins = parse_constraints("demo-pkg==1.0\nsafe==2\n")
    result = audit.audit(pins, snapshot)
    report = audit.render_report(result, snapshot, date(2024, 10, 20))
    assert "snapshot of 2024-10-10 (10 days old" in report
    assert "checked 2 pins against 1 advisories (1 withdrawn ones ignored)" in report
    assert "AFFECTED demo-pkg==1.0: PYSEC-1 (CVE-0000-1); fixed in 1.1" in report
    assert report.endswith("audit FAILED: 1 affected, 0 not covered\n")
    clean = audit.audit(parse_constraints("safe==2\n"), snapshot)
    assert audit.render_report(clean, snapshot, date(2024, 10, 10)).endswith("audit passed\n")


# ------------------------------------------------------------ this repository's files


def test_the_vendored_snapshot_covers_every_pinned_package() -> None:
    """Loading the real file works; it was built for every package pinned now (else:
    `python -m deploy.audit --refresh ...`), and holds nothing but their advisories."""
    document = json.loads(audit.ADVISORIES.read_text("utf-8"))
    assert document["licence"]["name"] == "CC-BY-4.0"
    assert "pypa/advisory-database" in document["licence"]["attribution"]
    assert len(document["source"]["commit"]) == 40
    snapshot = audit.parse_snapshot(document)
    pins = parse_constraints(audit.CONSTRAINTS.read_text("utf-8"))
    assert {p.name for p in pins} <= snapshot.packages
    assert snapshot.advisories
    for advisory in snapshot.advisories:
        names = {e.name for e in advisory.affected if e.ecosystem == "PyPI"}
        assert names & snapshot.packages, advisory.id
    assert [a.id for a in snapshot.advisories] == sorted(a.id for a in snapshot.advisories)


def test_the_current_pins_pass_the_audit() -> None:
    snapshot = audit.load_snapshot()
    result = audit.audit(parse_constraints(audit.CONSTRAINTS.read_text("utf-8")), snapshot)
    assert result.passed, audit.render_report(result, snapshot, datetime.now(UTC).date())


# ------------------------------------------------------------ --refresh from a git repository

ADVISORY_YAML = """\
id: PYSEC-2099-1
details: long text that the vendored file drops
aliases: [CVE-2099-1]
modified: 2099-01-02T00:00:00Z
affected:
- package: {name: Demo_Pkg, ecosystem: PyPI, purl: pkg:pypi/demo-pkg}
  ranges:
  - type: GIT
    repo: https://example.invalid/demo
    events: [{introduced: "0"}, {fixed: 2545222a3853e31ace15d87ae0e2effb7da0c96b}]
  - type: ECOSYSTEM
    events: [{introduced: "0"}, {fixed: "1.4"}]
  versions: ["1.0", "1.3"]
references:
- {type: WEB, url: https://example.invalid/advisory}
"""


def _git(cwd: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "GIT_AUTHOR_DATE": "2099-01-03T04:05:06+00:00",
        "GIT_COMMITTER_DATE": "2099-01-03T04:05:06+00:00",
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """A work tree of an advisory database: one advisory for a pinned package (filed under
    another spelling of its name), one for an unpinned one, one withdrawn."""
    repo = tmp_path / "advisory-database"
    (repo / "vulns" / "Demo_Pkg").mkdir(parents=True)
    (repo / "vulns" / "elsewhere").mkdir()
    (repo / "vulns" / "Demo_Pkg" / "PYSEC-2099-1.yaml").write_text(ADVISORY_YAML)
    (repo / "vulns" / "elsewhere" / "PYSEC-2099-2.yaml").write_text(
        ADVISORY_YAML.replace("PYSEC-2099-1", "PYSEC-2099-2").replace("Demo_Pkg", "elsewhere")
    )
    (repo / "vulns" / "Demo_Pkg" / "PYSEC-2099-3.yaml").write_text(
        ADVISORY_YAML.replace("PYSEC-2099-1", "PYSEC-2099-3") + "withdrawn: 2099-01-02T00:00:00Z\n"
    )
    (repo / "vulns" / ".id-allocator").write_text("not an advisory\n")
    _git(tmp_path, "init", "-q", str(repo))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "advisories")
    return repo


@pytest.mark.parametrize("bare", [False, True])
def test_refresh_vendors_the_advisories_of_pinned_packages(
    database: Path, tmp_path: Path, bare: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    source = database
    if bare:
        source = tmp_path / "bare.git"
        _git(tmp_path, "clone", "-q", "--bare", str(database), str(source))
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("demo-pkg==1.3\nunaffected==1.0\n")
    target = tmp_path / "out" / "advisories.json"

    assert (
        audit.main(
            [
                "--refresh",
                str(source),
                "--constraints",
                str(constraints),
                "--advisories",
                str(target),
            ]
        )
        == 0
    )
    assert "2 of 3 advisories" in capsys.readouterr().out
    document = json.loads(target.read_text("utf-8"))
    assert document["source"]["commit_date"] == "2099-01-03T04:05:06+00:00"
    assert document["packages"] == ["demo-pkg", "unaffected"]
    assert [a["id"] for a in document["advisories"]] == ["PYSEC-2099-1", "PYSEC-2099-3"]
    first = document["advisories"][0]
    assert "details" not in first
    assert "references" not in first
    assert first["modified"] == "2099-01-02T00:00:00+00:00"  # an unquoted YAML date, as text
    assert first["affected"][0]["package"] == {"ecosystem": "PyPI", "name": "Demo_Pkg"}

    assert audit.main(["--constraints", str(constraints), "--advisories", str(target)]) == 1
    out = capsys.readouterr().out
    assert "AFFECTED demo-pkg==1.3: PYSEC-2099-1 (CVE-2099-1); fixed in 1.4" in out
    assert "PYSEC-2099-3" not in out  # withdrawn
    constraints.write_text("demo-pkg==1.4\nunaffected==1.0\n")
    assert audit.main(["--constraints", str(constraints), "--advisories", str(target)]) == 0
    assert "audit passed" in capsys.readouterr().out
