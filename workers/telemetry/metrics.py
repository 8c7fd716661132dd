"""Prometheus metrics of every Tollway process: the series, and the listener serving them.

Naming (Prometheus conventions): every series starts with `tollway_`; counters end in
`_total`; values are in base units, named in the suffix (`_seconds`, `_usd`,
`_records`); labels take bounded values only (deployments, models, route families,
error classes of schemas/errors.py, topics), never request, key or team ids. The
series list, with types, labels and the process that exposes each, is docs/metrics.md.

Each process builds only the groups it has data for (`router_metrics()`,
`cost_metrics()`, ...): the first call registers the group in the process's default
registry, later calls return the same object, so nothing is registered at import
time and a process never exposes another process's series. Unit tests build a group
on a fresh `CollectorRegistry` instead.

Serving: `start_metrics(component, port)` starts Prometheus' own HTTP listener on a
thread (`GET /metrics`, text format), so a scrape is answered even while the
process's event loop is busy, and the same helper serves faust, aiokafka and uvicorn
processes alike (docs/decisions/0018-metrics.md). Port 0 or None: no listener, no lag
monitor; the series are still counted (cheap) but nobody reads them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Final

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import start_http_server as _start_http_server
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.records import Attempt, Result
from workers.cache.canonical import CACHE_STATUS_KEY
from workers.telemetry.metrics_labels import (
    OTHER,
    error_class,
    seconds_from_ms,
    usd_from_nano,
)

log = logging.getLogger("tollway.metrics")

LATENCY_BUCKETS_S: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip
"""Request and provider-call latency: from a cache hit (ms) to a long completion (2 min)."""
TTFT_BUCKETS_S: Final = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
CACHE_RESULTS: Final = frozenset({"hit", "semantic-hit", "miss"})
BATCH_BUCKETS_S: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0)
"""Stream-processor batches and ClickHouse inserts: usually well under a second."""


class MetricsSettings(BaseSettings):
    """Where every process's metrics listener binds (the port is per component)."""

    model_config = SettingsConfigDict(env_prefix="TOLLWAY_METRICS_", frozen=True, extra="ignore")

    host: str = Field(
        default="127.0.0.1",
        description="Interface of every process's /metrics listener (0.0.0.0 in a "
        "container, for the scraper). The port is the component's *_METRICS_PORT.",
    )
    lag_interval_s: float = Field(
        default=5.0, gt=0, description="How often consumer lag is read from Kafka."
    )


# --- groups --------------------------------------------------------------------------


class HttpMetrics:
    """The ingress's HTTP surface (workers/telemetry/metrics_asgi.py feeds it)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "tollway_http_requests_total",
            "HTTP requests answered by the ingress, by route family and status class.",
            ["route", "status_class"],
            registry=registry,
        )
        self.duration = Histogram(
            "tollway_http_request_duration_seconds",
            "Time from request start to the end of the response (streams: the last event).",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.in_flight = Gauge(
            "tollway_http_requests_in_flight",
            "HTTP requests being handled now.",
            registry=registry,
        )


class ErrorMetrics:
    """Errors by class of the typed tree (schemas/errors.py): those this process answered
    (ingress) or that ended a request (router)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.errors = Counter(
            "tollway_errors_total",
            "Errors by class of the error tree: answered by the ingress, or ending a "
            "request at the router.",
            ["error_class"],
            registry=registry,
        )

    def count(self, name: str | None) -> None:
        self.errors.labels(error_class(name)).inc()


class DeadLetterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter(
            "tollway_dead_letters_total",
            "Records published to a dead-letter topic by this process, by topic.",
            ["topic"],
            registry=registry,
        )


