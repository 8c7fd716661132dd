"""ingress/credentials.py: the presented key, read strictly; nothing else is a credential."""

from __future__ import annotations

from typing import Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingress.credentials import (
    INVALID_MESSAGE,
    KEY_RE,
    MAX_CREDENTIAL_HEADER_CHARS,
    MISSING_MESSAGE,
    InvalidApiKey,
    needs_key,
    presented_key,
)
from workers.tenancy.keys import is_importable_key, new_plain_key

KEY: Final = new_plain_key(lambda n: bytes(range(n)))
OTHER: Final = new_plain_key(lambda n: bytes(range(1, n + 1)))

INJECTIONS: Final = (
    "' OR 1=1 --",
    "Bearer ' OR 1=1 --",
    f"Bearer {KEY}' OR '1'='1",
    "Bearer \x00",
    f"Bearer {KEY}\x00",
    "Bearer tw-" + "A" * 10_000,
    "Bearer " + "x" * 10_240,
    "Bearer tw-ÄÖÜ" + "a" * 40,
    "Bearer tw-\u202e" + "a" * 42,
    "Bearer tw-short",
    f"Bearer {KEY}\r\nX-Injected: 1",
    "Bearer ${jndi:ldap://x}",
    "Bearer ../../etc/passwd",
    "Bearer",
    "Bearer ",
    "Basic dXNlcjpwYXNz",
    f"Basic {KEY}",
    f"Token {KEY}",
    f"Bearer{KEY}",
    KEY,
    "",
)


@pytest.mark.parametrize(
    ("authorization", "x_api_key", "accept", "expected"),
    [
        ([f"Bearer {KEY}"], [], False, KEY),
        ([f"bearer {KEY}"], [], False, KEY),
        ([f"BEARER   {KEY}  "], [], False, KEY),
        ([], [KEY], True, KEY),
        ([f"Bearer {KEY}"], [KEY], True, KEY),
        ([f"Bearer {KEY}"], ["' OR 1=1 --"], False, KEY),  # ignored off /v1/messages
    ],
)
def test_well_formed_keys_are_read(
    authorization: list[str], x_api_key: list[str], accept: bool, expected: str
) -> None:
    assert presented_key(authorization, x_api_key, accept_x_api_key=accept) == expected


@pytest.mark.parametrize("value", INJECTIONS, ids=range(len(INJECTIONS)))
def test_anything_else_is_a_401_that_never_echoes_the_value(value: str) -> None:
    with pytest.raises(InvalidApiKey) as caught:
        presented_key([value], [], accept_x_api_key=False)
    error = caught.value
    assert (error.http_status, error.code) == (401, "invalid_api_key")
    assert error.message == INVALID_MESSAGE
    if len(value) > 8:
        assert value not in str(error.to_body())
    assert error.headers() == {"www-authenticate": 'Bearer realm="tollway"'}


@pytest.mark.parametrize("value", INJECTIONS, ids=range(len(INJECTIONS)))
def test_x_api_key_is_as_strict(value: str) -> None:
    if value == KEY:
        return  # the one valid value of the list (as x-api-key)
    with pytest.raises(InvalidApiKey):
        presented_key([], [value], accept_x_api_key=True)


@pytest.mark.parametrize(
    ("authorization", "x_api_key", "accept", "message"),
    [
        ([], [], False, MISSING_MESSAGE),
        ([], [KEY], False, MISSING_MESSAGE),  # x-api-key counts only on /v1/messages
        ([f"Bearer {KEY}", f"Bearer {KEY}"], [], False, INVALID_MESSAGE),  # repeated header
        ([], [KEY, KEY], True, INVALID_MESSAGE),
        ([f"Bearer {KEY}"], [OTHER], True, INVALID_MESSAGE),  # two different keys
    ],
)
def test_missing_repeated_or_conflicting_credentials(
    authorization: list[str], x_api_key: list[str], accept: bool, message: str
) -> None:
    with pytest.raises(InvalidApiKey) as caught:
        presented_key(authorization, x_api_key, accept_x_api_key=accept)
    assert caught.value.message == message


def test_an_overlong_header_is_refused_before_parsing() -> None:
    padded = "Bearer " + KEY + " " * (MAX_CREDENTIAL_HEADER_CHARS - len(KEY))
    with pytest.raises(InvalidApiKey):
        presented_key([padded], [], accept_x_api_key=False)


@given(st.text(max_size=400), st.text(max_size=400))
def test_no_header_value_raises_anything_but_a_401(authorization: str, x_api_key: str) -> None:
    outcome: str | InvalidApiKey
    try:
        outcome = presented_key([authorization], [x_api_key], accept_x_api_key=True)
    except InvalidApiKey as exc:
        outcome = exc
    if isinstance(outcome, InvalidApiKey):
        assert outcome.message in {INVALID_MESSAGE, MISSING_MESSAGE}  # fixed: nothing echoed
    else:
        assert outcome.startswith("tw-")
        assert outcome.isascii()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/chat/completions", True),
        ("/v1/models", True),
        ("/v1/files/file-abc/content", True),
        ("/no/such/route", True),
        ("/", True),
        ("/v1/analyticsX", True),
        ("/v1/adminer", True),
        ("/healthz", False),
        ("/readyz", False),
        ("/openapi.json", False),
        ("/v1/analytics", False),
        ("/v1/analytics/spend_by_team", False),
        ("/admin/v1/teams", False),
        ("/admin/v1", False),
        ("/admin/keys", True),
        ("/v1/admin/teams", True),
    ],
)
def test_every_path_needs_a_key_except_probes_and_admin_routes(path: str, expected: bool) -> None:
    assert needs_key(path) is expected


@given(
    st.one_of(
        st.text(max_size=300),
        st.from_regex(r"tw-[A-Za-z0-9_-]{15,260}", fullmatch=True),
        st.builds(lambda body: "tw-" + body, st.text(max_size=260)),
    )
)
def test_the_key_shape_is_exactly_the_tenancy_modules(text: str) -> None:
    assert (KEY_RE.fullmatch(text) is not None) is is_importable_key(text)
