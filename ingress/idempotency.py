"""`Idempotency-Key` on POST endpoints: the rules, the entry, the store seam. Pure.

A client that sends a POST again with the same `Idempotency-Key` (a retry after a
timeout, a crash, a lost connection) gets the first answer again instead of a second
execution:

=============================================  ===========================================
the key (per team) ...                         answer
=============================================  ===========================================
is new                                         the request runs; its response is kept for
                                               `retention` (24 h) when it is `storable`
has a kept response, same request              that response replayed (status, body,
                                               headers) with `idempotent-replayed: true`
has a kept response, another request           422 `idempotency_key_reused`
is running on this replica                     409 `idempotency_key_in_progress`
was answered with a response too large to      409 `idempotency_response_unavailable`
keep (> `max_response_bytes`), same request    (it ran; it is not run again)
is over 255 characters or not printable ASCII  400 `invalid_idempotency_key`
comes with `"stream": true`                    400 `idempotency_stream_unsupported`
=============================================  ===========================================

"The same request" is the SHA-256 of method, path and body (`RequestHasher`).
Streamed answers (server-sent events) are never kept, so a key on a streaming request
is refused rather than silently not honoured. Kept: 2xx and 4xx answers, except those
that depend on the moment rather than on the request (401, 403, 408, 409, 425, 429);
never 5xx (nothing was accepted, or the outcome is unknown: the retry must run).

Where entries live is the store's business (`IdempotencyStore`): `MemoryIdempotencyStore`
here for tests, `KafkaIdempotencyStore` (ingress/idempotency_kafka.py) in production,
shared by every ingress replica through the compacted `tollway.idempotency` topic. The
ASGI wiring is ingress/idempotency_middleware.py; docs/decisions/0006-batches.md has
the decisions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Protocol

import orjson

from schemas.errors import InvalidRequest, TollwayError

HEADER: Final = "idempotency-key"
REPLAYED_HEADER: Final = "idempotent-replayed"
MAX_KEY_CHARS: Final = 255
DEFAULT_RETENTION_S: Final = 24 * 3600
DEFAULT_MAX_RESPONSE_BYTES: Final = 1024 * 1024
SEED_SCOPE_KEY: Final = "tollway.idempotency_seed"
"""ASGI scope key under which the middleware hands the handler `request_seed(...)`."""

#: Answers that say more about the moment than about the request: never kept.
_TRANSIENT_STATUSES: Final = frozenset({401, 403, 408, 409, 425, 429})
#: Response headers not replayed: the server recomputes or owns them.
_UNKEPT_HEADERS: Final = frozenset(
    {
        "content-length",
        "date",
        "server",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "set-cookie",
        REPLAYED_HEADER,
    }
)

Headers = tuple[tuple[str, str], ...]


# --- errors (OpenAI error format, through the typed tree) --------------------------------


class InvalidIdempotencyKey(InvalidRequest):
    code = "invalid_idempotency_key"


class IdempotencyStreamUnsupported(InvalidRequest):
    code = "idempotency_stream_unsupported"


class IdempotencyKeyReused(InvalidRequest):
    """The key was used before with another request (method, path or body differ)."""

    http_status = 422
    code = "idempotency_key_reused"


class IdempotencyKeyInProgress(TollwayError):
    """A request with this key is still running: retry once it has finished."""

    http_status = 409
    error_type = "invalid_request_error"
    code = "idempotency_key_in_progress"
    retriable = True

    def headers(self) -> dict[str, str]:
        return {"retry-after": "1"}


class IdempotentResponseUnavailable(TollwayError):
    """The request ran, but its response was too large to keep: it is not run again."""

    http_status = 409
    error_type = "invalid_request_error"
    code = "idempotency_response_unavailable"


# --- the rules --------------------------------------------------------------------------------


def validate_key(raw: str) -> str:
    """The key as sent, if it is 1..255 printable ASCII characters (space included)."""
    if not 0 < len(raw) <= MAX_KEY_CHARS or not all(" " <= c <= "~" for c in raw):
        raise InvalidIdempotencyKey(
            f"The {HEADER} header must be 1 to {MAX_KEY_CHARS} printable ASCII characters.",
            param=HEADER,
        )
    return raw


def store_key(team_id: str, key: str) -> str:
    """`<team>/<key>`: team ids never contain `/`, so the split is unambiguous."""
    return f"{team_id}/{key}"


class RequestHasher:
    """SHA-256 over method, path and body, fed as the body arrives (bounded memory)."""

    def __init__(self, method: str, path: str) -> None:
        head = f"{method.upper()}\n{len(path)}:{path}\n".encode("utf-8", "surrogateescape")
        self._sha = hashlib.sha256(head)

    def update(self, chunk: bytes) -> None:
        self._sha.update(chunk)

    def digest(self) -> bytes:
        return self._sha.digest()


def request_hash(method: str, path: str, body: bytes) -> bytes:
    hasher = RequestHasher(method, path)
    hasher.update(body)
    return hasher.digest()


def request_seed(team_id: str, key: str, digest: bytes) -> str:
    """What an idempotent submission's request id is derived from (`ids.new_request_id`).

    The same (team, key, request) always gives the same request id, so two replicas
    that both run a new key publish one request id twice and every reader downstream
    keeps one result (docs/decisions/0006-batches.md). The request hash is part of it
    so that a key reused for another request after the retention never collides with
    the old request's result.
    """
    return hashlib.sha256(f"{len(team_id)}:{team_id}|{key}|".encode() + digest).hexdigest()


def storable(status: int) -> bool:
    """Whether an answer with this status is kept for replay (module docstring)."""
    return 200 <= status < 500 and status not in _TRANSIENT_STATUSES


def kept_headers(headers: Iterable[tuple[str, str]]) -> Headers:
    """The response headers a replay repeats (names lower-cased)."""
    return tuple((n.lower(), v) for n, v in headers if n.lower() not in _UNKEPT_HEADERS)


def asks_for_stream(body: bytes) -> bool:
    """Whether a JSON body asks for a streamed answer (`"stream": true` at the top level)."""
    if b'"stream"' not in body:
        return False
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False  # the handler reports the syntax error
    return isinstance(parsed, dict) and parsed.get("stream") is True


# --- entries and their store ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """A finished request kept under its key.

    `body` is None when the response was larger than `max_response_bytes`: the key
    still remembers the request (`request_hash`) and its `status`, so a retry is not
    run again (409) and another request under the key is refused (422).
    """

    team_id: str
    key: str
    request_hash: bytes
    status: int
    headers: Headers
    body: bytes | None
    body_bytes: int
    created_at_ms: int
    expires_at_ms: int

    def expired(self, now_ms: int) -> bool:
        return now_ms >= self.expires_at_ms


def resolve(entry: Entry, digest: bytes) -> Entry:
    """The entry to replay for a request with hash `digest`, or the error to answer."""
    if digest != entry.request_hash:
        raise IdempotencyKeyReused(
            f"This {HEADER} was already used with a different request (method, path or body). "
            "Use a new key for a new request.",
            param=HEADER,
        )
    if entry.body is None:
        raise IdempotentResponseUnavailable(
            f"A request with this {HEADER} already ran (status {entry.status}), but its "
            f"response ({entry.body_bytes} bytes) was too large to keep; it is not run again.",
            param=HEADER,
        )
    return entry


class IdempotencyStore(Protocol):
    """Finished entries by (team, key), shared by every replica that uses the store."""

    async def lookup(self, team_id: str, key: str, now_ms: int) -> Entry | None:
        """The unexpired entry of the key, if any. Raises `ServiceUnavailable` when the
        store cannot tell (answering as if the key were new could run a request twice)."""
        ...

    async def save(self, entry: Entry) -> bool:
        """Keep `entry` unless the key already has an unexpired one (the first is kept);
        False in that case."""
        ...


class MemoryIdempotencyStore:
    """`IdempotencyStore` in a dict, for unit tests (and a single-process ingress)."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    async def lookup(self, team_id: str, key: str, now_ms: int) -> Entry | None:
        entry = self.entries.get(store_key(team_id, key))
        return None if entry is None or entry.expired(now_ms) else entry

    async def save(self, entry: Entry) -> bool:
        name = store_key(entry.team_id, entry.key)
        current = self.entries.get(name)
        if current is not None and not current.expired(entry.created_at_ms):
            return False
        self.entries[name] = entry
        return True
