"""The admin credential of the admin routes (`/v1/analytics/...`). Pure: no I/O, no framework.

One shared secret, `TOLLWAY_ADMIN_KEY`, presented as `Authorization: Bearer <key>`.
It is an operator's credential, never a virtual key: tenancy's keys (issue 7) are
checked elsewhere and can never pass this check.

    key unset                 -> PermissionDenied (403): the admin routes are switched off
    no / non-Bearer header    -> AdminAuthenticationFailed (401)
    wrong key                 -> AdminAuthenticationFailed (401)

Guarantees: the comparison takes the same time whatever the presented value
(both sides are hashed to 32 bytes first, then `hmac.compare_digest`, so neither
content nor length leaks through timing); no error message contains the presented
or the configured key.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from schemas.errors import AuthenticationFailed, PermissionDenied

KEY_SETTING: Final = "TOLLWAY_ADMIN_KEY"


class AdminAuthenticationFailed(AuthenticationFailed):
    """401 for the admin routes; tells the client which scheme to use."""

    def headers(self) -> dict[str, str]:
        return {"www-authenticate": 'Bearer realm="tollway-admin"'}


class AdminKey:
    """The configured admin key, kept as its SHA-256 digest (the plain key is not retained)."""

    __slots__ = ("_digest",)

    def __init__(self, key: str) -> None:
        self._digest = hashlib.sha256(key.encode()).digest()

    def __repr__(self) -> str:
        return "AdminKey('**********')"

    def matches(self, presented: str) -> bool:
        """Constant time in the presented value's content and length."""
        return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), self._digest)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive)."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def check_admin(authorization: str | None, key: AdminKey | None, *, what: str) -> None:
    """Raise unless `authorization` carries the admin key; `what` names the switched-off routes."""
    if key is None:
        raise PermissionDenied(f"{what} is disabled until {KEY_SETTING} is set on the ingress.")
    token = bearer_token(authorization)
    if token is None:
        raise AdminAuthenticationFailed(
            f"Missing admin credential: send `Authorization: Bearer <{KEY_SETTING}>`."
        )
    if not key.matches(token):
        raise AdminAuthenticationFailed("Invalid admin credential.")
