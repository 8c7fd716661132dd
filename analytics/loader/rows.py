"""Topic records -> ClickHouse rows. Pure: no I/O, the Kafka position passed in.

One function per record type returns the row tuple in the column order of its
`Table`. Money arrives as integer nano-USD and leaves as an exact `Decimal` USD
(`Decimal(38, 9)` in ClickHouse). Times stay epoch milliseconds: that is what a
`DateTime64(3, 'UTC')` column stores, and clickhouse-connect writes an int to it as-is
(measured: a third of the serialization time of a usage row went into datetimes).

Request attributes that the `Result` record carries only in `metadata` are read from
these keys (the ingress copies the client's `metadata` there):

    app          application name                      -> requests.app
    tags         comma-separated tags                  -> requests.tags
    tollway.batch_id   the batch a line came from (batch worker) -> requests.batch_id
    tollway.custom_id  the batch line's custom_id               -> requests.custom_id
    tollway.cache hit | semantic-hit | miss (router)   -> requests.cache_hit
    ttft_ms      time to first token (streaming)       -> requests.ttft_ms
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from schemas import topics
from schemas.records import (
    META_BATCH_ID,
    META_CUSTOM_ID,
    Attempt,
    BudgetEvent,
    Result,
    UsageRecord,
)

Row = tuple[object, ...]

CACHE_STATUS_KEY: Final = "tollway.cache"
"""Set by the router's cache (workers/cache/canonical.py); reserved, so no client sets it."""
_CACHE_HITS: Final = frozenset({"hit", "semantic-hit"})
_UINT32_MAX: Final = 2**32 - 1


@dataclass(frozen=True, slots=True)
class Table:
    """A raw table the loader writes: its columns and the identity of a row.

    `key` columns identify a row (the ReplacingMergeTree key ends with them);
    `scope` and `time` lead the sorting key, so a lookup of keys that names them
    reads only the granules those rows can be in.
    """

    name: str
    topic: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    scope: str
    time: str

    def index(self, column: str) -> int:
        return self.columns.index(column)

    def key_of(self) -> Callable[[Row], Hashable]:
        """A row's identity: the value of a one-column key, a tuple for a longer one."""
        return operator.itemgetter(*(self.columns.index(c) for c in self.key))


_PROVENANCE: Final = ("kafka_partition", "kafka_offset")

REQUESTS: Final = Table(
    name="requests",
    topic=topics.RESULTS.name,
    columns=(
        "request_id", "execution_id", "team_id", "key_id", "app", "tags", "metadata", "mode",
        "requested_model", "served_model", "provider", "deployment", "status", "http_status",
        "error_type", "attempts", "fallback_used", "cache_hit", "batch_id", "custom_id",
        "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "cached_tokens",
        "reasoning_tokens", "cache_write_tokens", "received_at", "finished_at", *_PROVENANCE,
    ),
    key=("request_id",),
    scope="team_id",
    time="received_at",
)  # fmt: skip
ATTEMPTS: Final = Table(
    name="attempts",
    topic=topics.ATTEMPTS.name,
    columns=(
        "request_id", "attempt_id", "attempt", "team_id", "key_id", "mode", "deployment",
        "provider", "model", "outcome", "http_status", "error_type", "error_code", "latency_ms",
        "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens",
        "cache_write_tokens", "router_id", "started_at", *_PROVENANCE,
    ),
    key=("request_id", "attempt_id"),
    scope="team_id",
    time="started_at",
)  # fmt: skip
USAGE: Final = Table(
    name="usage",
    topic=topics.USAGE.name,
    columns=(
        "usage_id", "request_id", "attempt_id", "team_id", "key_id", "mode", "requested_model",
        "model", "provider", "deployment", "prompt_tokens", "completion_tokens", "cached_tokens",
        "cache_write_tokens", "reasoning_tokens", "cost_usd", "saved_usd", "cost_status",
        "pricing_version", "occurred_at", "priced_at", *_PROVENANCE,
    ),
    key=("usage_id",),
    scope="team_id",
    time="occurred_at",
)  # fmt: skip
BUDGET_EVENTS: Final = Table(
    name="budget_events",
    topic=topics.BUDGET_EVENTS.name,
    columns=(
        "event_id", "scope_type", "scope_id", "budget_window", "threshold_pct", "spent_usd",
        "limit_usd", "occurred_at", *_PROVENANCE,
    ),
    key=("event_id",),
    scope="scope_id",
    time="occurred_at",
)  # fmt: skip

