"""File objects of the Files API: ids, metadata, the OpenAI `FileObject` shape, store keys.

    files/<file id>/meta.json   FileMeta as JSON (written after the content)
    files/<file id>/content     the bytes
    batches/<batch id>/...      spool segments (workers/batches/assembler.py)

A file exists once its `meta.json` does: the content is committed first, so
a crash between the two leaves an orphan blob and never a file without content.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Final, Literal, TypedDict

import orjson

from workers.batches.filestore import FileStore

FilePurpose = Literal["batch", "batch_output"]
FILE_ID_RE: Final = re.compile(r"^file-[A-Za-z0-9_-]{8,64}$")
BATCH_ID_RE: Final = re.compile(r"^batch_[0-9a-f]{32}$")


class FileMeta(TypedDict):
    id: str
    team_id: str
    bytes: int
    lines: int
    created_at_ms: int
    filename: str
    purpose: FilePurpose


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(16)}"


def output_file_id(batch_id: str, kind: Literal["output", "error"]) -> str:
    """Deterministic, so a finalisation repeated after a crash rewrites the same files."""
    return f"file-{kind}_{batch_id.removeprefix('batch_')}"


def content_key(file_id: str) -> str:
    return f"files/{file_id}/content"


def meta_key(file_id: str) -> str:
    return f"files/{file_id}/meta.json"


def save_meta(store: FileStore, meta: FileMeta) -> None:
    store.put(meta_key(meta["id"]), orjson.dumps(meta))


def load_meta(store: FileStore, file_id: str) -> FileMeta | None:
    if not FILE_ID_RE.fullmatch(file_id):
        return None
    raw = store.get(meta_key(file_id))
    if raw is None:
        return None
    meta: FileMeta = orjson.loads(raw)
    return meta


def to_openai(meta: FileMeta) -> dict[str, Any]:
    """OpenAI's `FileObject` (openai/types/file_object.py)."""
    return {
        "id": meta["id"],
        "object": "file",
        "bytes": meta["bytes"],
        "created_at": meta["created_at_ms"] // 1000,
        "filename": meta["filename"],
        "purpose": meta["purpose"],
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }
