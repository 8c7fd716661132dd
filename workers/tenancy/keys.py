"""Virtual keys: make them, digest them, compare them. Pure (randomness is injectable).

    plain key       tw-<43 url-safe base64 chars>   32 random bytes; shown once, never stored
    key id          key_<16 hex>                     8 random bytes; public, safe in logs and rows
    digest          hex HMAC-SHA256(pepper, key)     what the config topic and every view store
    display prefix  the first 8 characters           `tw-AbC12`, so a person can tell keys apart

Why HMAC with a pepper rather than a bare SHA-256: a copy of the config topic (a backup,
a mis-scoped consumer) is useless for checking guesses without the pepper, which lives
only in the services' environment (`TOLLWAY_KEY_PEPPER`). A 256-bit random key needs no
slow hash: brute force is out of reach either way, and a request-path HMAC costs ~1 us.

Changing the pepper invalidates every key (their digests no longer match): rotate keys,
not the pepper. `tollway up` creates one per local stack (workers/tenancy/pepper_file.py).

Guarantees: `digests_match` takes the same time whatever the inputs' content; nothing
here logs, and `Pepper`/`IssuedKey` hide their secrets from `repr`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from workers.tenancy.names import KEY_DIGEST

KEY_PREFIX: Final = "tw-"
KEY_RANDOM_BYTES: Final = 32
KEY_BODY_CHARS: Final = 43  # unpadded url-safe base64 of 32 bytes
KEY_ID_PREFIX: Final = "key_"
KEY_ID_RANDOM_BYTES: Final = 8
DISPLAY_PREFIX_CHARS: Final = 8
PEPPER_SETTING: Final = "TOLLWAY_KEY_PEPPER"
MIN_PEPPER_CHARS: Final = 32

_URLSAFE: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
MIN_IMPORTED_KEY_CHARS: Final = 24
MAX_IMPORTED_KEY_CHARS: Final = 256

RandomBytes = Callable[[int], bytes]


class PepperError(ValueError):
    """`TOLLWAY_KEY_PEPPER` is missing or too weak; the message never contains it."""


class Pepper:
    """The server-side secret of key digests. Kept as bytes; `repr` never shows it."""

    __slots__ = ("_secret",)

    def __init__(self, text: str) -> None:
        if len(text) < MIN_PEPPER_CHARS:
            raise PepperError(
                f"{PEPPER_SETTING} must be at least {MIN_PEPPER_CHARS} characters "
                "(e.g. `openssl rand -base64 32`)"
            )
        if not all("!" <= ch <= "~" for ch in text):
            raise PepperError(f"{PEPPER_SETTING} must be printable ASCII without spaces")
        self._secret = text.encode()

    def __repr__(self) -> str:
        return "Pepper('**********')"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Pepper:
        """The pepper of `environ` (pass `os.environ`); `PepperError` if unset or weak."""
        text = environ.get(PEPPER_SETTING, "")
        if not text:
            raise PepperError(
                f"{PEPPER_SETTING} is not set: virtual keys cannot be issued or checked. "
                "Set the same value on every ingress, router and admin replica."
            )
        return cls(text)

    def digest(self, plain_key: str) -> str:
        """Hex HMAC-SHA256 of `plain_key` under this pepper (64 lowercase hex chars)."""
        return hmac.new(self._secret, plain_key.encode(), hashlib.sha256).hexdigest()


def new_pepper(random: RandomBytes = secrets.token_bytes) -> str:
    """A fresh pepper: 32 random bytes as 43 url-safe characters."""
    return _urlsafe(random(32))


def _urlsafe(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def new_plain_key(random: RandomBytes = secrets.token_bytes) -> str:
    """`tw-` + 43 url-safe characters (32 random bytes)."""
    return KEY_PREFIX + _urlsafe(random(KEY_RANDOM_BYTES))


def new_key_id(random: RandomBytes = secrets.token_bytes) -> str:
    """`key_` + 16 hex characters (8 random bytes)."""
    return KEY_ID_PREFIX + random(KEY_ID_RANDOM_BYTES).hex()


def is_generated_key(text: str) -> bool:
    """Whether `text` has exactly the shape `new_plain_key` makes."""
    body = text.removeprefix(KEY_PREFIX)
    return (
        text.startswith(KEY_PREFIX)
        and len(body) == KEY_BODY_CHARS
        and all(ch in _URLSAFE for ch in body)
    )


def is_importable_key(text: str) -> bool:
    """Whether `text` may be brought in from outside (bootstrap `key_env`): `tw-` and
    21-253 url-safe characters, so a weak or odd value cannot become a key by accident."""
    body = text.removeprefix(KEY_PREFIX)
    return (
        text.startswith(KEY_PREFIX)
        and MIN_IMPORTED_KEY_CHARS <= len(text) <= MAX_IMPORTED_KEY_CHARS
        and all(ch in _URLSAFE for ch in body)
    )


def display_prefix(plain_key: str) -> str:
    """The first 8 characters (`tw-` + 5 of the random part): enough to tell keys apart,
    ~30 bits of a 256-bit key, so nothing an attacker can use."""
    return plain_key[:DISPLAY_PREFIX_CHARS]


def digests_match(presented_digest: str, stored_digest: str) -> bool:
    """Constant-time equality of two digests (any content; ASCII hex expected)."""
    return hmac.compare_digest(presented_digest.encode(), stored_digest.encode())


def is_digest(text: str) -> bool:
    return KEY_DIGEST.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key just made: the plain key exists only here and in the one answer that shows it."""

    key_id: str
    plain_key: str = field(repr=False)
    key_digest: str
    display_prefix: str


def issue_key(pepper: Pepper, random: RandomBytes = secrets.token_bytes) -> IssuedKey:
    """A new key id and plain key, with the digest and display prefix to store."""
    plain = new_plain_key(random)
    return IssuedKey(new_key_id(random), plain, pepper.digest(plain), display_prefix(plain))


def verify(pepper: Pepper, plain_key: str, stored_digest: str) -> bool:
    """Whether `plain_key` is the key behind `stored_digest` (constant-time compare)."""
    return digests_match(pepper.digest(plain_key), stored_digest)
