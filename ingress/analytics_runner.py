"""Named queries run for the ingress: ClickHouse through clickhouse-connect, off the event loop.

`QueryRunner` is the seam the HTTP handlers use; `ClickHouseRunner` is the real one
and `StaticRunner` the fake for unit tests.

ClickHouseRunner guarantees:
- the event loop never blocks: clickhouse-connect's calls run on a dedicated pool of
  `threads` threads (at most that many queries at once; the rest queue);
- a query answers within `timeout_s` (queueing included) or fails with
  `DeadlineExceeded` (504). The HTTP read timeout of the client is `timeout_s` + 1 s,
  so an abandoned call frees its thread soon after; ClickHouse itself may finish the
  query (a server's profile `max_execution_time` bounds that; a setting sent with the
  query is refused by servers whose users are `readonly = 1`);
- ClickHouse unreachable -> `ServiceUnavailable` (503); the schema missing -> 503
  naming `tollway analytics migrate`; any other refusal -> `AnalyticsQueryFailed` (500)
  with the ClickHouse error code only (the full message goes to the log);
- at most `max_rows` rows cross the wire: the named query is wrapped as
  `SELECT * FROM (<query>) LIMIT {cap}` (a server-side bound parameter; an outer LIMIT
  keeps the inner ORDER BY);
- the client is created on first use and again after a failed creation, so the
  ingress starts (and serves everything else) while ClickHouse is down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final, Protocol

from urllib3.exceptions import ReadTimeoutError

from analytics.queries import NamedQuery, run
from schemas.errors import DeadlineExceeded, ServiceUnavailable, TollwayError

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

log = logging.getLogger("tollway.ingress.analytics")

ROW_CAP_PARAM: Final = "tollway_row_cap"
_TIMEOUT_EXCEEDED: Final = 159
_SCHEMA_MISSING: Final = frozenset({60, 81})  # UNKNOWN_TABLE, UNKNOWN_DATABASE
_RETRY_AFTER_S: Final = 5.0

Rows = Sequence[tuple[Any, ...]]


class AnalyticsQueryFailed(TollwayError):
    """ClickHouse refused a named query (a bug or an unexpected schema): 500."""

    code = "analytics_query_failed"


class QueryRunner(Protocol):
    async def rows(
        self, query: NamedQuery[Any], params: Mapping[str, object], max_rows: int
    ) -> Rows:
        """At most `max_rows` rows of `query` (typed as `query.row`), in the query's order."""
        ...


def capped(query: NamedQuery[Any]) -> NamedQuery[Any]:
    """`query` returning at most `{tollway_row_cap}` rows, limited inside ClickHouse."""
    # The SQL is a named query's constant; the cap is a server-side bound parameter.
    sql = f"SELECT * FROM (\n{query.sql}\n) LIMIT {{{ROW_CAP_PARAM}:UInt32}}"  # noqa: S608
    return dataclasses.replace(
        query,
        sql=sql,
        params={**query.params, ROW_CAP_PARAM: "UInt32"},
    )


class ClickHouseRunner:
    """Runs named queries on `url` (http(s):// or chdb://) in `database`; see the module doc."""

    def __init__(
        self,
        url: str,
        database: str,
        *,
        threads: int,
        timeout_s: float,
        connect: Callable[..., Client] | None = None,
    ) -> None:
        self._url = url
        self._database = database
        self._timeout_s = timeout_s
        self._connect = connect
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="tollway-analytics")
        self._client: Client | None = None
        self._client_lock = threading.Lock()
        self._capped: dict[str, NamedQuery[Any]] = {}

    async def rows(
        self, query: NamedQuery[Any], params: Mapping[str, object], max_rows: int
    ) -> Rows:
        wrapped = self._capped.get(query.name)
        if wrapped is None:
            wrapped = self._capped[query.name] = capped(query)
        bound = {**params, ROW_CAP_PARAM: max_rows}
        loop = asyncio.get_running_loop()
        call = loop.run_in_executor(self._executor, self._run, wrapped, bound)
        try:
            async with asyncio.timeout(self._timeout_s):
                return await call
        except TimeoutError:
            raise DeadlineExceeded(
                f"The analytics query took longer than {self._timeout_s:g} s."
            ) from None

    def close(self) -> None:
        """Stop the threads (running calls end by their HTTP timeout) and close the client."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # --- in a pool thread ------------------------------------------------------------

    def _run(self, query: NamedQuery[Any], params: dict[str, object]) -> Rows:
        try:
            return run(self._client_for_thread(), query, self._database, **params)
        except TollwayError:
            raise
        except Exception as exc:
            raise _translate(exc, query.name) from exc

    def _client_for_thread(self) -> Client:
        with self._client_lock:
            if self._client is None:
                # no session: one client serves every thread (clickhouse-connect allows
                # concurrent queries on a client without a session)
                self._client = self._open()
            return self._client

    def _open(self) -> Client:
        http_timeout_s = math.ceil(self._timeout_s) + 1
        if self._connect is not None:
            return self._connect(self._url, send_receive_timeout_s=http_timeout_s)
        from analytics.connection import connect

        return connect(self._url, send_receive_timeout_s=http_timeout_s, connect_timeout_s=5)


def _translate(exc: Exception, query_name: str) -> TollwayError:
    """clickhouse-connect's errors -> the typed tree (nobody branches on message text)."""
    from clickhouse_connect.driver.exceptions import Error as ClickHouseError

    if not isinstance(exc, ClickHouseError):
        log.error("analytics query %s failed: %s", query_name, type(exc).__name__, exc_info=exc)
        return AnalyticsQueryFailed("The analytics query failed.")
    if exc.code is None:  # transport: no answer from ClickHouse
        if _caused_by(exc, ReadTimeoutError):
            return DeadlineExceeded("ClickHouse did not answer the analytics query in time.")
        log.warning("ClickHouse unreachable for analytics query %s: %s", query_name, exc)
        return ServiceUnavailable(
            "ClickHouse is unreachable; try again later.", retry_after_s=_RETRY_AFTER_S
        )
    if exc.code == _TIMEOUT_EXCEEDED:
        return DeadlineExceeded("ClickHouse stopped the analytics query at its time limit.")
    if exc.code in _SCHEMA_MISSING:
        return ServiceUnavailable(
            "The analytics schema is missing in ClickHouse: run `tollway analytics migrate`.",
            retry_after_s=_RETRY_AFTER_S,
        )
    log.error("ClickHouse refused analytics query %s: %s", query_name, exc)
    return AnalyticsQueryFailed(f"ClickHouse refused the analytics query (code {exc.code}).")


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `kind` is in the cause/context chain (or a urllib3 MaxRetryError's reason)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, kind) or isinstance(getattr(current, "reason", None), kind):
            return True
        current = current.__cause__ or current.__context__
    return False


class StaticRunner:
    """A fake runner: fixed rows per query name, or an error to raise; records its calls."""

    def __init__(
        self,
        rows: Mapping[str, Rows] | None = None,
        *,
        error: TollwayError | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self._rows = dict(rows or {})
        self._error = error
        self._delay_s = delay_s
        self.calls: list[tuple[str, dict[str, object], int]] = []

    async def rows(
        self, query: NamedQuery[Any], params: Mapping[str, object], max_rows: int
    ) -> Rows:
        self.calls.append((query.name, dict(params), max_rows))
        if self._delay_s:
            await asyncio.sleep(self._delay_s)
        if self._error is not None:
            raise self._error
        return list(self._rows.get(query.name, ()))[:max_rows]
