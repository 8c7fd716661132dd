"""The embedded ClickHouse: one process owns a chdb engine and serves ClickHouse's HTTP interface.

chdb opens a data path in one process only, so in the local stack this process owns
the store and every other component (loader, CLI, tests) talks to it with
clickhouse-connect over HTTP, exactly as to a ClickHouse server. `CLICKHOUSE_URL`
pointing at a real server replaces this process without any other change.

Served subset, as clickhouse-connect 1.12 uses it (measured from its
`driver/_backend/httpcommon.py` and `http_sync.py`):

    GET|HEAD /ping, GET /   -> "Ok."
    POST /?query=&database=&param_x=&<setting>=...
        SQL in the `query` parameter, the body, or both (concatenated, as the server
        does); `INSERT ... FORMAT <fmt>` followed by data in the body (the client sends
        the statement as the body's first line), optionally compressed
        (`Content-Encoding: lz4 | zstd | gzip | deflate`); multipart form fields
        (`query`, `param_*`) for large bound parameters; GET runs read-only.
    Answers: the result bytes in the statement's FORMAT (TabSeparated by default),
        `X-ClickHouse-Format` for statements that return a result set,
        `X-ClickHouse-Summary`, `X-ClickHouse-Timezone`; errors as HTTP 4xx/5xx with
        `X-ClickHouse-Exception-Code` and the engine's message as the body.

Statements run on a few chdb handles (connections to the one engine), each used by one
statement at a time. Settings: every non-transport parameter is applied to the handle
with `SET` before the statement and reset to `DEFAULT` when a later request on it no
longer carries it (the handle remembers what it applied, so repeated settings cost
nothing). `readonly` requests (and GETs) run on handles that are permanently
`readonly=2` (reads and settings only); a `SET`/`USE` statement is a no-op, as on a
server without a session. Not served: sessions, response compression (loopback),
progress headers, external data.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import queue
import re
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

log = logging.getLogger("tollway.chserver")

TRANSPORT_PARAMS: Final = frozenset(
    {
        "query", "database", "session_id", "session_timeout", "session_check", "query_id",
        "quota_key", "compress", "decompress", "buffer_size", "wait_end_of_query", "role",
        "client_protocol_version", "send_progress_in_http_headers", "user", "password",
        "http_headers_progress_interval_ms", "enable_http_compression", "default_format",
    }
)  # fmt: skip
_SETTING_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INSERT_DATA: Final = re.compile(
    rb"^\s*INSERT\s+INTO\s+(?P<head>.+?)\s+FORMAT\s+(?P<fmt>\w+)[ \t]*(?:\r?\n|$)", re.I | re.S
)
_RESULT_SET: Final = re.compile(
    r"^\s*\(*\s*(SELECT|WITH|SHOW|DESC|DESCRIBE|EXPLAIN|EXISTS)\b", re.I
)
_SESSION_ONLY: Final = re.compile(r"^\s*(SET|USE)\s", re.I)
_TRAILING_FORMAT: Final = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.I)
_ERROR_CODE: Final = re.compile(r"Code: (\d+)\.")
_HTTP_STATUS_BY_CODE: Final = {"62": 400, "164": 403, "60": 404, "81": 404, "516": 401}
MAX_BODY_BYTES: Final = 1 << 30


class EngineError(Exception):
    """The engine refused a statement; `code` is ClickHouse's numeric error code."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        match = _ERROR_CODE.search(message)
        self.code = match.group(1) if match else "1002"  # UNKNOWN_EXCEPTION


@dataclass(frozen=True, slots=True)
class Statement:
    """One HTTP request, parsed: SQL (and insert data), bound parameters, settings."""

    sql: bytes
    data: bytes | None
    params: dict[str, str]
    settings: dict[str, str]
    database: str | None
    readonly: bool


@dataclass(frozen=True, slots=True)
class Reply:
    body: bytes
    fmt: str | None
    summary: dict[str, str]


