"""Files API (OpenAI-compatible): upload batch input files, read files back.

    POST /v1/files                 multipart/form-data: file=<JSONL>, purpose=batch
    GET  /v1/files/{file_id}       the FileObject
    GET  /v1/files/{file_id}/content  the bytes (input, output or error file)

An upload streams straight into the file store: the body is parsed as it arrives
(`MultipartStream`, no temporary copy in memory), the size limit is enforced
while streaming (413 as soon as it is passed, the partial object discarded), and
the file becomes visible only once complete (atomic commit). Lines are validated
later, by the batch worker, so that one bad line fails alone (OpenAI's behaviour).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from typing import Final

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ingress.auth import team_in_scope
from schemas.errors import BodyTooLarge, InvalidRequest, NotFound
from workers.batches import files
from workers.batches.filestore import FileStore, FileWriter
from workers.batches.jsonl import MAX_FILE_BYTES

MAX_FIELD_BYTES: Final = 1024
MAX_HEADER_BYTES: Final = 16 * 1024
SUPPORTED_PURPOSES: Final = frozenset({"batch"})
_BOUNDARY_RE: Final = re.compile(r'boundary="?([^";]{1,200})"?')
_DISPOSITION_RE: Final = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"|(\w+)=([^;\s]+)')

_UNSAFE_FILENAME_RE: Final = re.compile(r"[^A-Za-z0-9._ -]")

TeamOf = Callable[[Request], str]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def default_team(request: Request) -> str:
    """The authenticated caller's team (ingress/auth.py puts it in the scope; a file of
    another team answers 404). Behind no AuthMiddleware: open mode's team `default`."""
    return team_in_scope(request.scope)


def _json(content: object, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status, media_type="application/json")


# --- streaming multipart ---------------------------------------------------------------


class MultipartError(InvalidRequest):
    code = "invalid_multipart"


class Part:
    """The headers of one form part."""

    def __init__(self, name: str, filename: str | None) -> None:
        self.name = name
        self.filename = filename


Event = Part | bytes | None  # a new part, some of its data, the end of the part


class MultipartStream:
    """Incremental multipart/form-data parser: `feed` chunks, get events; bounded memory.

    Only the tail that could hold a split delimiter is kept between chunks.
    """

    def __init__(self, boundary: bytes) -> None:
        self._delimiter = b"\r\n--" + boundary
        self._buffer = b"\r\n"  # so the first delimiter matches like all later ones
        self._state = "preamble"

    @property
    def done(self) -> bool:
        return self._state == "end"

    def feed(self, chunk: bytes) -> Iterator[Event]:
        self._buffer += chunk
        while True:
            step = {
                "preamble": self._in_body,
                "body": self._in_body,
                "after_delimiter": self._after_delimiter,
                "headers": self._headers,
            }.get(self._state)
            if step is None:  # end: ignore the epilogue
                self._buffer = b""
                return
            events, more = step()
            yield from events
            if not more:
                return

    def _in_body(self) -> tuple[list[Event], bool]:
        """Data up to the next delimiter; keep only a tail that could start one."""
        events: list[Event] = []
        in_body = self._state == "body"
        at = self._buffer.find(self._delimiter)
        if at < 0:
            keep = len(self._delimiter) - 1
            if len(self._buffer) > keep:
                if in_body:
                    events.append(self._buffer[:-keep])
                self._buffer = self._buffer[-keep:]
            return events, False
        if in_body:
            if at:
                events.append(self._buffer[:at])
            events.append(None)
        self._buffer = self._buffer[at + len(self._delimiter) :]
        self._state = "after_delimiter"
        return events, True

    def _after_delimiter(self) -> tuple[list[Event], bool]:
        if len(self._buffer) < 2:
            return [], False
        if self._buffer.startswith(b"--"):
            self._state = "end"
            self._buffer = b""
            return [], False
        if not self._buffer.startswith(b"\r\n"):
            raise MultipartError("Malformed multipart body (bad delimiter line).")
        self._buffer = self._buffer[2:]
        self._state = "headers"
        return [], True

    def _headers(self) -> tuple[list[Event], bool]:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEADER_BYTES:
                raise MultipartError("Multipart part headers are too large.")
            return [], False
        part = self._part(self._buffer[:end])
        self._buffer = self._buffer[end + 4 :]
        self._state = "body"
        return [part], True

    @staticmethod
    def _part(raw: bytes) -> Part:
        name: str | None = None
        filename: str | None = None
        for line in raw.decode("utf-8", "replace").split("\r\n"):
            header, _, value = line.partition(":")
            if header.strip().lower() != "content-disposition":
                continue
            for match in _DISPOSITION_RE.finditer(value):
                key = (match.group(1) or match.group(3)).lower()
                val = match.group(2) if match.group(1) else match.group(4)
                if key == "name":
                    name = val
                elif key == "filename":
                    filename = val
        if name is None:
            raise MultipartError("A multipart part has no name.")
        return Part(name, filename)


def safe_filename(name: str | None) -> str:
    """A filename that is safe to echo in JSON and in a Content-Disposition header."""
    return _UNSAFE_FILENAME_RE.sub("_", (name or "").rsplit("/", 1)[-1])[:255]


