"""Every Tollway process serves Prometheus metrics, and after real traffic the documented
series have non-zero values (issue 11, first acceptance point; docs/metrics.md).

One stack of real processes (its own, so the callback dispatcher may deliver to a
loopback receiver and the lag monitor reads every second). Traffic: sync, streamed,
failing and async requests (two with callback URLs: one answered 500 then 204, one
410 Gone, which dead-letters it), a request the ingress refuses, and a two-line batch.
Each process's /metrics is then scraped until its expected series are non-zero.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy.stack import STATE_DIR, Stack
from tests.integration.conftest import free_port

pytestmark = pytest.mark.e2e

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
Check = tuple[str, dict[str, str]]
"""(sample name, labels it must have): the sum of matching samples must be > 0."""


class Receiver:
    """A webhook endpoint on loopback: `/flaky` answers 500 once, then 204; `/gone` 410."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                seen = receiver.calls.get(self.path, 0)
                receiver.calls[self.path] = seen + 1
                status = 410 if self.path == "/gone" else (500 if seen == 0 else 204)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str) -> Iterator[Stack]:
    running = Stack(
        ingress_port=free_port(),
        mock_port=free_port(),
        clickhouse_port=free_port(),
        clickhouse_data=STATE_DIR / "clickhouse-e2e-metrics",
        routers=1,
        mock_latency_ms=20,
        log_dir=STATE_DIR / "logs" / "e2e-metrics",
        extra_env={
            "TOLLWAY_AUTH": "open",
            "TOLLWAY_ROUTER_SESSION_TIMEOUT_MS": "6000",
            "TOLLWAY_METRICS_LAG_INTERVAL_S": "1",
            "TOLLWAY_CALLBACKS_ALLOW_HTTP": "true",
            "TOLLWAY_CALLBACKS_ALLOW_NETWORKS": '["127.0.0.0/8"]',
            "TOLLWAY_CALLBACKS_START_FROM": "earliest",
            "TOLLWAY_CALLBACKS_RETRY_BASE_S": "0.2",
        },
    )
    running.start(kafka_bootstrap)
    yield running
    running.stop()


def scrape(url: str) -> Samples:
    text = httpx.get(url, timeout=5).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, labels: dict[str, str]) -> float:
    wanted = set(labels.items())
    return sum(v for (n, got), v in samples.items() if n == name and wanted <= got)


def present(samples: Samples, name: str, labels: dict[str, str]) -> bool:
    wanted = set(labels.items())
    return any(n == name and wanted <= got for (n, got) in samples)


LAG = "tollway_consumer_lag_records"
EXPECTED: dict[str, list[Check]] = {
    "ingress": [
        ("tollway_http_requests_total", {"route": "/v1/chat/completions", "status_class": "2xx"}),
        ("tollway_http_requests_total", {"route": "/v1/async/chat/completions"}),
        ("tollway_http_requests_total", {"status_class": "4xx"}),
        ("tollway_http_request_duration_seconds_count", {"route": "/v1/chat/completions"}),
        ("tollway_errors_total", {"error_class": "UnknownModel"}),
    ],
    "router-1": [
        ("tollway_router_requests_total", {"mode": "sync", "status": "succeeded"}),
        ("tollway_router_requests_total", {"mode": "async"}),
        ("tollway_router_requests_total", {"mode": "batch"}),
        ("tollway_router_requests_total", {"status": "failed"}),
        ("tollway_router_request_duration_seconds_count", {"mode": "sync"}),
        ("tollway_provider_attempts_total", {"outcome": "ok"}),
        ("tollway_provider_attempts_total", {"outcome": "error"}),
        ("tollway_provider_errors_total", {"error_class": "ProviderServerError"}),
        ("tollway_provider_latency_seconds_count", {}),
        ("tollway_provider_ttft_seconds_count", {}),
        ("tollway_errors_total", {}),
    ],
    "cost-processor": [
        ("tollway_usage_records_total", {"cost_status": "priced"}),
        ("tollway_tokens_total", {"model": "gpt-4o-mini", "kind": "input"}),
        ("tollway_tokens_total", {"model": "gpt-4o-mini", "kind": "output"}),
        ("tollway_spend_usd_total", {"model": "gpt-4o-mini"}),
        ("tollway_stream_events_total", {"agent": "price-attempts"}),
        ("tollway_stream_batch_duration_seconds_count", {"agent": "price-attempts"}),
    ],
    "budget-processor": [
        ("tollway_budget_usage_records_total", {"outcome": "applied"}),
        ("tollway_stream_events_total", {"agent": "budget-usage"}),
    ],
    "loader": [
        ("tollway_loader_rows_total", {}),
        ("tollway_loader_insert_duration_seconds_count", {}),
    ],
    "callbacks": [
        ("tollway_webhook_attempts_total", {"outcome": "delivered"}),
        ("tollway_webhook_attempts_total", {"outcome": "retry"}),
        ("tollway_webhook_retries_total", {}),
        ("tollway_dead_letters_total", {"topic": "tollway.callbacks.dead"}),
        ("tollway_webhook_attempt_duration_seconds_count", {}),
    ],
    "batches-worker": [
        ("tollway_batch_lines_expanded_total", {}),
        ("tollway_batch_results_total", {}),
        ("tollway_batches_finished_total", {"status": "completed"}),
    ],
}
"""Series that must be non-zero after the traffic, per component."""
PRESENT: dict[str, list[Check]] = {
    "ingress": [("tollway_http_requests_in_flight", {})],
    "router-1": [("tollway_router_requests_in_flight", {}), (LAG, {"group": "tollway-router"})],
    "cost-processor": [(LAG, {"group": "tollway-cost", "topic": "tollway.attempts"})],
    "budget-processor": [(LAG, {"topic": "tollway.usage"})],
    "loader": [(LAG, {"topic": "tollway.results"})],
    "callbacks": [(LAG, {"group": "tollway-callbacks", "topic": "tollway.results"})],
    "batches-worker": [],  # its group commits no offsets (state is re-read): no lag series
}
"""Gauges that may rightly be 0 at rest (in flight, caught-up lag): they must exist."""