@dataclass(slots=True)
class _Handle:
    """One chdb connection with the settings and database it currently has applied."""

    conn: Any  # chdb.state.sqlitelike.Connection
    applied: dict[str, str] = field(default_factory=dict)
    database: str | None = None


class Engine:
    """Handles on one chdb engine, each used by one statement at a time: `writers`
    read-write ones (inserts into different tables run side by side) and `readers`
    read-only ones (`readonly=2`, so reports never wait behind an insert)."""

    def __init__(self, data_path: str, writers: int = 2, readers: int = 2) -> None:
        from chdb.state import sqlitelike

        self._handles: list[_Handle] = []
        self._rw: queue.SimpleQueue[_Handle] = queue.SimpleQueue()
        self._ro: queue.SimpleQueue[_Handle] = queue.SimpleQueue()
        for pool, count in ((self._rw, writers), (self._ro, readers)):
            for _ in range(count):
                handle = _Handle(sqlitelike.Connection(data_path))
                if pool is self._ro:
                    handle.conn.query("SET readonly = 2", "TabSeparated")
                self._handles.append(handle)
                pool.put(handle)

    def close(self) -> None:
        for handle in self._handles:
            handle.conn.close()

    def run(self, statement: Statement) -> Reply:
        pool = self._ro if statement.readonly else self._rw
        handle = pool.get()
        started_ns = time.perf_counter_ns()
        try:
            self._prepare(handle, statement.settings, statement.database)
            reply = self._execute(handle, statement.sql, statement.data, statement.params)
        except RuntimeError as exc:  # chdb raises RuntimeError subclasses with the message
            raise EngineError(str(exc)) from exc
        except UnicodeDecodeError as exc:
            raise EngineError(f"Code: 1002. DB::Exception: SQL is not UTF-8: {exc}") from exc
        finally:
            pool.put(handle)
        reply.summary["elapsed_ns"] = str(time.perf_counter_ns() - started_ns)
        return reply

    @staticmethod
    def _prepare(handle: _Handle, settings: dict[str, str], database: str | None) -> None:
        for name in [n for n in handle.applied if n not in settings]:
            handle.conn.query(f"SET {name} = DEFAULT", "TabSeparated")
            del handle.applied[name]
        for name, value in settings.items():
            if handle.applied.get(name) != value:
                if not _SETTING_NAME.match(name):
                    raise EngineError(f"Code: 115. DB::Exception: Unknown setting {name!r}")
                quoted = value.replace("\\", "\\\\").replace("'", "\\'")
                handle.conn.query(f"SET {name} = '{quoted}'", "TabSeparated")
                handle.applied[name] = value
        if database and database != handle.database:
            handle.conn.query(f"USE `{database.replace('`', '``')}`", "TabSeparated")
            handle.database = database

    @staticmethod
    def _execute(handle: _Handle, sql: bytes, data: bytes | None, params: dict[str, str]) -> Reply:
        insert = _INSERT_DATA.match(sql)
        if insert is not None and (data is not None or sql[insert.end() :].strip()):
            payload = sql[insert.end() :] if data is None else sql[insert.end() :] + data
            inserter = handle.conn.send_insert(
                "INSERT INTO " + insert["head"].decode(), insert["fmt"].decode()
            )
            try:
                inserter.append(payload)
                done = inserter.finish()
            except BaseException:
                inserter.cancel()
                raise
            return Reply(b"", None, {"written_rows": str(done.rows_written)})
        text = sql.decode() if data is None else (sql + b"\n" + data).decode()
        if _SESSION_ONLY.match(text):
            return Reply(b"", None, {})
        fmt_match = _TRAILING_FORMAT.search(text)
        fmt = fmt_match.group(1) if fmt_match else "TabSeparated"
        result = handle.conn.query(text, fmt, params=params)
        summary = {"read_rows": str(result.rows_read()), "read_bytes": str(result.bytes_read())}
        returns_rows = fmt_match is not None or _RESULT_SET.match(text) is not None
        return Reply(result.bytes() or b"", fmt if returns_rows else None, summary)


