"""One way to open ClickHouse for every component: clickhouse-connect on a `CLICKHOUSE_URL`.

`http(s)://` reaches a server or the embedded one (`analytics/chserver.py`);
`chdb:///path` opens the engine in this process (one process per path). Table names
are always qualified with the database, so the client needs no default database and
works before `tollway analytics migrate` created it.
"""

from __future__ import annotations

from clickhouse_connect import get_client
from clickhouse_connect.driver.client import Client


def connect(url: str, *, send_receive_timeout_s: int = 300, connect_timeout_s: int = 10) -> Client:
    """A clickhouse-connect client for `url` (http, https or chdb)."""
    if url.startswith("chdb:"):
        return get_client(dsn=url)
    # No session: each request stands alone (a server locks a session to one query at a time).
    return get_client(
        dsn=url,
        autogenerate_session_id=False,
        send_receive_timeout=send_receive_timeout_s,
        connect_timeout=connect_timeout_s,
    )