def drive_traffic(client: httpx.Client, receiver: Receiver) -> str:
    """Send the run's requests; returns the batch id."""
    for _ in range(3):
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as stream:
        assert stream.status_code == 200
        assert b"[DONE]" in b"".join(stream.iter_bytes())
    failed = client.post("/v1/chat/completions", json={**CHAT, "model": "mock-error-500"})
    assert failed.status_code >= 500
    refused = client.post("/v1/chat/completions", json={**CHAT, "model": "no-such-model"})
    assert refused.status_code in {400, 404}
    for path in ("/flaky", "/gone"):
        body = {**CHAT, "callback_url": f"{receiver.url}{path}"}
        assert client.post("/v1/async/chat/completions", json=body).status_code == 202
    lines = b"".join(
        orjson.dumps(
            {"custom_id": f"m-{i}", "method": "POST", "url": "/v1/chat/completions", "body": CHAT}
        )
        + b"\n"
        for i in range(2)
    )
    uploaded = client.post(
        "/v1/files", files={"file": ("in.jsonl", lines)}, data={"purpose": "batch"}
    )
    assert uploaded.status_code == 200, uploaded.text
    created = client.post(
        "/v1/batches",
        json={
            "input_file_id": uploaded.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
    )
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


def wait_until(check: Callable[[], list[str]], timeout_s: float) -> list[str]:
    """Poll `check` (which returns what is still missing) until nothing is, or time runs out."""
    deadline = time.monotonic() + timeout_s
    missing = check()
    while missing and time.monotonic() < deadline:
        time.sleep(0.5)
        missing = check()
    return missing


def test_every_process_serves_its_documented_series_after_traffic(
    stack: Stack, receiver: Receiver
) -> None:
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        batch_id = drive_traffic(client, receiver)
        status = wait_until(
            lambda: [] if client.get(f"/v1/batches/{batch_id}").json()["status"] == "completed"
            else ["batch"],
            timeout_s=40,
        )  # fmt: skip
        assert status == [], "the batch did not complete"

    urls = {c.name: c.metrics_url for c in stack.components if c.metrics_url is not None}
    assert set(urls) == set(EXPECTED), urls

    def missing() -> list[str]:
        gaps = []
        for name, url in urls.items():
            # A listener may not be up yet (the loader opens its own after the migrations,
            # seen on a fresh clone's first stack): retried until the deadline, then shown.
            try:
                samples = scrape(url)
            except httpx.TransportError as exc:
                gaps.append(f"{name}: {url} not answering ({type(exc).__name__})")
                continue
            gaps += [
                f"{name}: {s} {ls} = 0" for s, ls in EXPECTED[name] if total(samples, s, ls) <= 0
            ]
            gaps += [
                f"{name}: no {s} {ls}" for s, ls in PRESENT[name] if not present(samples, s, ls)
            ]
        return gaps

    assert wait_until(missing, timeout_s=30) == []
    assert receiver.calls.get("/flaky", 0) >= 2  # the retry the metrics counted happened
