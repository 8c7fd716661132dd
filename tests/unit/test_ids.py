"""ingress/ids.py: request ids the ingress verifies without state (HMAC-tagged)."""

from __future__ import annotations

import re
from typing import Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingress.ids import new_request_id, verify_request_id

SECRET: Final = b"unit-test-secret"
TEAM: Final = "default"
ISSUED: Final = new_request_id(SECRET, TEAM)


def test_shape() -> None:
    assert re.fullmatch(r"req_[0-9a-f]{40}", ISSUED)


def test_round_trip() -> None:
    assert verify_request_id(SECRET, TEAM, ISSUED)


def test_ids_are_unique() -> None:
    assert len({new_request_id(SECRET, TEAM) for _ in range(1_000)}) == 1_000


def _flip_last(request_id: str) -> str:
    return request_id[:-1] + ("0" if request_id[-1] != "0" else "1")


def _flip_random(request_id: str) -> str:
    return request_id[:4] + ("0" if request_id[4] != "0" else "1") + request_id[5:]


REJECTED: Final = {
    "wrong-team": (SECRET, "other-team", ISSUED),
    "empty-team": (SECRET, "", ISSUED),
    "team-with-space": (SECRET, "default ", ISSUED),
    "wrong-secret": (b"another-secret", TEAM, ISSUED),
    "empty-secret": (b"", TEAM, ISSUED),
    "tampered-tag": (SECRET, TEAM, _flip_last(ISSUED)),
    "tampered-random": (SECRET, TEAM, _flip_random(ISSUED)),
    "upper-case": (SECRET, TEAM, ISSUED.upper()),
    "upper-prefix": (SECRET, TEAM, "REQ_" + ISSUED[4:]),
    "short": (SECRET, TEAM, ISSUED[:-1]),
    "long": (SECRET, TEAM, ISSUED + "0"),
    "trailing-newline": (SECRET, TEAM, ISSUED + "\n"),
    "leading-space": (SECRET, TEAM, " " + ISSUED),
    "no-prefix": (SECRET, TEAM, ISSUED[4:]),
    "prefix-only": (SECRET, TEAM, "req_"),
    "empty": (SECRET, TEAM, ""),
    "non-hex": (SECRET, TEAM, "req_" + "g" * 40),
    "all-zero": (SECRET, TEAM, "req_" + "0" * 40),
    "sql-injection": (SECRET, TEAM, "req_' OR 1=1--"),
    "sql-injection-quoted": (SECRET, TEAM, "req_' OR '1'='1"),
    "path-traversal": (SECRET, TEAM, "../../etc/passwd"),
    "prefixed-path-traversal": (SECRET, TEAM, "req_../../../../etc/passwd"),
    "percent-nul": (SECRET, TEAM, "req_%00" + ISSUED[4:]),
    "trailing-nul": (SECRET, TEAM, ISSUED + "\x00"),
    "html": (SECRET, TEAM, "<script>alert(1)</script>"),
    "very-long": (SECRET, TEAM, "req_" + "a" * 1_000_000),
    "unicode-digit": (SECRET, TEAM, ISSUED[:4] + "\uff10" + ISSUED[5:]),  # fullwidth digit zero
}


@pytest.mark.parametrize(
    ("secret", "team", "request_id"), list(REJECTED.values()), ids=list(REJECTED)
)
def test_rejected(secret: bytes, team: str, request_id: str) -> None:
    assert verify_request_id(secret, team, request_id) is False


@given(st.text(st.characters(exclude_categories=())))  # lone surrogates included
def test_arbitrary_text_never_raises(request_id: str) -> None:
    assert verify_request_id(SECRET, TEAM, request_id) in {False, request_id == ISSUED}


@given(st.text(max_size=50), st.binary(max_size=64))
def test_round_trip_for_any_team_and_secret(team: str, secret: bytes) -> None:
    request_id = new_request_id(secret, team)
    assert verify_request_id(secret, team, request_id)
    assert not verify_request_id(secret, team + "x", request_id)