def decompress(data: bytes, encoding: str) -> bytes:
    """Undo a request body's Content-Encoding (frames may be concatenated: one per block)."""
    if encoding in ("", "identity"):
        return data
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "deflate":
        return zlib.decompress(data)
    if encoding == "zstd":
        from backports import zstd

        return zstd.decompress(data)
    if encoding == "lz4":
        import lz4.frame  # type: ignore[import-untyped]  # lz4 ships no type information

        out = bytearray()
        rest = data
        while rest:
            decoder = lz4.frame.LZ4FrameDecompressor()
            out += decoder.decompress(rest)
            rest = decoder.unused_data or b""
        return bytes(out)
    raise EngineError(f"Code: 48. DB::Exception: Unsupported Content-Encoding {encoding!r}")


ENGINE_KEY: Final = web.AppKey("engine", Engine)
POOL_KEY: Final = web.AppKey("pool", ThreadPoolExecutor)


async def _ping(_: web.Request) -> web.Response:
    return web.Response(body=b"Ok.\n", content_type="text/plain")


async def _query(request: web.Request) -> web.Response:
    params = dict(request.query)
    data: bytes | None = None
    if request.content_type.startswith("multipart/"):
        form = await request.post()
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
    else:
        raw = await request.read()
        try:
            data = decompress(raw, request.headers.get("Content-Encoding", "").lower()) or None
        except (EngineError, OSError, RuntimeError, ValueError) as exc:
            return _error(EngineError(f"Code: 1002. DB::Exception: bad request body: {exc}"))
    query = params.pop("query", "").encode()
    if not query and data is None:
        return await _ping(request)
    sql, body = (query, data) if query else (data or b"", None)
    bind = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
    settings = {
        k: v for k, v in params.items() if k not in TRANSPORT_PARAMS and not k.startswith("param_")
    }
    readonly = request.method == "GET" or settings.pop("readonly", "0") not in ("0", "")
    statement = Statement(sql, body, bind, settings, params.get("database"), readonly)
    loop = asyncio.get_running_loop()
    try:
        reply = await loop.run_in_executor(
            request.app[POOL_KEY], request.app[ENGINE_KEY].run, statement
        )
    except EngineError as exc:
        return _error(exc)
    headers = {
        "X-ClickHouse-Summary": json.dumps(reply.summary),
        "X-ClickHouse-Timezone": "UTC",
        "X-ClickHouse-Query-Id": params.get("query_id", ""),
    }
    if reply.fmt is not None:
        headers["X-ClickHouse-Format"] = reply.fmt
    return web.Response(body=reply.body, headers=headers, content_type="application/octet-stream")


def _error(exc: EngineError) -> web.Response:
    log.debug("statement failed: %s", exc)
    return web.Response(
        status=_HTTP_STATUS_BY_CODE.get(exc.code, 500),
        body=(str(exc).strip() + "\n").encode(),
        headers={"X-ClickHouse-Exception-Code": exc.code},
        content_type="text/plain",
    )


def build_app(engine: Engine, pool: ThreadPoolExecutor) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[ENGINE_KEY] = engine
    app[POOL_KEY] = pool
    app.router.add_route("GET", "/ping", _ping)
    app.router.add_route("HEAD", "/ping", _ping)
    app.router.add_route("*", "/", _query)
    return app


async def serve(host: str, port: int, data_path: str, started: asyncio.Event | None = None) -> None:
    """Own the chdb engine on `data_path` and serve it on host:port until cancelled."""
    engine = Engine(data_path)
    # More threads than handles: a statement waiting for a writer never blocks a reader.
    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="chdb")
    # auto_decompress off: the body's Content-Encoding is undone in `decompress` (lz4 too).
    runner = web.AppRunner(build_app(engine, pool), access_log=None, auto_decompress=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("embedded ClickHouse (chdb) on http://%s:%d, data in %s", host, port, data_path)
        if started is not None:
            started.set()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        pool.shutdown(wait=True)
        engine.close()