class RouterMetrics:
    """Router: requests executed, provider calls, cache, in-flight work, reservations."""

    def __init__(self, registry: CollectorRegistry, errors: ErrorMetrics) -> None:
        self.errors = errors
        self.requests = Counter(
            "tollway_router_requests_total",
            "Requests executed by this router (one per execution), by mode and final status.",
            ["mode", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "tollway_router_request_duration_seconds",
            "Time from ingress acceptance to the router's result (queueing included).",
            ["mode"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.skipped_finished = Counter(
            "tollway_router_skipped_finished_total",
            "Request records not run again: the partition's previous owner had finished them "
            "(commit metadata, docs/decisions/0023).",
            registry=registry,
        )
        self.in_flight = Gauge(
            "tollway_router_requests_in_flight",
            "Request records being executed now (waiting for a rate limit included).",
            registry=registry,
        )
        self.attempts = Counter(
            "tollway_provider_attempts_total",
            "Provider calls, by deployment and outcome (ok | error).",
            ["deployment", "outcome"],
            registry=registry,
        )
        self.attempt_errors = Counter(
            "tollway_provider_errors_total",
            "Failed provider calls, by deployment and error class.",
            ["deployment", "error_class"],
            registry=registry,
        )
        self.provider_latency = Histogram(
            "tollway_provider_latency_seconds",
            "Duration of one provider call (streams: to the last chunk), by deployment.",
            ["deployment"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.ttft = Histogram(
            "tollway_provider_ttft_seconds",
            "Streamed calls: time from the call's start to the provider's first chunk.",
            ["deployment"],
            buckets=TTFT_BUCKETS_S,
            registry=registry,
        )
        self.cache = Counter(
            "tollway_cache_lookups_total",
            "Response-cache lookups by result (hit | semantic-hit | miss); cache on only.",
            ["result"],
            registry=registry,
        )
        self.reservations_open = Gauge(
            "tollway_budget_reservations_open",
            "Budget reservations held by provider calls in flight (budgets configured only).",
            registry=registry,
        )
        self.reserved_usd = Gauge(
            "tollway_budget_reserved_usd",
            "USD held by those reservations (worst-case cost of the calls in flight).",
            registry=registry,
        )

    def attempt(self, deployment: str, error_type: str | None, latency_ms: float) -> None:
        """One provider call, from its `Attempt` record's fields."""
        self.attempts.labels(deployment, "ok" if error_type is None else "error").inc()
        if error_type is not None:
            self.attempt_errors.labels(deployment, error_class(error_type)).inc()
        self.provider_latency.labels(deployment).observe(seconds_from_ms(latency_ms))

    def result(self, mode: str, status: str, duration_ms: int) -> None:
        self.requests.labels(mode, status).inc()
        self.duration.labels(mode).observe(seconds_from_ms(max(0, duration_ms)))

    def execution(self, result: Result, attempts: Sequence[Attempt]) -> None:
        """Everything one execution did, from the records the router publishes for it."""
        for attempt in attempts:
            self.attempt(attempt["deployment"], attempt["error_type"], attempt["latency_ms"])
        self.result(
            result["mode"], result["status"], result["finished_at_ms"] - result["received_at_ms"]
        )
        cache_status = result["metadata"].get(CACHE_STATUS_KEY)
        if cache_status is not None:
            self.cache.labels(cache_status if cache_status in CACHE_RESULTS else OTHER).inc()
        if result["status"] == "failed":
            self.errors.count(result["error_type"])

    def watch_reservations(
        self, holds: Callable[[], int], reserved_nano_usd: Callable[[], int]
    ) -> None:
        """Read the ledger at scrape time (the scrape runs on the listener's thread: the
        callables must tolerate that; reading a length or a sum of ints does)."""
        self.reservations_open.set_function(lambda: _tolerant(holds))
        self.reserved_usd.set_function(lambda: usd_from_nano(int(_tolerant(reserved_nano_usd))))


class CostMetrics:
    """Cost processor: priced usage, tokens and spend by model."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.usage = Counter(
            "tollway_usage_records_total",
            "Usage records published, by cost status (priced | unpriced | ...).",
            ["cost_status"],
            registry=registry,
        )
        self.tokens = Counter(
            "tollway_tokens_total",
            "Tokens of priced provider calls, by model and kind (input | output).",
            ["model", "kind"],
            registry=registry,
        )
        self.spend = Counter(
            "tollway_spend_usd_total",
            "Priced cost of provider calls in USD, by model (from nano-USD at this boundary).",
            ["model"],
            registry=registry,
        )

    def usage_record(
        self,
        model: str,
        cost_status: str,
        input_tokens: int,
        output_tokens: int,
        cost_nano_usd: int,
    ) -> None:
        self.usage.labels(cost_status).inc()
        self.tokens.labels(model, "input").inc(max(0, input_tokens))
        self.tokens.labels(model, "output").inc(max(0, output_tokens))
        self.spend.labels(model).inc(usd_from_nano(max(0, cost_nano_usd)))


class StreamMetrics:
    """Faust processors (cost, budget): batches handled by each agent."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "tollway_stream_events_total",
            "Records handled by a stream processor's agent.",
            ["agent"],
            registry=registry,
        )
        self.batch_duration = Histogram(
            "tollway_stream_batch_duration_seconds",
            "Time to handle one batch, its Kafka writes acknowledged.",
            ["agent"],
            buckets=BATCH_BUCKETS_S,
            registry=registry,
        )


class BudgetMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.usage = Counter(
            "tollway_budget_usage_records_total",
            "Usage records applied to the budget windows, by outcome "
            "(applied | duplicate | replayed | ...).",
            ["outcome"],
            registry=registry,
        )


class LoaderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows = Counter(
            "tollway_loader_rows_total",
            "Rows written to ClickHouse, by table.",
            ["table"],
            registry=registry,
        )
        self.insert_duration = Histogram(
            "tollway_loader_insert_duration_seconds",
            "Duration of one successful ClickHouse insert, by table.",
            ["table"],
            buckets=BATCH_BUCKETS_S,
            registry=registry,
        )
        self.insert_failures = Counter(
            "tollway_loader_insert_failures_total",
            "Failed ClickHouse inserts (each is retried), by table.",
            ["table"],
            registry=registry,
        )


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "tollway_webhook_attempts_total",
            "Webhook delivery attempts by outcome (delivered | retry | refused | gone).",
            ["outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "tollway_webhook_attempt_duration_seconds",
            "Duration of one webhook delivery attempt.",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.retries = Counter(
            "tollway_webhook_retries_total",
            "Webhook deliveries scheduled for another attempt.",
            registry=registry,
        )


class BatchMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.lines = Counter(
            "tollway_batch_lines_expanded_total",
            "Batch input lines published as requests.",
            registry=registry,
        )
        self.results = Counter(
            "tollway_batch_results_total",
            "Results of batch lines collected into their batch's output.",
            registry=registry,
        )
        self.finished = Counter(
            "tollway_batches_finished_total",
            "Batches that reached a final status, by status.",
            ["status"],
            registry=registry,
        )


class LagMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.lag = Gauge(
            "tollway_consumer_lag_records",
            "Records of a topic not yet committed by this process's consumer group "
            "(end offset minus committed offset, summed over partitions).",
            ["group", "topic"],
            registry=registry,
        )


def _tolerant(read: Callable[[], int]) -> float:
    """`read()`, or NaN when the event loop changed the structure mid-read (the scrape
    thread races the loop; the next scrape reads again)."""
    try:
        return float(read())
    except RuntimeError:  # "dictionary changed size during iteration"
        return float("nan")


# One instance of each group per process, on the default registry, made on first use.
http_metrics = cache(lambda: HttpMetrics(REGISTRY))
error_metrics = cache(lambda: ErrorMetrics(REGISTRY))
dead_letter_metrics = cache(lambda: DeadLetterMetrics(REGISTRY))
router_metrics = cache(lambda: RouterMetrics(REGISTRY, error_metrics()))
cost_metrics = cache(lambda: CostMetrics(REGISTRY))
stream_metrics = cache(lambda: StreamMetrics(REGISTRY))
budget_metrics = cache(lambda: BudgetMetrics(REGISTRY))
loader_metrics = cache(lambda: LoaderMetrics(REGISTRY))
webhook_metrics = cache(lambda: WebhookMetrics(REGISTRY))
batch_metrics = cache(lambda: BatchMetrics(REGISTRY))
lag_metrics = cache(lambda: LagMetrics(REGISTRY))


# --- serving -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricsServer:
    """A running /metrics listener (a daemon thread: it ends with the process)."""

    url: str
    stop: Callable[[], None]


def serve_metrics(
    port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY
) -> MetricsServer:
    """Serve `registry` at http://host:port/metrics on a daemon thread; port 0 = any free."""
    server, thread = _start_http_server(port, addr=host, registry=registry)
    bound = server.server_address[1]

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return MetricsServer(f"http://{host}:{bound}/metrics", stop)


def start_metrics(
    component: str,
    port: int | None,
    *,
    bootstrap: str | None = None,
    lag_groups: Sequence[str] = (),
    settings: MetricsSettings | None = None,
) -> MetricsServer | None:
    """The process's /metrics listener (None when `port` is 0 or None) and, with
    `bootstrap`, a thread reading the consumer lag of `lag_groups` every
    `lag_interval_s` (workers/telemetry/metrics_lag.py)."""
    if not port:
        return None
    settings = settings or MetricsSettings()
    served = serve_metrics(port, settings.host)
    if bootstrap is not None and lag_groups:
        from workers.telemetry.metrics_lag import LagMonitor  # aiokafka: only when used

        monitor = LagMonitor(bootstrap, tuple(lag_groups), lag_metrics(), settings.lag_interval_s)
        threading.Thread(target=monitor.run, name="tollway-lag", daemon=True).start()
    log.info("%s metrics on %s", component, served.url)
    return served
