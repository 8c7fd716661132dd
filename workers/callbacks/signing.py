"""Standard Webhooks signatures (https://www.standardwebhooks.com). Pure.

    webhook-id         stable for one message across every retry and replay
    webhook-timestamp  Unix seconds of this attempt
    webhook-signature  "v1,<base64 HMAC-SHA256(key, f'{id}.{timestamp}.{body}')>", one per
                       active secret, space-separated (two while a secret is rotated)

A secret is `whsec_` + base64 of at least 24 random bytes. Secrets are values
here; the dispatcher reads them from its settings, never from a topic.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from typing import Final

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - a prefix, not a secret
MIN_SECRET_BYTES: Final = 24
DEFAULT_TOLERANCE_S: Final = 300


class InvalidSecret(ValueError):
    """Not `whsec_` + base64, or shorter than `MIN_SECRET_BYTES` bytes."""


def new_secret(size: int = 32) -> str:
    return (
        SECRET_PREFIX + base64.b64encode(secrets.token_bytes(max(size, MIN_SECRET_BYTES))).decode()
    )


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_...` secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidSecret(f"a webhook secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidSecret("a webhook secret is base64 after its prefix") from exc
    if len(key) < MIN_SECRET_BYTES:
        raise InvalidSecret(f"a webhook secret has at least {MIN_SECRET_BYTES} bytes")
    return key


def signature(key: bytes, msg_id: str, timestamp_s: int, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{timestamp_s}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def sign_headers(
    keys: Sequence[bytes], msg_id: str, timestamp_s: int, body: bytes
) -> dict[str, str]:
    """The three headers; one signature per key (the first key is the current one)."""
    if not keys:
        raise InvalidSecret("at least one signing secret is needed")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp_s),
        "webhook-signature": " ".join(signature(k, msg_id, timestamp_s, body) for k in keys),
    }


def verify(
    key: bytes,
    headers: Mapping[str, str],
    body: bytes,
    now_s: int,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> bool:
    """A receiver's check: some v1 signature matches and the timestamp is recent."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get("webhook-id")
    timestamp = lower.get("webhook-timestamp", "")
    if not msg_id or not timestamp.isdigit() or abs(now_s - int(timestamp)) > tolerance_s:
        return False
    expected = signature(key, msg_id, int(timestamp), body)
    return any(
        hmac.compare_digest(expected, candidate)
        for candidate in lower.get("webhook-signature", "").split(" ")
    )
