"""A `chdb://` DSN: clickhouse-connect's in-process chdb backend, for single-process tools.

The same migrations, sink and named queries as over HTTP, with the engine inside the test
process (chdb allows one engine per process: this module opens exactly one, and closes it).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import clickhouse_connect

from analytics import queries as q
from analytics.loader.clickhouse import ClickHouseSink
from analytics.loader.rows import USAGE, usage_row
from analytics.migrate import migrate
from schemas.records import UsageRecord

AT = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)


def _usage(n: int, team: str, nano_usd: int) -> UsageRecord:
    return {
        "usage_id": f"req-{n}:e.1", "request_id": f"req-{n}", "attempt_id": "e.1",
        "team_id": team, "key_id": None, "mode": "batch", "requested_model": "m",
        "model": "m-1", "provider": "openai", "deployment": "d", "prompt_tokens": 3,
        "completion_tokens": 4, "cached_tokens": 0, "cache_write_tokens": 0,
        "reasoning_tokens": 0, "cost_nano_usd": nano_usd, "saved_nano_usd": 0,
        "cost_status": "priced", "pricing_version": "v1",
        "occurred_at_ms": int(AT.timestamp() * 1000) + n, "priced_at_ms": 0,
    }  # fmt: skip


def test_chdb_dsn_migrates_loads_once_and_answers_named_queries(tmp_path: Path) -> None:
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'store'}")
    try:
        assert [m.version for m in migrate(client, "tollway")] == [1, 2, 3]
        assert migrate(client, "tollway") == []
        sink = ClickHouseSink(client, "tollway")
        rows = [usage_row(_usage(n, f"team-{n % 2}", 333_333_333), 0, n) for n in range(10)]
        assert sink.write(USAGE, rows, "tollway.usage/0:0-9") == 10
        assert sink.write(USAGE, rows[5:], "tollway.usage/0:5-9") == 0  # keys already stored
        spend = q.run(
            client, q.SPEND_BY_TEAM, "tollway", start=AT, end=AT + timedelta(hours=1), team=""
        )
        assert [(r.dimension, r.calls, r.cost_usd) for r in spend] == [
            ("team-0", 5, Decimal("1.666666665")),
            ("team-1", 5, Decimal("1.666666665")),
        ]
    finally:
        client.close()
