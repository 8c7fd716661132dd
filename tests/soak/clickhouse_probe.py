"""What the embedded ClickHouse says its memory is for, sampled beside its RSS.

The `clickhouse` process is Python (the HTTP front, analytics/chserver.py) around the
chdb engine; its RSS alone cannot say whether growth is the engine's caches and parts
(bounded by ClickHouse's own limits) or the front. Every tick this asks the server for
its tracked memory (`system.metrics` MemoryTracking; chdb has no
`system.asynchronous_metrics`), the active parts of the `tollway` tables with their
primary keys' memory (`system.parts`), and what chdb's own jemalloc holds
(`system.jemalloc_stats`: allocated, active and resident bytes, thread caches): most of
the engine's resident memory is jemalloc's and most of that is not in MemoryTracking
(docs/decisions/0025-embedded-clickhouse-memory.md). A failing query is recorded, never
fatal: this is evidence for a diagnosis, not a check.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from clickhouse_connect.driver.exceptions import ClickHouseError

QUERIES = {
    "metrics": "SELECT metric, toFloat64(value) FROM system.metrics "
    "WHERE metric IN ('MemoryTracking', 'MergesMutationsMemoryTracking', 'Merge', 'Query')",
    "parts": "SELECT 'active_parts', toFloat64(count()) FROM system.parts "
    "WHERE active AND database = 'tollway' UNION ALL SELECT 'parts_bytes', "
    "toFloat64(sum(bytes_on_disk)) FROM system.parts WHERE active AND database = 'tollway' "
    "UNION ALL SELECT 'primary_keys_in_memory', toFloat64(sum(primary_key_bytes_in_memory)) "
    "FROM system.parts WHERE active",
}
JEMALLOC_PATTERNS = {
    "je_allocated": r"Allocated: (\d+)",
    "je_active": r"active: (\d+)",
    "je_resident": r"resident: (\d+)",
    "je_tcache": r"tcache_bytes:\s+(\d+)",
}
"""Figures read from jemalloc's text report (the first match: the summary line, then the
merged arenas' thread-cache bytes), by ClickHouse's `extract` (RE2, backslashes doubled
in the SQL literal)."""
QUERIES["jemalloc"] = " UNION ALL ".join(
    f"SELECT '{name}', toFloat64OrZero(extract(stats, '{pattern.replace(chr(92), chr(92) * 2)}'))"
    " FROM system.jemalloc_stats"
    for name, pattern in JEMALLOC_PATTERNS.items()
)

COUNTS = frozenset({"active_parts", "Merge", "Query"})
"""Metrics that count things; every other one is bytes."""


@dataclass
class ClickHouseProbe:
    client: Any
    """A clickhouse-connect client of the embedded server."""
    interval_s: float = 30.0
    started: float = field(default_factory=time.monotonic)
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def tick(self) -> None:
        at_s = round(time.monotonic() - self.started, 1)
        found: dict[str, float] = {}
        for name, query in QUERIES.items():
            try:
                rows = self.client.query(query).result_rows
            except ClickHouseError as exc:
                if len(self.errors) < 10:
                    self.errors.append(f"{name}: {str(exc)[:200]}")
                continue
            found.update({str(metric): float(value) for metric, value in rows})
        self.samples.append((at_s, found))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.tick)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
        await asyncio.to_thread(self.tick)

    def first_last(self) -> str:
        """`metric first -> last` for every metric, MB for byte counts."""
        if not self.samples:
            return "no ClickHouse sample"
        first, last = self.samples[0][1], self.samples[-1][1]

        def show(metric: str, value: float | None) -> str:
            if value is None:
                return "n/a"
            return f"{value:g}" if metric in COUNTS else f"{value / 2**20:.1f} MB"

        return ", ".join(
            f"{m} {show(m, first.get(m))} -> {show(m, last.get(m))}" for m in sorted(last)
        )
