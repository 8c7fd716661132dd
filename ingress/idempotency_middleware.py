"""ASGI middleware: `Idempotency-Key` on the ingress's POST endpoints.

Wraps the whole ingress app (`server.py`): requests without the header, other
methods and other paths pass through untouched. The rules are ingress/idempotency.py;
this module moves the bytes:

- JSON endpoints (chat sync and async, /v1/messages, /v1/embeddings, /v1/batches and
  cancel) are read whole first (bounded by `max_body_bytes`), so the request hash is
  known before the handler runs: a replay or a 422 answers at once, a streaming request
  is refused, and the handler gets the hash-derived seed of its request id in the scope
  (`SEED_SCOPE_KEY`).
- `/v1/files` uploads (up to 200 MB) are never held in memory: the hash is computed as
  the handler reads the body, over the form's fields and file rather than its bytes
  (`FormHasher`: a retry has a new multipart boundary). An upload is kept only when
  the handler read all of it.

A new key is claimed on this replica before the first await (a concurrent duplicate
gets 409) and released when the request is over. A storable answer is kept in the
store BEFORE it is sent, so any answer a client has seen can be replayed; answers
larger than `max_response_bytes` are sent as they come and kept as a marker (no
body). If the store cannot keep the entry the answer is still sent (the request ran)
and the failure is logged: a retry with that key then runs again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, Literal, Protocol

import orjson
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingress.auth import team_in_scope
from ingress.files_api import MultipartStream, Part, boundary_of
from ingress.idempotency import (
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_RETENTION_S,
    HEADER,
    REPLAYED_HEADER,
    SEED_SCOPE_KEY,
    Entry,
    IdempotencyKeyInProgress,
    IdempotencyStore,
    IdempotencyStreamUnsupported,
    RequestHasher,
    asks_for_stream,
    kept_headers,
    request_hash,
    request_seed,
    resolve,
    storable,
    store_key,
    validate_key,
)
from schemas.errors import BodyTooLarge, TollwayError

log = logging.getLogger("tollway.ingress.idempotency")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Mode = Literal["buffered", "streamed"]

BUFFERED_PATHS: Final = re.compile(
    r"/v1/(?:chat/completions|async/chat/completions|messages|embeddings"
    r"|batches|batches/[^/]+/cancel)"
)
STREAMED_PATHS: Final = re.compile(r"/v1/files")
_KEY_HEADER: Final = HEADER.encode()


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def default_team(scope: Scope) -> str:
    """The caller's team: keys are scoped per team, so one team can never replay (or even
    detect) another team's key. The ingress runs this middleware INSIDE AuthMiddleware
    (ingress/server.py), which has put the principal in the scope."""
    return team_in_scope(scope)


class _ClientGone(Exception):
    """The client disconnected while its body was being read."""


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def _send_response(
    send: Send, status: int, headers: list[tuple[str, str]], body: bytes
) -> None:
    raw = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(send: Send, error: TollwayError) -> None:
    headers = [("content-type", "application/json"), *error.headers().items()]
    await _send_response(send, error.http_status, headers, orjson.dumps(error.to_body()))


class Hasher(Protocol):
    def update(self, chunk: bytes) -> None: ...

    def digest(self) -> bytes: ...


class FormHasher:
    """The request hash of a multipart upload: its fields and file, not its bytes.

    Clients draw a new random boundary for every attempt (the openai SDK rebuilds the
    request on each retry), so hashing the raw body would turn every retry into
    "another request". What is hashed is, per part in order: its name, its filename
    and the SHA-256 of its content. Raises `InvalidRequest` for a malformed body.
    """

    def __init__(self, method: str, path: str, content_type: str | None) -> None:
        self._outer = RequestHasher(method, path)
        self._parser = MultipartStream(boundary_of(content_type))
        self._part: hashlib._Hash | None = None

    def update(self, chunk: bytes) -> None:
        for event in self._parser.feed(chunk):
            if isinstance(event, Part):
                for text in (event.name, event.filename):
                    raw = b"\xff" if text is None else text.encode("utf-8", "surrogateescape")
                    self._outer.update(len(raw).to_bytes(8, "big") + raw)
                self._part = hashlib.sha256()
            elif event is None:
                if self._part is not None:
                    self._outer.update(self._part.digest())
                self._part = None
            elif self._part is not None:
                self._part.update(event)

    def digest(self) -> bytes:
        return self._outer.digest()


async def _read_all(receive: Receive, limit_bytes: int, hasher: Hasher | None) -> bytes:
    """The whole body (kept only when `hasher` is None), refusing past `limit_bytes`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit_bytes:
            raise BodyTooLarge(f"The request body exceeds the limit of {limit_bytes} bytes.")
        if hasher is None:
            chunks.append(chunk)
        else:
            hasher.update(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the already-read body once, then defers to the real one."""
    given = False

    async def again() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


class _HashingReceive:
    """Feeds the body to the hasher as the handler reads it; knows whether it read all."""

    def __init__(self, receive: Receive, make_hasher: Callable[[], Hasher]) -> None:
        self._receive = receive
        self.hasher: Hasher | None = None
        with contextlib.suppress(TollwayError):  # not an upload: the handler says why
            self.hasher = make_hasher()
        self.complete = False

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request" and self.hasher is not None:
            try:
                self.hasher.update(message.get("body", b""))
            except TollwayError:
                self.hasher = None
            if not message.get("more_body", False):
                self.complete = True
        return message

    def digest(self) -> bytes | None:
        """The hash, if the handler read the whole (well-formed) body."""
        return self.hasher.digest() if self.complete and self.hasher is not None else None


class _Capture:
    """Holds a storable answer until it is kept; passes anything else straight through."""

    def __init__(self, send: Send, limit_bytes: int) -> None:
        self._send = send
        self._limit = limit_bytes
        self._start: Message | None = None
        self._chunks: list[bytes] = []
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.size = 0
        self.complete = False
        self.passthrough = False
        self.oversize = False

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self._start = message
            self.status = int(message["status"])
            self.headers = [
                (bytes(n).decode("latin-1"), bytes(v).decode("latin-1"))
                for n, v in message.get("headers", ())
            ]
            content_type = next((v for n, v in self.headers if n.lower() == "content-type"), "")
            if not storable(self.status) or content_type.startswith("text/event-stream"):
                self.passthrough = True
                await self._send(message)
            return
        if kind != "http.response.body":
            await self._send(message)
            return
        chunk = message.get("body", b"")
        self.size += len(chunk)
        self.complete = not message.get("more_body", False)
        if not self.passthrough and self.size > self._limit:
            self.passthrough = self.oversize = True
            await self._flush(more_body=True)
        if self.passthrough:
            await self._send(message)
        else:
            self._chunks.append(chunk)

    async def _flush(self, *, more_body: bool) -> None:
        if self._start is not None:
            await self._send(self._start)
            self._start = None
        body = b"".join(self._chunks)
        self._chunks = []
        if body or not more_body:
            await self._send({"type": "http.response.body", "body": body, "more_body": more_body})

    async def release(self) -> None:
        """Send what was held (after the entry was kept, or could not be)."""
        if not self.passthrough and self._start is not None:
            await self._flush(more_body=False)

    @property
    def body(self) -> bytes:
        return b"".join(self._chunks)


class IdempotencySettings(BaseSettings):
    """`Idempotency-Key` settings (env prefix `TOLLWAY_IDEMPOTENCY_`), parsed once."""

    model_config = SettingsConfigDict(
        env_prefix="TOLLWAY_IDEMPOTENCY_", frozen=True, extra="ignore"
    )

    enabled: bool = Field(default=True, description="Honour the Idempotency-Key header.")
    retention_s: float = Field(
        default=float(DEFAULT_RETENTION_S),
        gt=0,
        le=48 * 3600.0,
        description="How long a key's response is kept (the topic keeps records 48 h).",
    )
    max_response_bytes: int = Field(
        default=DEFAULT_MAX_RESPONSE_BYTES,
        ge=1024,
        le=1536 * 1024,
        description="Larger responses are not kept: the key then answers 409 to a retry.",
    )
    index_max: int = Field(
        default=1_000_000,
        ge=1_000,
        description="Keys indexed in memory per replica (~200 bytes each); past it the "
        "oldest are forgotten first (and logged), and a retry of those runs again.",
    )
    catch_up_timeout_s: float = Field(
        default=3.0, gt=0, description="How long a lookup may wait to read a partition's end."
    )


class IdempotencyMiddleware:
    """The ASGI wrapper (module docstring). One instance per ingress replica."""

    def __init__(
        self,
        app: ASGIApp,
        store: IdempotencyStore,
        *,
        max_body_bytes: int,
        max_upload_bytes: int,
        retention_s: float = DEFAULT_RETENTION_S,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        team_of: Callable[[Scope], str] = default_team,
        clock_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.app = app
        self.store = store
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        self.retention_ms = int(retention_s * 1000)
        self.max_response_bytes = max_response_bytes
        self.team_of = team_of
        self.clock_ms = clock_ms
        self.in_flight: set[str] = set()

    @staticmethod
    def _mode(scope: Scope) -> Mode | None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path = scope["path"]
        if BUFFERED_PATHS.fullmatch(path):
            return "buffered"
        if STREAMED_PATHS.fullmatch(path):
            return "streamed"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        mode = self._mode(scope)
        raw_key = _header(scope, _KEY_HEADER) if mode is not None else None
        if mode is None or raw_key is None:
            await self.app(scope, receive, send)
            return
        try:
            key = validate_key(raw_key)
            team_id = self.team_of(scope)
            name = store_key(team_id, key)
            if name in self.in_flight:
                raise IdempotencyKeyInProgress(
                    f"A request with this {HEADER} is still being processed; retry later.",
                    param=HEADER,
                )
            self.in_flight.add(name)  # claimed before the first await
        except TollwayError as exc:
            await send_error(send, exc)
            return
        try:
            await self._run(mode, team_id, key, scope, receive, send)
        except _ClientGone:
            return
        finally:
            self.in_flight.discard(name)

    async def _run(  # noqa: PLR0917  # the ASGI triple plus what was decided on it
        self, mode: Mode, team_id: str, key: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        method, path = scope["method"], scope["path"]
        try:
            entry = await self.store.lookup(team_id, key, self.clock_ms())
            if mode == "buffered":
                body = await _read_all(receive, self.max_body_bytes, None)
                digest: bytes | None = request_hash(method, path, body)
            else:
                body = b""
                digest = None
                if entry is not None:
                    hasher = FormHasher(method, path, _header(scope, b"content-type"))
                    await _read_all(receive, self.max_upload_bytes, hasher)
                    digest = hasher.digest()
            if entry is not None:
                assert digest is not None
                await self._replay(resolve(entry, digest), send)
                return
            if mode == "buffered" and asks_for_stream(body):
                raise IdempotencyStreamUnsupported(
                    f"{HEADER} cannot be used with stream=true: streamed responses are not "
                    "kept. Send the request without the header, or without streaming.",
                    param="stream",
                )
        except TollwayError as exc:
            await send_error(send, exc)
            return
        capture = _Capture(send, self.max_response_bytes)
        if digest is not None:
            inner_scope = {**scope, SEED_SCOPE_KEY: request_seed(team_id, key, digest)}
            await self.app(inner_scope, _replaying(body, receive), capture.send)
        else:
            hashing = _HashingReceive(
                receive, lambda: FormHasher(method, path, _header(scope, b"content-type"))
            )
            await self.app(scope, hashing, capture.send)
            digest = hashing.digest()
        try:
            if digest is not None and capture.complete and storable(capture.status):
                await self._keep(team_id, key, digest, capture)
        finally:
            await capture.release()

    async def _keep(self, team_id: str, key: str, digest: bytes, capture: _Capture) -> None:
        if any(n.lower() == "content-type" and "event-stream" in v for n, v in capture.headers):
            return
        now = self.clock_ms()
        entry = Entry(
            team_id=team_id,
            key=key,
            request_hash=digest,
            status=capture.status,
            headers=kept_headers(capture.headers),
            body=None if capture.oversize else capture.body,
            body_bytes=capture.size,
            created_at_ms=now,
            expires_at_ms=now + self.retention_ms,
        )
        try:
            if not await self.store.save(entry):
                log.info("idempotency key of team %s was kept by another replica first", team_id)
        except TollwayError as exc:
            log.warning("idempotency entry not kept (%s): a retry will run again", exc.message)

    @staticmethod
    async def _replay(entry: Entry, send: Send) -> None:
        assert entry.body is not None  # `resolve` refused a marker
        headers = [*entry.headers, (REPLAYED_HEADER, "true")]
        await _send_response(send, entry.status, headers, entry.body)


def with_idempotency(
    app: ASGIApp,
    store: IdempotencyStore,
    settings: IdempotencySettings,
    *,
    max_body_bytes: int,
    max_upload_bytes: int,
) -> ASGIApp:
    """`app` behind the middleware, or `app` itself when the feature is switched off."""
    if not settings.enabled:
        return app
    return IdempotencyMiddleware(
        app,
        store,
        max_body_bytes=max_body_bytes,
        max_upload_bytes=max_upload_bytes,
        retention_s=settings.retention_s,
        max_response_bytes=settings.max_response_bytes,
    )