TABLES: Final = (REQUESTS, ATTEMPTS, USAGE, BUDGET_EVENTS)
TABLE_BY_TOPIC: Final = {table.topic: table for table in TABLES}


def usd(nano_usd: int) -> Decimal:
    """Integer nano-USD -> exact Decimal USD with 9 decimal places."""
    return Decimal(nano_usd).scaleb(-9)


def _tags(raw: str | None) -> list[str]:
    return sorted({t.strip() for t in raw.split(",") if t.strip()}) if raw else []


def _ttft_ms(raw: str | None) -> int | None:
    if raw is None or not raw.isdigit():
        return None
    return min(int(raw), _UINT32_MAX)


def request_row(result: Result, partition: int, offset: int) -> Row:
    meta = result["metadata"]
    latency_ms = min(max(result["finished_at_ms"] - result["received_at_ms"], 0), _UINT32_MAX)
    return (
        result["request_id"],
        result["execution_id"],
        result["team_id"],
        result["key_id"],
        meta.get("app", ""),
        _tags(meta.get("tags")),
        meta,
        result["mode"],
        result["requested_model"],
        result["served_model"],
        result["provider"],
        result["deployment"],
        result["status"],
        result["http_status"],
        result["error_type"],
        result["attempts"],
        # The Result says how many provider calls were made, not which deployments:
        # more than one call means a retry or a fallback (attempts has the detail).
        result["attempts"] > 1,
        meta.get(CACHE_STATUS_KEY) in _CACHE_HITS,
        meta.get(META_BATCH_ID),
        meta.get(META_CUSTOM_ID),
        latency_ms,
        _ttft_ms(meta.get("ttft_ms")),
        result["prompt_tokens"],
        result["completion_tokens"],
        result["cached_tokens"],
        result["reasoning_tokens"],
        result["cache_write_tokens"],
        result["received_at_ms"],
        result["finished_at_ms"],
        partition,
        offset,
    )


def attempt_row(attempt: Attempt, partition: int, offset: int) -> Row:
    return (
        attempt["request_id"],
        attempt["attempt_id"],
        attempt["attempt"],
        attempt["team_id"],
        attempt["key_id"],
        attempt["mode"],
        attempt["deployment"],
        attempt["provider"],
        attempt["model"],
        attempt["outcome"],
        attempt["http_status"],
        attempt["error_type"],
        attempt["error_code"],
        attempt["latency_ms"],
        attempt["prompt_tokens"],
        attempt["completion_tokens"],
        attempt["cached_tokens"],
        attempt["reasoning_tokens"],
        attempt["cache_write_tokens"],
        attempt["router_id"],
        attempt["started_at_ms"],
        partition,
        offset,
    )


def usage_row(usage: UsageRecord, partition: int, offset: int) -> Row:
    return (
        usage["usage_id"],
        usage["request_id"],
        usage["attempt_id"],
        usage["team_id"],
        usage["key_id"],
        usage["mode"],
        usage["requested_model"],
        usage["model"],
        usage["provider"],
        usage["deployment"],
        usage["prompt_tokens"],
        usage["completion_tokens"],
        usage["cached_tokens"],
        usage["cache_write_tokens"],
        usage["reasoning_tokens"],
        usd(usage["cost_nano_usd"]),
        usd(usage["saved_nano_usd"]),
        usage["cost_status"],
        usage["pricing_version"],
        usage["occurred_at_ms"],
        usage["priced_at_ms"],
        partition,
        offset,
    )


def budget_event_row(event: BudgetEvent, partition: int, offset: int) -> Row:
    return (
        event["event_id"],
        event["scope_type"],
        event["scope_id"],
        event["window"],
        event["threshold_pct"],
        usd(event["spent_nano_usd"]),
        usd(event["limit_nano_usd"]),
        event["occurred_at_ms"],
        partition,
        offset,
    )


def first_per_key(table: Table, rows: Iterable[Row]) -> dict[Hashable, Row]:
    """Rows by key, in order, a key seen earlier dropped: the first occurrence wins."""
    key_of = table.key_of()
    keyed: dict[Hashable, Row] = {}
    for row in rows:
        keyed.setdefault(key_of(row), row)
    return keyed
