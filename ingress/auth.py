"""Who is calling: virtual keys resolved to a team at the edge of the ingress.

    request --AuthMiddleware--> scope["tollway.principal"] = Principal --> handlers
                   |  401 invalid_api_key (OpenAI error format; Anthropic's on /v1/messages)

`TOLLWAY_AUTH` chooses the mode (ingress/settings.py):

    keys (default)  the presented key (ingress/credentials.py: strict format, Authorization
                    or, on /v1/messages, x-api-key) is digested (HMAC-SHA256 with the pepper,
                    workers/tenancy/keys.py) and looked up in the `TenancyView`; it must be
                    active (not revoked, not expired) and its team must exist.
    open            development only: no key is read, every caller is team `default` with
                    no key (the ingress logs a warning at start).

The middleware runs before everything else on the request path (the Idempotency-Key
middleware included, which scopes keys by the caller's team); an inner instance finds
the principal already in the scope and lets the request through. The health probes
and the admin routes (own credential) need no key (`credentials.needs_key`); every
other path does, known or not, so an unknown path without a key is a 401, not a 404.

Secrets: the plain key lives only in the header being read and in `presented_key`'s
return value; it is never logged, stored or echoed (errors carry fixed messages).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from ingress.anthropic_answer import error_body as anthropic_error_body
from ingress.credentials import (
    ANTHROPIC_KEY_PATHS,
    INVALID_MESSAGE,
    InvalidApiKey,
    needs_key,
    presented_key,
)
from schemas.errors import AuthenticationFailed
from workers.tenancy.model import Caller, KeyRecord, TagPolicy, TeamRecord, TenancyView

log = logging.getLogger("tollway.ingress.auth")

AuthMode = Literal["keys", "open"]
OPEN_TEAM: Final = "default"
PRINCIPAL_SCOPE_KEY: Final = "tollway.principal"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: its ids (`caller`, with the key's tags) and the records
    that governance reads (None in open mode, or for a team the config does not know)."""

    caller: Caller
    team: TeamRecord | None
    key: KeyRecord | None

    @property
    def team_id(self) -> str:
        return self.caller.team_id

    @property
    def key_id(self) -> str | None:
        return self.caller.key_id


class Authenticator:
    """Resolves credential headers to a `Principal` (module docstring). No I/O: the view
    is in memory and `digest` is a keyed hash."""

    def __init__(
        self,
        mode: AuthMode,
        view: TenancyView | None = None,
        digest: Callable[[str], str] | None = None,
        *,
        clock_ms: Callable[[], int] = wall_ms,
    ) -> None:
        if mode == "keys" and (view is None or digest is None):
            raise ValueError("TOLLWAY_AUTH=keys needs the tenancy view and the key digest")
        self.mode = mode
        self.view = view
        self._digest = digest
        self._clock_ms = clock_ms

    def authenticate(
        self, authorization: Sequence[str], x_api_key: Sequence[str], *, accept_x_api_key: bool
    ) -> Principal:
        """Raises `InvalidApiKey` (401) unless the headers carry an active key of a known team."""
        if self.mode == "open":
            team = self.view.team(OPEN_TEAM) if self.view is not None else None
            return Principal(Caller(OPEN_TEAM, None), team, None)
        assert self.view is not None
        assert self._digest is not None
        key = presented_key(authorization, x_api_key, accept_x_api_key=accept_x_api_key)
        record = self.view.key_by_digest(self._digest(key))
        if record is None or not record.is_active(self._clock_ms()):
            raise InvalidApiKey(INVALID_MESSAGE)
        team = self.view.team(record.team_id)
        if team is None:
            raise InvalidApiKey(INVALID_MESSAGE)
        return Principal(Caller(team.team_id, record.key_id, tags=record.tags), team, record)

    def tag_policy(self, tag: str) -> TagPolicy | None:
        return self.view.tag_policy(tag) if self.view is not None else None


def open_authenticator(view: TenancyView | None = None) -> Authenticator:
    """Open mode: every caller is team `default` (development and tests)."""
    return Authenticator("open", view)


def warn_if_open(authenticator: Authenticator) -> None:
    if authenticator.mode == "open":
        log.warning(
            "TOLLWAY_AUTH=open: the ingress checks NO API key; every caller is team %r. "
            "Development only: set TOLLWAY_AUTH=keys (the default) anywhere else.",
            OPEN_TEAM,
        )


def _header_values(scope: Scope, names: frozenset[bytes]) -> dict[bytes, list[str]]:
    found: dict[bytes, list[str]] = {name: [] for name in names}
    for name, value in scope.get("headers", ()):
        lowered = bytes(name).lower()
        if lowered in found:
            found[lowered].append(bytes(value).decode("latin-1"))
    return found


_CREDENTIAL_HEADERS: Final = frozenset({b"authorization", b"x-api-key"})


def _error_body(path: str, error: AuthenticationFailed) -> bytes:
    if path in ANTHROPIC_KEY_PATHS:
        return orjson.dumps(anthropic_error_body(error.http_status, error.message))
    return orjson.dumps(error.to_body())


class AuthMiddleware:
    """ASGI middleware: authenticate, put the `Principal` in the scope, or answer 401."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or PRINCIPAL_SCOPE_KEY in scope or not needs_key(scope["path"]):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        headers = _header_values(scope, _CREDENTIAL_HEADERS)
        try:
            principal = self.authenticator.authenticate(
                headers[b"authorization"],
                headers[b"x-api-key"],
                accept_x_api_key=path in ANTHROPIC_KEY_PATHS,
            )
        except AuthenticationFailed as exc:
            body = _error_body(path, exc)
            raw_headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *((n.encode("latin-1"), v.encode("latin-1")) for n, v in exc.headers().items()),
            ]
            await send({"type": "http.response.start", "status": 401, "headers": raw_headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        await self.app({**scope, PRINCIPAL_SCOPE_KEY: principal}, receive, send)


def principal_in(scope: Scope) -> Principal:
    """The principal the middleware put in `scope`; a route reached without it is a bug."""
    principal = scope.get(PRINCIPAL_SCOPE_KEY)
    if not isinstance(principal, Principal):
        raise TypeError("no authenticated principal: the route is not behind AuthMiddleware")
    return principal


OPEN_PRINCIPAL: Final = Principal(Caller(OPEN_TEAM, None), None, None)


def principal_or_open(scope: Scope) -> Principal:
    """The principal in `scope`; without AuthMiddleware in front (a bare test app, or a
    middleware that runs outside it) there is no caller to tell apart: open mode's."""
    principal = scope.get(PRINCIPAL_SCOPE_KEY)
    return principal if isinstance(principal, Principal) else OPEN_PRINCIPAL


def team_in_scope(scope: Scope) -> str:
    """The caller's team (`principal_or_open`), e.g. for the Idempotency-Key middleware."""
    return principal_or_open(scope).team_id
