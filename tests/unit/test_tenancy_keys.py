"""Virtual keys (workers/tenancy/keys.py): shape, digest, comparison, pepper; the pepper file."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.tenancy import keys, names
from workers.tenancy.keys import (
    IssuedKey,
    Pepper,
    PepperError,
    digests_match,
    display_prefix,
    is_generated_key,
    is_importable_key,
    issue_key,
    new_key_id,
    new_plain_key,
    verify,
)
from workers.tenancy.pepper_file import ensure_pepper_file

PEPPER_TEXT = "unit-test-pepper-0123456789abcdef-xyz"


def counting_bytes() -> Callable[[int], bytes]:
    """Deterministic 'random' bytes: 0, 1, 2, ... (mod 256)."""
    state = {"next": 0}

    def take(n: int) -> bytes:
        start = state["next"]
        state["next"] += n
        return bytes((start + i) % 256 for i in range(n))

    return take


def test_plain_key_shape_is_tw_and_43_urlsafe_chars() -> None:
    key = new_plain_key(lambda n: b"\xff" * n)
    assert key == "tw-" + "_" * 42 + "8"  # 32 x 0xff in url-safe base64, unpadded
    assert len(key) == 46
    assert is_generated_key(key)


def test_key_id_is_key_underscore_and_16_hex() -> None:
    assert new_key_id(lambda n: bytes(range(n))) == "key_0001020304050607"
    assert names.is_key_id(new_key_id())


def test_real_keys_differ_and_have_the_documented_shape() -> None:
    made = {new_plain_key() for _ in range(200)}
    assert len(made) == 200
    assert all(is_generated_key(k) for k in made)


def test_digest_is_hmac_sha256_of_the_key_under_the_pepper() -> None:
    pepper = Pepper(PEPPER_TEXT)
    key = "tw-" + "a" * 43
    expected = hmac.new(PEPPER_TEXT.encode(), key.encode(), hashlib.sha256).hexdigest()
    assert pepper.digest(key) == expected
    assert keys.is_digest(expected)
    assert Pepper(PEPPER_TEXT + "x").digest(key) != expected  # the pepper matters


def test_issue_key_returns_matching_parts_and_hides_the_key_in_repr() -> None:
    pepper = Pepper(PEPPER_TEXT)
    issued = issue_key(pepper, counting_bytes())
    assert isinstance(issued, IssuedKey)
    assert issued.key_digest == pepper.digest(issued.plain_key)
    assert issued.display_prefix == issued.plain_key[:8]
    assert issued.plain_key not in repr(issued)
    assert verify(pepper, issued.plain_key, issued.key_digest)
    assert not verify(pepper, issued.plain_key + "x", issued.key_digest)


def test_display_prefix_is_the_first_eight_characters() -> None:
    assert display_prefix("tw-AbCdEfGh") == "tw-AbCdE"


@given(st.text(max_size=80), st.text(max_size=80))
def test_digests_match_is_plain_equality(a: str, b: str) -> None:
    assert digests_match(a, b) == (a == b)


def test_pepper_refuses_short_or_unprintable_values_without_echoing_them() -> None:
    for bad in ("short", "x" * 31, "with space " + "x" * 30, "é" * 40):
        with pytest.raises(PepperError) as caught:
            Pepper(bad)
        assert bad not in str(caught.value)
    assert "*" in repr(Pepper(PEPPER_TEXT))
    assert PEPPER_TEXT not in repr(Pepper(PEPPER_TEXT))


def test_pepper_from_env_requires_the_setting() -> None:
    with pytest.raises(PepperError, match="TOLLWAY_KEY_PEPPER is not set"):
        Pepper.from_env({})
    assert Pepper.from_env({"TOLLWAY_KEY_PEPPER": PEPPER_TEXT}).digest("k") == Pepper(
        PEPPER_TEXT
    ).digest("k")


@pytest.mark.parametrize(
    ("text", "generated", "importable"),
    [
        ("tw-" + "A" * 43, True, True),
        ("tw-" + "A" * 42, False, True),
        ("tw-" + "A" * 44, False, True),
        ("tw-" + "A" * 20, False, False),  # 23 characters: too short to import
        ("tw-" + "A" * 21, False, True),
        ("tw-" + "A" * 254, False, False),
        ("sk-" + "A" * 43, False, False),
        ("tw-" + "A" * 42 + "=", False, False),
        ("tw-" + "A" * 42 + " ", False, False),
        ("tw-" + "A" * 42 + "\n", False, False),
        ("", False, False),
    ],
)
def test_key_syntax(text: str, generated: bool, importable: bool) -> None:
    assert is_generated_key(text) == generated
    assert is_importable_key(text) == importable


def test_pepper_file_is_created_once_owner_only_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "key-pepper"
    first = ensure_pepper_file(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    Pepper(first)  # strong enough
    assert ensure_pepper_file(path) == first  # never replaced


def test_a_broken_pepper_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key-pepper"
    path.write_text("short\n")
    with pytest.raises(PepperError):
        ensure_pepper_file(path)
