"""Label values and unit conversions for Tollway's metrics. Pure; no prometheus here.

Every label a metric carries must take a bounded set of values (Prometheus keeps one
series per label combination, forever): these functions map open-ended inputs (a
path, an error type name read from a record, an HTTP status) onto closed sets, and
convert Tollway's units (nano-USD, milliseconds) to Prometheus base units (USD,
seconds) at the metric boundary only.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from functools import cache
from typing import Final

from schemas.errors import TollwayError

NANO_USD_PER_USD: Final = Decimal(1_000_000_000)
OTHER: Final = "other"
"""The label value for anything outside a closed set."""

ROUTE_FAMILIES: Final[tuple[tuple[str, str], ...]] = (
    # (label, path prefix): exact paths first where a prefix would also match
    ("/v1/chat/completions", "/v1/chat/completions"),
    ("/v1/async/chat/completions", "/v1/async/chat/completions"),
    ("/v1/async/bulk/chat/completions", "/v1/async/bulk/chat/completions"),
    ("/v1/async/requests/{id}", "/v1/async/requests/"),
    ("/v1/embeddings", "/v1/embeddings"),
    ("/v1/messages", "/v1/messages"),
    ("/v1/models", "/v1/models"),
    ("/v1/files", "/v1/files"),
    ("/v1/batches", "/v1/batches"),
    ("/v1/analytics", "/v1/analytics"),
    ("/admin/v1", "/admin/v1"),
    ("/healthz", "/healthz"),
    ("/readyz", "/readyz"),
    ("/openapi.json", "/openapi.json"),
)
"""The ingress's route families; anything else (404s, scanners) is `other`."""


def route_family(path: str) -> str:
    """The `route` label of a request path: one of `ROUTE_FAMILIES`' labels or `other`.

    `/v1/files/file_abc/content` is `/v1/files`: ids never become label values.
    """
    for label, prefix in ROUTE_FAMILIES:
        if path == prefix or (
            path.startswith(prefix) and (prefix.endswith("/") or path[len(prefix)] == "/")
        ):
            return label
    return OTHER


def status_class(status: int) -> str:
    """`2xx`, `4xx`, ... for an HTTP status; `other` outside 100-599."""
    return f"{status // 100}xx" if 100 <= status <= 599 else OTHER


@cache
def error_classes() -> frozenset[str]:
    """Names of every class in the typed error tree (schemas/errors.py), the root included."""
    found: set[str] = set()
    todo: list[type[TollwayError]] = [TollwayError]
    while todo:
        cls = todo.pop()
        if cls.__name__ not in found:
            found.add(cls.__name__)
            todo.extend(cls.__subclasses__())
    return frozenset(found)


def error_class(name: str | None) -> str:
    """The `error_class` label: a class name of the error tree, else `other`.

    Records carry the name as text (`Result.error_type`, `Attempt.error_type`); a name
    the tree does not know (a newer writer, a corrupt record) must not open a series.
    """
    return name if name is not None and name in error_classes() else OTHER


def usd_from_nano(nano_usd: int) -> float:
    """Nano-USD (Tollway's integer money) as USD for a Prometheus counter.

    Prometheus samples are float64: exact to the nano-USD below 2**23 USD (~8.4 million)
    per series, which is why money stays `int`/`Decimal` everywhere else and is converted
    here, once, when it is added to a metric.
    """
    return float(Decimal(nano_usd) / NANO_USD_PER_USD)


def seconds_from_ms(ms: float) -> float:
    """Milliseconds (Tollway's records) as seconds (Prometheus' base unit)."""
    return ms / 1000.0


def consumer_lag(
    end_offsets: Mapping[tuple[str, int], int], committed: Mapping[tuple[str, int], int]
) -> dict[str, int]:
    """Records per topic that a consumer group has not committed yet.

    Per partition: end offset (the next offset to be written) minus the committed
    offset (the next one the group will read), never negative; summed by topic.
    Partitions the group has never committed are left out (their lag is unknown, not
    zero: a group that starts at `latest` would otherwise report the whole topic).
    Topics of `committed` whose end offsets are unknown are left out too.
    """
    lag: dict[str, int] = {}
    for (topic, partition), offset in committed.items():
        end = end_offsets.get((topic, partition))
        if end is None or offset < 0:
            continue
        lag[topic] = lag.get(topic, 0) + max(0, end - offset)
    return lag
