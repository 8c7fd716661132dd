"""A span exporter that appends one JSON object per finished span to a file.

`TOLLWAY_OTEL_EXPORTER=jsonl:<path>` (workers/telemetry/tracing.py): for tests and
offline runs, where no collector is running. One line per span:

    {"trace_id": "<32 hex>", "span_id": "<16 hex>", "parent_span_id": "<16 hex>" | null,
     "name": "...", "kind": "server|client|producer|consumer|internal",
     "service": "tollway-router", "start_unix_nano": ..., "end_unix_nano": ...,
     "duration_ms": 1.25, "status": "unset|ok|error", "attributes": {...}}

Each export batch is one `write(2)` on a file opened with O_APPEND, so processes may
share a file without interleaving lines (Linux, local file systems); `{pid}` in the
path gives each process its own anyway. Imported only when tracing is on.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """The line written for `span` (fields in the module doc)."""
    context = span.get_span_context()
    parent = span.parent
    start, end = span.start_time or 0, span.end_time or 0
    return {
        "trace_id": f"{context.trace_id:032x}" if context else None,
        "span_id": f"{context.span_id:016x}" if context else None,
        "parent_span_id": f"{parent.span_id:016x}" if parent is not None else None,
        "name": span.name,
        "kind": span.kind.name.lower(),
        "service": span.resource.attributes.get("service.name"),
        "start_unix_nano": start,
        "end_unix_nano": end,
        "duration_ms": round((end - start) / 1e6, 3),
        "status": span.status.status_code.name.lower(),
        "attributes": dict(span.attributes or {}),
    }


class JsonlSpanExporter(SpanExporter):
    """Appends finished spans to `path` (created with its directory, mode 0600, at the
    first export: a process that makes no span leaves no file)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._closed = False
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        data = b"".join(orjson.dumps(span_record(s), default=str) + b"\n" for s in spans)
        with self._lock:
            if self._closed:
                return SpanExportResult.FAILURE
            try:
                if self._fd is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError:
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True  # every export is written before it returns
