"""Batch input files (OpenAI's JSONL format), line by line. Pure.

Each line is one request:

    {"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}

A bad line never stops a batch: `LineParser.parse` returns a `LineError` that
becomes an error-file entry, and the batch goes on with the next line. Blank
lines are skipped and not counted. Limits are at least OpenAI's and named here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import orjson
from pydantic import ValidationError

from schemas.openai import ChatCompletionRequest

MAX_REQUESTS: Final = 50_000
"""Request lines per input file (OpenAI: 50,000)."""
MAX_FILE_BYTES: Final = 200 * 1024 * 1024
"""Input file size (OpenAI: 200 MB)."""
MAX_LINE_BYTES: Final = 10 * 1024 * 1024
"""One line: the same bound as one request body on the ingress."""
MAX_CUSTOM_ID_CHARS: Final = 512
CHAT_ENDPOINT: Final = "/v1/chat/completions"
SUPPORTED_ENDPOINTS: Final = frozenset({CHAT_ENDPOINT})
_LINE_KEYS: Final = frozenset({"custom_id", "method", "url", "body"})


@dataclass(frozen=True, slots=True)
class BatchLine:
    """A valid request line. `body` is the request JSON, re-serialised compactly."""

    line: int
    custom_id: str
    model: str
    body: bytes


@dataclass(frozen=True, slots=True)
class LineError:
    """A line that cannot run; `custom_id` is kept when it could be read."""

    line: int
    custom_id: str | None
    code: str
    message: str
    param: str | None = None


class _Refused(Exception):
    def __init__(
        self, code: str, message: str, param: str | None = None, custom_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.custom_id = custom_id


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """Marker from `split_lines` for a line beyond the limit (its bytes were dropped)."""

    size: int


def split_lines(
    chunks: Iterable[bytes], max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, bytes | LineTooLong]]:
    """(1-based line number, line without its newline) from a stream of byte chunks.

    Memory stays bounded by `max_line_bytes`: a longer line is reported as
    `LineTooLong` and its bytes are discarded as they arrive.
    """
    line_no = 0
    pending = bytearray()
    overflow = 0  # bytes of the current line dropped so far (> 0: the line is too long)
    for chunk in chunks:
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                rest = len(chunk) - start
                if overflow or len(pending) + rest > max_line_bytes:
                    overflow += len(pending) + rest
                    pending.clear()
                else:
                    pending += chunk[start:]
                break
            line_no += 1
            if overflow or len(pending) + nl - start > max_line_bytes:
                yield line_no, LineTooLong(overflow + len(pending) + nl - start)
            elif pending:
                pending += chunk[start:nl]
                yield line_no, bytes(pending)
            else:
                yield line_no, chunk[start:nl]
            pending.clear()
            overflow = 0
            start = nl + 1
    if overflow:
        yield line_no + 1, LineTooLong(overflow)
    elif pending.strip():
        yield line_no + 1, bytes(pending)


def is_blank(raw: bytes) -> bool:
    return not raw.strip()


class LineParser:
    """Validates lines in file order; remembers custom_ids to refuse duplicates.

    `known_model(name)` says whether the routing table has the model (a line for
    an unknown model fails alone, as the same request would on the ingress).
    """

    def __init__(self, endpoint: str, known_model: Callable[[str], bool]) -> None:
        self.endpoint = endpoint
        self.known_model = known_model
        self._seen: set[str] = set()

    def parse(self, line: int, raw: bytes | LineTooLong) -> BatchLine | LineError:
        try:
            return self._parse(line, raw)
        except _Refused as refused:
            return LineError(line, refused.custom_id, refused.code, refused.message, refused.param)

    def _parse(self, line: int, raw: bytes | LineTooLong) -> BatchLine:
        if isinstance(raw, LineTooLong):
            raise _Refused(
                "line_too_long", f"Line is {raw.size} bytes; the limit is {MAX_LINE_BYTES} bytes."
            )
        try:
            obj: Any = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _Refused("invalid_json", f"Line is not valid JSON ({exc.msg}).") from exc
        if not isinstance(obj, dict):
            raise _Refused("invalid_request", "Line must be a JSON object.")
        raw_id = obj.get("custom_id")
        custom_id = (
            raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= MAX_CUSTOM_ID_CHARS else None
        )
        try:
            return self._check(line, obj, custom_id)
        except _Refused as refused:
            refused.custom_id = custom_id
            raise

    def _check(self, line: int, obj: dict[str, Any], custom_id: str | None) -> BatchLine:
        extra = sorted(set(obj) - _LINE_KEYS)
        if extra:
            raise _Refused("invalid_request", f"Unknown field(s) in line: {extra}.", extra[0])
        if custom_id is None:
            raise _Refused(
                "missing_custom_id",
                f"custom_id must be a string of 1 to {MAX_CUSTOM_ID_CHARS} characters.",
                "custom_id",
            )
        if custom_id in self._seen:
            raise _Refused(
                "duplicate_custom_id",
                f"custom_id {custom_id!r} was already used by an earlier line.",
                "custom_id",
            )
        self._seen.add(custom_id)
        if obj.get("method") != "POST":
            raise _Refused("invalid_method", "method must be POST.", "method")
        if obj.get("url") != self.endpoint:
            raise _Refused(
                "invalid_url", f"url must be the batch's endpoint {self.endpoint}.", "url"
            )
        body = obj.get("body")
        if not isinstance(body, dict):
            raise _Refused("invalid_request", "body must be a JSON object.", "body")
        try:
            request = ChatCompletionRequest.model_validate(body, strict=True)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = "body." + ".".join(str(p) for p in first["loc"])
            raise _Refused("invalid_request", f"{first['msg']}: {param}", param) from exc
        if request.stream:
            raise _Refused("invalid_request", "stream=true is not supported in a batch.", "stream")
        if not self.known_model(request.model):
            raise _Refused(
                "model_not_found", f"The model {request.model!r} does not exist.", "body.model"
            )
        return BatchLine(line, custom_id, request.model, orjson.dumps(body))
