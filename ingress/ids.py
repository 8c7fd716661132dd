"""Request ids that the ingress can verify without state.

    req_<24 hex random><16 hex tag>,  tag = HMAC-SHA256(secret, team_id | random)[:8 bytes]

An id proves it was issued by a Tollway ingress for that team, so
`GET /v1/async/requests/{id}` can answer "queued" for a real id that has no
result yet, and 404 for a made-up one or another team's, without any lookup.
Pure: the secret is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Final

_PREFIX: Final = "req_"
_ID_RE: Final = re.compile(r"^req_([0-9a-f]{24})([0-9a-f]{16})$")


def _tag(secret: bytes, team_id: str, random_hex: str) -> str:
    mac = hmac.new(secret, f"{team_id}|{random_hex}".encode(), hashlib.sha256)
    return mac.hexdigest()[:16]


def new_request_id(secret: bytes, team_id: str, seed: str | None = None) -> str:
    """A fresh id; with `seed` (an Idempotency-Key submission, ingress/idempotency.py)
    the same seed always gives the same id, so a duplicate is one request downstream."""
    if seed is None:
        random_hex = secrets.token_hex(12)
    else:
        random_hex = hmac.new(secret, f"seed|{seed}".encode(), hashlib.sha256).hexdigest()[:24]
    return f"{_PREFIX}{random_hex}{_tag(secret, team_id, random_hex)}"


def verify_request_id(secret: bytes, team_id: str, request_id: str) -> bool:
    """True only for a well-formed id issued for `team_id` under `secret`."""
    match = _ID_RE.fullmatch(request_id)
    if match is None:
        return False
    return hmac.compare_digest(match.group(2), _tag(secret, team_id, match.group(1)))