def boundary_of(content_type: str | None) -> bytes:
    if not content_type or not content_type.lower().startswith("multipart/form-data"):
        raise InvalidRequest(
            "Uploads must be multipart/form-data with a 'file' and a 'purpose' field."
        )
    match = _BOUNDARY_RE.search(content_type)
    if match is None:
        raise MultipartError("The multipart Content-Type has no boundary.")
    return match.group(1).encode("latin-1")


def too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"The file exceeds the limit of {limit} bytes.", param="file")


class _Upload:
    """One upload in progress: multipart events to the store writer or to form fields."""

    def __init__(self, store: FileStore, key: str, max_bytes: int) -> None:
        self._store = store
        self._key = key
        self._max_bytes = max_bytes
        self._writer: FileWriter | None = None
        self._current: str | None = None
        self._last_byte = b"\n"
        self.fields: dict[str, bytes] = {}
        self.filename = "upload.jsonl"
        self.newlines = 0

    @property
    def size(self) -> int:
        return 0 if self._writer is None else self._writer.size

    @property
    def lines(self) -> int:
        """Newlines, plus one for a last line without one (an upper bound on requests)."""
        return self.newlines + (self._last_byte != b"\n")

    def on(self, event: Event) -> None:
        if isinstance(event, Part):
            self._current = event.name
            if event.name != "file":
                self.fields[event.name] = b""
            elif self._writer is not None:
                raise InvalidRequest("Only one file per upload.", param="file")
            else:
                self._writer = self._store.writer(self._key)
                self.filename = safe_filename(event.filename) or self.filename
        elif event is None:
            self._current = None
        elif self._current == "file" and self._writer is not None:
            if self._writer.size + len(event) > self._max_bytes:
                raise too_large(self._max_bytes)
            self._writer.write(event)
            self.newlines += event.count(b"\n")
            self._last_byte = event[-1:]
        elif self._current is not None:
            self.fields[self._current] += event
            if len(self.fields[self._current]) > MAX_FIELD_BYTES:
                raise InvalidRequest(f"Form field {self._current!r} is too long.")

    def check_complete(self, parser_done: bool) -> None:
        if not parser_done:
            raise MultipartError("The multipart body ended early.")
        purpose = self.fields.get("purpose", b"").decode("utf-8", "replace")
        if purpose not in SUPPORTED_PURPOSES:
            raise InvalidRequest(
                f"purpose must be one of {sorted(SUPPORTED_PURPOSES)}.", param="purpose"
            )
        if self._writer is None or self._writer.size == 0:
            raise InvalidRequest("The upload has no (or an empty) 'file' part.", param="file")

    def commit(self) -> None:
        assert self._writer is not None
        self._writer.commit()

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()


# --- handlers ------------------------------------------------------------------------------


class FilesApi:
    def __init__(
        self,
        store: FileStore,
        *,
        team_of: TeamOf = default_team,
        max_file_bytes: int = MAX_FILE_BYTES,
        clock_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.store = store
        self.team_of = team_of
        self.max_file_bytes = max_file_bytes
        self.max_upload_bytes = max_file_bytes + MAX_HEADER_BYTES
        self.clock_ms = clock_ms

    async def upload(self, request: Request) -> Response:
        team_id = self.team_of(request)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_upload_bytes:
            raise too_large(self.max_file_bytes)
        parser = MultipartStream(boundary_of(request.headers.get("content-type")))
        file_id = files.new_file_id()
        upload = _Upload(self.store, files.content_key(file_id), self.max_file_bytes)
        try:
            async for chunk in request.stream():
                for event in parser.feed(chunk):
                    upload.on(event)
            upload.check_complete(parser.done)
            await asyncio.to_thread(upload.commit)
        except BaseException:
            upload.abort()
            raise
        meta: files.FileMeta = {
            "id": file_id,
            "team_id": team_id,
            "bytes": upload.size,
            "lines": upload.lines,
            "created_at_ms": self.clock_ms(),
            "filename": upload.filename,
            "purpose": "batch",
        }
        await asyncio.to_thread(files.save_meta, self.store, meta)
        return _json(files.to_openai(meta))

    async def _meta(self, request: Request) -> files.FileMeta:
        file_id = request.path_params["file_id"]
        meta = await asyncio.to_thread(files.load_meta, self.store, file_id)
        if meta is None or meta["team_id"] != self.team_of(request):
            raise NotFound(f"No such File object: {file_id}", param="file_id")
        return meta

    async def retrieve(self, request: Request) -> Response:
        return _json(files.to_openai(await self._meta(request)))

    async def content(self, request: Request) -> Response:
        meta = await self._meta(request)
        chunks = self.store.chunks(files.content_key(meta["id"]))
        return StreamingResponse(
            chunks,  # a sync iterator: Starlette reads it in a worker thread
            media_type="application/octet-stream",
            headers={
                "content-length": str(meta["bytes"]),
                "content-disposition": f'attachment; filename="{meta["filename"]}"',
            },
        )


def files_routes(
    store: FileStore, *, team_of: TeamOf = default_team, max_file_bytes: int = MAX_FILE_BYTES
) -> list[Route]:
    """The Files API routes, to be added to the ingress app."""
    api = FilesApi(store, team_of=team_of, max_file_bytes=max_file_bytes)
    return [
        Route("/v1/files", api.upload, methods=["POST"]),
        Route("/v1/files/{file_id}", api.retrieve, methods=["GET"]),
        Route("/v1/files/{file_id}/content", api.content, methods=["GET"]),
    ]
