"""End to end: one request is one trace across the processes, and every process logs JSON.

The stack runs with `TOLLWAY_OTEL_EXPORTER=jsonl:<dir>/{service}-{pid}.jsonl` (each
process appends its spans to its own file; workers/telemetry/span_file.py) and the
default log format of the services (JSON). A successful and a failing chat request go
through it; their spans are read back from the files and their parent links checked:

    ingress  GET/POST server span -> publish (producer)
    router   process tollway.requests.interactive (consumer) -> chat <model> (client)
    cost     process tollway.attempts (consumer)       (child of the router's span)
    budget   process tollway.usage (consumer)          (child of the cost span)
    loader   process tollway.results / attempts / usage (children of their producers)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from deploy.stack import Stack
from tests.integration.conftest import free_port

pytestmark = pytest.mark.e2e

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "trace me"}]}
FAILING = {"model": "mock-error-500", "messages": [{"role": "user", "content": "fail"}]}
SPANS_TIMEOUT_S = 30.0
JSON_LOGGED = ("ingress", "router-1", "cost-processor", "budget-processor", "loader")
"""Components that log at start, so an empty log would mean logging is broken."""


@pytest.fixture(scope="module")
def traced_stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("tracing")
    running = Stack(
        ingress_port=free_port(),
        mock_port=free_port(),
        clickhouse_port=free_port(),
        clickhouse_data=base / "clickhouse",
        routers=1,
        mock_latency_ms=20,
        log_dir=base / "logs",
        extra_env={
            "TOLLWAY_AUTH": "open",
            "OPENAI_API_KEY": "",  # the built-in routes then go to the mock provider
            "TOLLWAY_ROUTER_SESSION_TIMEOUT_MS": "6000",
            "TOLLWAY_OTEL_EXPORTER": f"jsonl:{base / 'spans' / '{service}-{pid}.jsonl'}",
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # the SDK's batch delay: spans on disk quickly
        },
    )
    running.start(kafka_bootstrap)
    yield running
    running.stop()


def read_spans(stack: Stack) -> list[dict[str, Any]]:
    spans_dir = stack.log_dir.parent / "spans"
    return [
        orjson.loads(line)
        for path in sorted(spans_dir.glob("*.jsonl"))
        for line in path.read_bytes().splitlines()
        if line.strip()
    ]


def trace_of(spans: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
    """Every span of the trace whose ingress server span carries `request_id`."""
    roots = [
        s
        for s in spans
        if s["kind"] == "server" and s["attributes"].get("tollway.request_id") == request_id
    ]
    if not roots:
        return []
    (root,) = roots
    return [s for s in spans if s["trace_id"] == root["trace_id"]]


def wanted_names(trace: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(s["service"], s["name"]) for s in trace}


def wait_for_trace(
    stack: Stack, request_id: str, expected: set[tuple[str, str]]
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + SPANS_TIMEOUT_S
    trace: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        trace = trace_of(read_spans(stack), request_id)
        if wanted_names(trace) >= expected:
            return trace
        time.sleep(0.5)
    missing = expected - wanted_names(trace)
    pytest.fail(f"trace of {request_id} lacks {sorted(missing)}; has {sorted(wanted_names(trace))}")


def one(trace: list[dict[str, Any]], service: str, name: str) -> dict[str, Any]:
    found = [s for s in trace if s["service"] == service and s["name"] == name]
    assert len(found) == 1, (service, name, found)
    return found[0]


def assert_links_consistent(trace: list[dict[str, Any]]) -> None:
    """One root (the ingress's server span); every other span's parent is in the trace
    and started no later than it (clocks of one machine)."""
    by_id = {s["span_id"]: s for s in trace}
    assert len(by_id) == len(trace)  # span ids are unique
    roots = [s for s in trace if s["parent_span_id"] is None]
    assert [(r["service"], r["kind"]) for r in roots] == [("tollway-ingress", "server")]
    for span in trace:
        if span["parent_span_id"] is not None:
            parent = by_id[span["parent_span_id"]]
            assert parent["start_unix_nano"] <= span["start_unix_nano"], (parent, span)


def post(stack: Stack, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{stack.url}/v1/chat/completions", json=body, timeout=30)


def test_one_request_is_one_trace_from_ingress_to_the_loader(traced_stack: Stack) -> None:
    answer = post(traced_stack, CHAT)
    assert answer.status_code == 200
    request_id = answer.headers["x-tollway-request-id"]
    interactive = "process tollway.requests.interactive"
    expected = {
        ("tollway-ingress", "POST /v1/chat/completions"),
        ("tollway-ingress", "publish tollway.requests.interactive"),
        ("tollway-router", interactive),
        ("tollway-router", "chat gpt-4o-mini"),
        ("tollway-cost-processor", "process tollway.attempts"),
        ("tollway-budget-processor", "process tollway.usage"),
        ("tollway-loader", "process tollway.results"),
        ("tollway-loader", "process tollway.attempts"),
        ("tollway-loader", "process tollway.usage"),
    }
    trace = wait_for_trace(traced_stack, request_id, expected)
    assert_links_consistent(trace)

    server = one(trace, "tollway-ingress", "POST /v1/chat/completions")
    publish = one(trace, "tollway-ingress", "publish tollway.requests.interactive")
    routed = one(trace, "tollway-router", interactive)
    call = one(trace, "tollway-router", "chat gpt-4o-mini")
    priced = one(trace, "tollway-cost-processor", "process tollway.attempts")
    budgeted = one(trace, "tollway-budget-processor", "process tollway.usage")
    assert server["attributes"]["http.response.status_code"] == 200
    assert publish["parent_span_id"] == server["span_id"]
    assert publish["kind"] == "producer"
    assert routed["parent_span_id"] == publish["span_id"]  # across Kafka, by the headers
    assert routed["attributes"]["tollway.request_id"] == request_id
    assert call["parent_span_id"] == routed["span_id"]
    assert call["kind"] == "client"
    assert call["attributes"]["tollway.deployment"] == "mock"
    assert call["attributes"]["tollway.outcome"] == "ok"
    assert call["attributes"]["gen_ai.usage.output_tokens"] > 0
    assert priced["parent_span_id"] == routed["span_id"]
    assert budgeted["parent_span_id"] == priced["span_id"]
    loader = {s["name"]: s for s in trace if s["service"] == "tollway-loader"}
    assert loader["process tollway.results"]["parent_span_id"] == routed["span_id"]
    assert loader["process tollway.usage"]["parent_span_id"] == priced["span_id"]
    # the provider call sits inside the request's time, which holds the rest of the path
    assert server["start_unix_nano"] < call["start_unix_nano"]
    assert call["end_unix_nano"] < server["end_unix_nano"]


def test_a_failed_request_traces_each_attempt_and_logs_json_with_its_id(
    traced_stack: Stack,
) -> None:
    answer = post(traced_stack, FAILING)
    assert answer.status_code >= 500
    request_id = answer.headers["x-tollway-request-id"]
    routed_name = "process tollway.requests.interactive"
    expected = {
        ("tollway-ingress", "POST /v1/chat/completions"),
        ("tollway-router", routed_name),
        ("tollway-router", "chat mock-error-500"),
    }
    trace = wait_for_trace(traced_stack, request_id, expected)
    assert_links_consistent(trace)
    routed = one(trace, "tollway-router", routed_name)
    calls = [s for s in trace if s["name"] == "chat mock-error-500"]
    assert [c["attributes"]["tollway.attempt"] for c in calls] == [1, 2]  # one retry
    for call in calls:
        assert call["parent_span_id"] == routed["span_id"]
        assert call["status"] == "error"
        assert call["attributes"]["http.response.status_code"] == 500
    assert routed["status"] == "error"

    # every line of every process's log is one JSON object (faust's and uvicorn's too)
    logs = {c.name: json_lines(traced_stack, c.name) for c in traced_stack.components}
    for name in JSON_LOGGED:
        assert logs[name], f"{name} logged nothing"
    for name, lines in logs.items():
        for entry in lines:
            assert {"ts", "level", "logger", "msg", "component"} <= set(entry), (name, entry)
    failed = [e for e in logs["router-1"] if e.get("request_id") == request_id]
    assert failed, "the router logged nothing with the failed request's id"
    assert "failed" in failed[0]["msg"]
    assert failed[0]["trace_id"] == routed["trace_id"]
    assert failed[0]["span_id"] == routed["span_id"]


def json_lines(stack: Stack, component: str) -> list[dict[str, Any]]:
    """Every line of a component's log, each parsed as one JSON object (fails otherwise)."""
    path: Path = stack.log_dir / f"{component}.log"
    entries: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entries.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            pytest.fail(f"{path}:{number} is not JSON: {line[:200]}")
    return entries
