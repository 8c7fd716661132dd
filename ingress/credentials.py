"""The virtual key a request presents, read strictly from its headers. Pure.

    Authorization: Bearer tw-<url-safe characters>    every endpoint that needs a key
    x-api-key: tw-<url-safe characters>               /v1/messages (the Anthropic SDK's way)

Strict on purpose (issue 7 lists what went wrong elsewhere: SQL injection through the
Authorization header, a Host-header bypass): a header value longer than
`MAX_CREDENTIAL_HEADER_CHARS` is refused without being looked at, a header sent twice is
refused, and the key must have a key's exact shape (workers/tenancy/keys.py: `tw-` and
url-safe characters, 43 for a generated key, 21-253 for one imported by the bootstrap)
before anything else happens to it. So an injection string, a NUL, a 10 kB value or
non-ASCII text is a plain 401 that reaches no lookup, no log line and no error body: no
message here contains the presented value. Only the listed headers count; the Host
header plays no part.

Which paths need a key (`needs_key`): every path except the health probes, the OpenAPI
document and the admin routes, which have their own credential (ingress/admin_auth.py).
Deny by default: a route added later needs a key unless it is named here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from schemas.errors import AuthenticationFailed
from workers.tenancy.keys import KEY_PREFIX, MAX_IMPORTED_KEY_CHARS, MIN_IMPORTED_KEY_CHARS

KEY_RE: Final = re.compile(
    rf"{KEY_PREFIX}[A-Za-z0-9_-]"
    rf"{{{MIN_IMPORTED_KEY_CHARS - len(KEY_PREFIX)},{MAX_IMPORTED_KEY_CHARS - len(KEY_PREFIX)}}}"
)
"""Exactly the keys `workers.tenancy.keys.is_importable_key` accepts (a test holds them
equal), as one compiled match: ~10x cheaper per request than the per-character check."""
MAX_CREDENTIAL_HEADER_CHARS: Final = MAX_IMPORTED_KEY_CHARS + 16
"""Longer Authorization / x-api-key values are refused unread (the longest key and its
scheme fit)."""

ANTHROPIC_KEY_PATHS: Final = frozenset({"/v1/messages"})
"""Where `x-api-key` is accepted (Anthropic's header); elsewhere only Authorization."""
PUBLIC_PATHS: Final = frozenset({"/healthz", "/readyz", "/openapi.json"})
ADMIN_PATH_PREFIXES: Final = ("/v1/analytics", "/admin/v1")
"""Routes behind the admin credential (`TOLLWAY_ADMIN_KEY`), never a virtual key."""

MISSING_MESSAGE: Final = (
    "Missing API key: send `Authorization: Bearer tw-...` (or `x-api-key: tw-...` on /v1/messages)."
)
INVALID_MESSAGE: Final = "Invalid API key (unknown, malformed, revoked or expired)."


class InvalidApiKey(AuthenticationFailed):
    """401 `invalid_api_key`; tells the client which scheme to use."""

    def headers(self) -> dict[str, str]:
        return {"www-authenticate": 'Bearer realm="tollway"'}


def needs_key(path: str) -> bool:
    """True unless `path` is a health probe or an admin route (deny by default)."""
    if path in PUBLIC_PATHS:
        return False
    return not any(path == p or path.startswith(f"{p}/") for p in ADMIN_PATH_PREFIXES)


def _single(values: Sequence[str]) -> str | None:
    """The one value of a header; a repeated header is ambiguous, hence invalid."""
    if not values:
        return None
    if len(values) > 1:
        raise InvalidApiKey(INVALID_MESSAGE)
    return values[0]


def _checked_key(candidate: str) -> str:
    if KEY_RE.fullmatch(candidate) is None:
        raise InvalidApiKey(INVALID_MESSAGE)
    return candidate


def _bearer(value: str) -> str:
    """The key of `Bearer <key>` (scheme case-insensitive, one or more spaces)."""
    scheme, _, token = value.strip(" \t").partition(" ")
    if scheme.lower() != "bearer":
        raise InvalidApiKey(INVALID_MESSAGE)
    return _checked_key(token.strip(" \t"))


def presented_key(
    authorization: Sequence[str], x_api_key: Sequence[str], *, accept_x_api_key: bool
) -> str:
    """The well-formed key a request presents, from every value of its credential headers.

    Raises `InvalidApiKey` (401) when there is none, when a header is repeated, too long
    or malformed, or when both headers are sent with different keys. `x_api_key` counts
    only with `accept_x_api_key` (the Anthropic surface); elsewhere it is ignored.
    """
    values = [*authorization, *(x_api_key if accept_x_api_key else ())]
    if any(len(v) > MAX_CREDENTIAL_HEADER_CHARS for v in values):
        raise InvalidApiKey(INVALID_MESSAGE)
    bearer = _single(authorization)
    header = _single(x_api_key) if accept_x_api_key else None
    from_bearer = _bearer(bearer) if bearer is not None else None
    from_header = _checked_key(header.strip(" \t")) if header is not None else None
    if from_bearer is not None and from_header is not None and from_bearer != from_header:
        raise InvalidApiKey(INVALID_MESSAGE)
    key = from_bearer or from_header
    if key is None:
        raise InvalidApiKey(MISSING_MESSAGE)
    return key
