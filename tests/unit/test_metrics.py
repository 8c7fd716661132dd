"""Prometheus metrics: label mapping, unit conversion, lag maths, naming, and the groups'
bookkeeping, on fresh registries (no sockets, no Kafka)."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Metric
from prometheus_client.metrics import MetricWrapperBase

from schemas.records import Attempt, Result
from workers.cache.canonical import CACHE_STATUS_KEY
from workers.telemetry import metrics
from workers.telemetry.metrics_asgi import HttpMetricsMiddleware
from workers.telemetry.metrics_labels import (
    NANO_USD_PER_USD,
    OTHER,
    consumer_lag,
    error_class,
    route_family,
    status_class,
    usd_from_nano,
)

ROOT = Path(__file__).resolve().parents[2]
GROUPS = (
    metrics.HttpMetrics,
    metrics.ErrorMetrics,
    metrics.DeadLetterMetrics,
    metrics.CostMetrics,
    metrics.StreamMetrics,
    metrics.BudgetMetrics,
    metrics.LoaderMetrics,
    metrics.WebhookMetrics,
    metrics.BatchMetrics,
    metrics.LagMetrics,
)
UNBOUNDED_LABELS = {"request_id", "key_id", "team_id", "execution_id", "attempt_id", "path"}


def every_family() -> list[Metric]:
    registry = CollectorRegistry()
    for group in GROUPS:
        group(registry)
    metrics.RouterMetrics(registry, metrics.ErrorMetrics(CollectorRegistry()))
    return list(registry.collect())


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


# --- labels ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/v1/async/chat/completions", "/v1/async/chat/completions"),
        ("/v1/async/bulk/chat/completions", "/v1/async/bulk/chat/completions"),
        ("/v1/async/requests/req_abc123", "/v1/async/requests/{id}"),
        ("/v1/files/file_1/content", "/v1/files"),
        ("/v1/files", "/v1/files"),
        ("/v1/batches/batch_9/cancel", "/v1/batches"),
        ("/v1/analytics/spend", "/v1/analytics"),
        ("/admin/v1/teams/t1", "/admin/v1"),
        ("/healthz", "/healthz"),
        ("/v1/chat/completionsX", OTHER),  # a prefix of a word is not the route
        ("/v1/modelsfoo", OTHER),
        ("/wp-login.php", OTHER),
        ("/", OTHER),
    ],
)
def test_route_family_maps_paths_onto_a_closed_set(path: str, label: str) -> None:
    assert route_family(path) == label


@given(st.text(max_size=60))
def test_route_family_never_returns_the_path_itself_unless_it_is_a_family(path: str) -> None:
    families = {label for label, _ in metrics_labels_families()} | {OTHER}
    assert route_family(path) in families


def metrics_labels_families() -> tuple[tuple[str, str], ...]:
    from workers.telemetry.metrics_labels import ROUTE_FAMILIES

    return ROUTE_FAMILIES


@pytest.mark.parametrize(
    ("status", "label"), [(200, "2xx"), (202, "2xx"), (401, "4xx"), (503, "5xx"), (99, OTHER)]
)
def test_status_class(status: int, label: str) -> None:
    assert status_class(status) == label


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("BudgetExceeded", "BudgetExceeded"),
        ("ProviderTimeout", "ProviderTimeout"),
        ("AllProvidersFailed", "AllProvidersFailed"),
        ("TollwayError", "TollwayError"),
        ("KeyError", OTHER),  # not in the tree
        ("req_123", OTHER),
        (None, OTHER),
    ],
)
def test_error_class_accepts_only_names_of_the_error_tree(name: str | None, label: str) -> None:
    assert error_class(name) == label


# --- units -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nano_usd", "usd"),
    [(0, 0.0), (1, 1e-9), (1_500_000_000, 1.5), (123_456_789, 0.123456789), (10**18, 1e9)],
)
def test_usd_from_nano(nano_usd: int, usd: float) -> None:
    assert usd_from_nano(nano_usd) == usd


@given(st.integers(min_value=0, max_value=2**23 * 10**9 - 1))
def test_usd_from_nano_is_exact_to_the_nano_usd_below_2_pow_23_usd(nano_usd: int) -> None:
    # Below 2**23 USD a float64's spacing is at most 2**-30 < 1e-9, so the nearest
    # nano-USD is recoverable; above, two amounts can share a float.
    usd = usd_from_nano(nano_usd)
    assert (Decimal(usd) * NANO_USD_PER_USD).to_integral_value() == nano_usd


# --- lag ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ends", "committed", "lag"),
    [
        ({("a", 0): 10, ("a", 1): 5}, {("a", 0): 7, ("a", 1): 5}, {"a": 3}),
        ({("a", 0): 10, ("b", 0): 4}, {("a", 0): 10, ("b", 0): 1}, {"a": 0, "b": 3}),
        ({("a", 0): 10, ("a", 1): 8}, {("a", 0): 2}, {"a": 8}),  # never-committed p1: left out
        ({("a", 0): 3}, {("a", 0): 5}, {"a": 0}),  # end read before the commit: not negative
        ({}, {("a", 0): 5}, {}),  # end unknown
        ({("a", 0): 3}, {("a", 0): -1}, {}),  # -1: Kafka's "no offset"
    ],
)
def test_consumer_lag(
    ends: dict[tuple[str, int], int], committed: dict[tuple[str, int], int], lag: dict[str, int]
) -> None:
    assert consumer_lag(ends, committed) == lag


async def test_the_lag_monitor_sets_one_gauge_per_group_and_topic() -> None:
    from aiokafka import TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    from workers.telemetry.metrics_lag import LagMonitor

    class Admin:
        async def list_consumer_group_offsets(self, group: str) -> dict[Any, Any]:
            assert group == "g"
            return {
                TopicPartition("t", 0): OffsetAndMetadata(4, ""),
                TopicPartition("t", 1): OffsetAndMetadata(9, ""),
            }

    class Ends:
        async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
            return dict.fromkeys(tps, 10)

    registry = CollectorRegistry()
    monitor = LagMonitor("unused:9092", ("g",), metrics.LagMetrics(registry), 1.0)
    assert await monitor.read(Admin(), Ends(), "g") == {"t": 7}
    assert value(registry, "tollway_consumer_lag_records", group="g", topic="t") == 7


# --- naming ------------------------------------------------------------------------


@pytest.mark.parametrize("family", every_family(), ids=lambda f: f.name)
def test_series_follow_prometheus_naming(family: Metric) -> None:
    assert family.name.startswith("tollway_")
    assert re.fullmatch(r"[a-z_]+", family.name)
    if family.type == "counter":  # the client adds `_total` to the exposed name
        assert not family.name.endswith("_total")
    if family.type == "histogram":
        assert family.name.endswith("_seconds")
    assert "_ms" not in family.name  # base units only
    assert "nano" not in family.name


def test_no_series_is_labelled_by_an_unbounded_id() -> None:
    registry = CollectorRegistry()
    groups: list[object] = [group(registry) for group in GROUPS]
    groups.append(metrics.RouterMetrics(registry, metrics.ErrorMetrics(CollectorRegistry())))
    wrappers = [m for g in groups for m in vars(g).values() if isinstance(m, MetricWrapperBase)]
    assert len(wrappers) > 20
    for wrapper in wrappers:
        # `_labelnames`: the client keeps a metric's declared labels there (no public getter)
        assert not set(wrapper._labelnames) & UNBOUNDED_LABELS


def test_every_series_is_documented_with_its_type() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text("utf-8")
    for family in every_family():
        exposed = family.name + ("_total" if family.type == "counter" else "")
        row = re.search(rf"^\| `{exposed}` \| (\w+) \|", doc, re.MULTILINE)
        assert row is not None, f"{exposed} is not in docs/metrics.md"
        assert row.group(1) == family.type


# --- groups ------------------------------------------------------------------------


def attempt(deployment: str, error_type: str | None, latency_ms: float) -> Attempt:
    return {  # type: ignore[typeddict-item]  # only what the metrics read
        "deployment": deployment,
        "error_type": error_type,
        "latency_ms": latency_ms,
    }


def result(status: str, mode: str, error_type: str | None, cache: str | None) -> Result:
    return {  # type: ignore[typeddict-item]  # only what the metrics read
        "status": status,
        "mode": mode,
        "error_type": error_type,
        "received_at_ms": 1_000,
        "finished_at_ms": 1_250,
        "metadata": {} if cache is None else {CACHE_STATUS_KEY: cache},
    }


def test_router_metrics_count_an_execution_from_its_records() -> None:
    registry = CollectorRegistry()
    router = metrics.RouterMetrics(registry, metrics.ErrorMetrics(registry))
    router.execution(
        result("failed", "sync", "AllProvidersFailed", "miss"),
        [attempt("a", "ProviderTimeout", 2_000.0), attempt("b", "NotAnError", 500.0)],
    )
    router.execution(result("succeeded", "async", None, "semantic-hit"), [])
    router.execution(result("succeeded", "batch", None, "weird"), [attempt("a", None, 40.0)])
    assert value(registry, "tollway_provider_attempts_total", deployment="a", outcome="error") == 1
    assert value(registry, "tollway_provider_attempts_total", deployment="a", outcome="ok") == 1
    assert value(registry, "tollway_provider_errors_total", deployment="b", error_class=OTHER) == 1
    assert value(registry, "tollway_provider_latency_seconds_sum", deployment="a") == 2.04
    assert value(registry, "tollway_router_requests_total", mode="sync", status="failed") == 1
    assert value(registry, "tollway_router_request_duration_seconds_sum", mode="sync") == 0.25
    assert value(registry, "tollway_errors_total", error_class="AllProvidersFailed") == 1
    assert value(registry, "tollway_cache_lookups_total", result="semantic-hit") == 1
    assert value(registry, "tollway_cache_lookups_total", result="miss") == 1
    assert value(registry, "tollway_cache_lookups_total", result=OTHER) == 1


def test_reservation_gauges_read_the_ledger_at_scrape_time_in_usd() -> None:
    registry = CollectorRegistry()
    router = metrics.RouterMetrics(registry, metrics.ErrorMetrics(registry))
    held = {"holds": 2, "nano": 2_500_000_000}
    router.watch_reservations(lambda: held["holds"], lambda: held["nano"])
    assert value(registry, "tollway_budget_reservations_open") == 2
    assert value(registry, "tollway_budget_reserved_usd") == 2.5
    held["holds"] = 0
    assert value(registry, "tollway_budget_reservations_open") == 0


def test_a_scrape_racing_the_event_loop_reads_nan_not_an_error() -> None:
    registry = CollectorRegistry()
    router = metrics.RouterMetrics(registry, metrics.ErrorMetrics(registry))

    def racing() -> int:
        raise RuntimeError("dictionary changed size during iteration")

    router.watch_reservations(racing, lambda: 0)
    assert value(registry, "tollway_budget_reservations_open") != value(
        registry, "tollway_budget_reservations_open"
    )  # NaN


def test_cost_metrics_add_tokens_and_spend_in_usd() -> None:
    registry = CollectorRegistry()
    cost = metrics.CostMetrics(registry)
    cost.usage_record("gpt-4o-mini", "priced", 100, 20, 27_000)
    cost.usage_record("gpt-4o-mini", "priced", 50, 10, 13_000)
    assert value(registry, "tollway_tokens_total", model="gpt-4o-mini", kind="input") == 150
    assert value(registry, "tollway_tokens_total", model="gpt-4o-mini", kind="output") == 30
    assert value(registry, "tollway_spend_usd_total", model="gpt-4o-mini") == pytest.approx(4e-5)
    assert value(registry, "tollway_usage_records_total", cost_status="priced") == 2


async def test_the_http_middleware_counts_by_route_family_and_status_class() -> None:
    registry = CollectorRegistry()
    http = metrics.HttpMetrics(registry)
    in_flight_seen: list[float] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        in_flight_seen.append(value(registry, "tollway_http_requests_in_flight"))
        status = 404 if scope["path"].startswith("/v1/async/requests/") else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(_: Any) -> None:
        return None

    middleware = HttpMetricsMiddleware(app, http)
    for path in ("/v1/chat/completions", "/v1/async/requests/req_1", "/v1/async/requests/req_2"):
        await middleware({"type": "http", "path": path}, receive, send)
    with pytest.raises(RuntimeError):
        await HttpMetricsMiddleware(failing, http)({"type": "http", "path": "/x"}, receive, send)
    assert in_flight_seen == [1, 1, 1]
    assert value(registry, "tollway_http_requests_in_flight") == 0
    assert (
        value(
            registry,
            "tollway_http_requests_total",
            route="/v1/async/requests/{id}",
            status_class="4xx",
        )
        == 2
    )
    assert (
        value(
            registry,
            "tollway_http_requests_total",
            route="/v1/chat/completions",
            status_class="2xx",
        )
        == 1
    )
    assert value(registry, "tollway_http_requests_total", route=OTHER, status_class="5xx") == 1
    assert value(registry, "tollway_http_request_duration_seconds_count", route=OTHER) == 1


def test_no_port_means_no_listener() -> None:
    assert metrics.start_metrics("router", None) is None
    assert metrics.start_metrics("router", 0) is None
