"""Where batch files live: input files, spool segments, output and error files.

`FileStore` is the interface (keys are `/`-separated names such as
`files/file-abc/content`); `LocalFileStore` keeps them in a local directory and
`MemoryFileStore` is the fake for unit tests. An object store (S3, GCS) fits the
same shape: `writer()` is a multipart upload completed by `commit()`, `put()`
an ordinary PUT, and no operation needs rename or append.

Every write is atomic: a reader sees the old object, the complete new one, or
nothing, never a torn file (temporary file + fsync + rename + fsync of the folder).
The methods block: call the large ones through `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Final, Protocol

CHUNK_BYTES: Final = 1024 * 1024
_KEY_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


class StoreKeyError(ValueError):
    """A key that could escape the store (`..`, absolute paths, odd characters)."""


def check_key(key: str) -> str:
    if not _KEY_RE.fullmatch(key) or ".." in key.split("/"):
        raise StoreKeyError(f"invalid store key {key!r}")
    return key


class FileWriter(Protocol):
    """A streamed upload: `write` chunks, then `commit` (visible at once) or `abort`."""

    @property
    def size(self) -> int: ...

    def write(self, data: bytes) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class FileStore(Protocol):
    def writer(self, key: str) -> FileWriter: ...

    def put(self, key: str, data: bytes) -> None:
        """Write a whole object atomically (replacing any previous one)."""
        ...

    def get(self, key: str) -> bytes | None: ...

    def chunks(self, key: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The object's bytes in chunks; raises `KeyError` when it does not exist."""
        ...

    def size(self, key: str) -> int | None: ...

    def list(self, prefix: str) -> list[str]:
        """Keys directly below `prefix` (one level), sorted."""
        ...


# --- local directory ---------------------------------------------------------------------


class _LocalWriter:
    def __init__(self, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        self._final = final
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=final.parent)
        self._tmp = Path(tmp)
        self._file: IO[bytes] = os.fdopen(fd, "wb")
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._size += len(data)

    def commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._tmp.replace(self._final)
        _fsync_dir(self._final.parent)

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalFileStore:
    """A `FileStore` in a local directory (shared by the ingress and the batch workers)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def writer(self, key: str) -> _LocalWriter:
        return _LocalWriter(self._path(key))

    def put(self, key: str, data: bytes) -> None:
        writer = self.writer(key)
        try:
            writer.write(data)
        except BaseException:
            writer.abort()
            raise
        writer.commit()

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def chunks(self, key: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        try:
            file = self._path(key).open("rb")
        except FileNotFoundError as exc:
            raise KeyError(key) from exc
        with file:
            while chunk := file.read(chunk_bytes):
                yield chunk

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> list[str]:
        folder = self._path(prefix)
        with contextlib.suppress(FileNotFoundError):
            return sorted(
                f"{prefix}/{p.name}" for p in folder.iterdir() if not p.name.startswith(".tmp-")
            )
        return []


# --- in memory (unit tests) ---------------------------------------------------------------


class _MemoryWriter:
    def __init__(self, store: MemoryFileStore, key: str) -> None:
        self._store = store
        self._key = key
        self._parts: list[bytes] = []
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)

    def commit(self) -> None:
        self._store.objects[self._key] = b"".join(self._parts)

    def abort(self) -> None:
        self._parts.clear()


class MemoryFileStore:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def writer(self, key: str) -> _MemoryWriter:
        return _MemoryWriter(self, check_key(key))

    def put(self, key: str, data: bytes) -> None:
        self.objects[check_key(key)] = data

    def get(self, key: str) -> bytes | None:
        return self.objects.get(key)

    def chunks(self, key: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        data = self.objects[key]
        for start in range(0, len(data), chunk_bytes):
            yield data[start : start + chunk_bytes]

    def size(self, key: str) -> int | None:
        data = self.objects.get(key)
        return None if data is None else len(data)

    def list(self, prefix: str) -> list[str]:
        depth = prefix.count("/") + 1
        return sorted(
            {
                "/".join(k.split("/")[: depth + 1])
                for k in self.objects
                if k.startswith(prefix + "/")
            }
        )
