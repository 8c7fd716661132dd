"""Tracing helpers (workers/telemetry/tracing.py): exporter choice, Kafka header round
trips, span shapes, the jsonl exporter, the provider-call and HTTP server spans."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from schemas.errors import ProviderServerError
from schemas.records import ZERO_USAGE, RequestEnvelope, Usage
from schemas.routes import Deployment
from workers.providers.base import ProviderReply
from workers.router.call_spans import traced_send
from workers.telemetry import tracing
from workers.telemetry.span_file import JsonlSpanExporter
from workers.telemetry.tracing_asgi import route_of, with_server_spans

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for one test, spans kept in memory (no global provider is set)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "tollway-test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.shutdown_tracing()


def _by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {s.name: s for s in exporter.get_finished_spans()}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, tracing.ExporterChoice("none")),
        ("", tracing.ExporterChoice("none")),
        ("none", tracing.ExporterChoice("none")),
        ("otlp", tracing.ExporterChoice("otlp")),
        ("jsonl:/tmp/spans.jsonl", tracing.ExporterChoice("jsonl", "/tmp/spans.jsonl")),
        (" jsonl: rel/{service}.jsonl ", tracing.ExporterChoice("jsonl", "rel/{service}.jsonl")),
    ],
)
def test_parse_exporter(value: str | None, expected: tracing.ExporterChoice) -> None:
    assert tracing.parse_exporter(value) == expected


@pytest.mark.parametrize("value", ["jsonl:", "jsonl", "OTLP", "zipkin", "file:/x"])
def test_parse_exporter_refuses_what_it_does_not_know(value: str) -> None:
    with pytest.raises(ValueError, match="TOLLWAY_OTEL_EXPORTER"):
        tracing.parse_exporter(value)


def test_span_file_path_fills_service_and_pid() -> None:
    path = tracing.span_file_path("/logs/{service}-{pid}.jsonl", "tollway-router", 42)
    assert path == "/logs/tollway-router-42.jsonl"


def test_off_by_default_costs_nothing_and_adds_no_headers() -> None:
    assert tracing.setup_tracing("tollway-test", environ={}) is False
    assert not tracing.enabled()
    with tracing.start_span("x", kind="consumer", headers=[("traceparent", b"junk")]) as span:
        assert span is None
        assert tracing.inject_headers() is None
        kept = [("tollway-error", b"E")]
        assert tracing.inject_headers(kept) is kept
        assert tracing.current_ids() is None
    tracing.set_attributes({"a": 1})  # no-ops, no error
    tracing.mark_error("X")


def test_headers_round_trip_parent_and_child_share_the_trace(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.start_span("publish", kind="producer"):
        headers = tracing.inject_headers([("other", b"kept")])
        ids = tracing.current_ids()
    assert headers is not None
    assert ids is not None
    assert ("other", b"kept") in headers
    traceparent = dict(headers)["traceparent"].decode()
    assert traceparent.split("-")[1:3] == list(ids)
    # the consumer sees the headers as aiokafka gives them: a tuple of (str, bytes)
    with tracing.start_span("process", kind="consumer", headers=tuple(headers)):
        pass
    got = _by_name(spans)
    producer, consumer = got["publish"], got["process"]
    assert producer.context is not None
    assert consumer.context is not None
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id
    assert consumer.kind.name == "CONSUMER"


def test_inject_replaces_stale_trace_headers(spans: InMemorySpanExporter) -> None:
    with tracing.start_span("again"):
        headers = tracing.inject_headers([("TraceParent", TRACEPARENT.encode()), ("k", b"v")])
    assert headers is not None
    names = [k for k, _ in headers]
    assert names.count("traceparent") == 1
    assert "TraceParent" not in names
    assert dict(headers)["traceparent"].decode() != TRACEPARENT
    assert len(spans.get_finished_spans()) == 1


@pytest.mark.parametrize(
    "headers",
    [
        [("traceparent", TRACEPARENT.encode())],
        ((b"TRACEPARENT", TRACEPARENT.encode()),),
        {"traceparent": TRACEPARENT.encode()},
    ],
)
def test_extract_reads_sequences_mappings_and_any_case(headers: Any) -> None:
    context = tracing.extract_context(headers)
    assert context is not None
    assert tracing.trace_headers(headers) == {"traceparent": TRACEPARENT}


@pytest.mark.parametrize(
    "headers",
    [None, [], [("traceparent", b"not-a-traceparent")], [("baggage", b"user=1")]],
)
def test_without_a_valid_context_a_span_starts_a_new_trace(
    spans: InMemorySpanExporter, headers: Any
) -> None:
    assert tracing.extract_context(headers) is None
    with tracing.start_span("root", kind="consumer", headers=headers):
        pass
    (root,) = spans.get_finished_spans()
    assert root.parent is None


def test_child_of_remote_parent_keeps_its_trace_id(spans: InMemorySpanExporter) -> None:
    with tracing.start_span("child", headers=[("traceparent", TRACEPARENT.encode())]):
        pass
    (child,) = spans.get_finished_spans()
    assert child.context is not None
    assert child.parent is not None
    assert f"{child.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert f"{child.parent.span_id:016x}" == "b7ad6b7169203331"


def test_an_error_marks_the_span_without_its_message(spans: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError, match="sk-"), tracing.start_span("fails"):
        raise ValueError("upstream said: bad key sk-0123456789abcdefghij")
    (span,) = spans.get_finished_spans()
    assert span.status.status_code.name == "ERROR"
    assert span.status.description == "ValueError"
    assert span.attributes is not None
    assert span.attributes["error.type"] == "ValueError"
    assert not span.events  # no exception event: its message could hold a secret


def test_attributes_none_values_are_left_out(spans: InMemorySpanExporter) -> None:
    with tracing.start_span("a", attributes={"x": 1, "y": None}):
        tracing.set_attributes({"z": "ok", "w": None})
    (span,) = spans.get_finished_spans()
    assert dict(span.attributes or {}) == {"x": 1, "z": "ok"}


def test_jsonl_exporter_writes_one_line_per_span_with_parent_links(tmp_path: Path) -> None:
    path = tmp_path / "deeper" / "spans.jsonl"
    exporter = JsonlSpanExporter(path)
    assert not path.exists()  # created at the first export
    provider = TracerProvider(resource=Resource.create({"service.name": "tollway-ingress"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        with (
            tracing.start_span("POST /v1/chat/completions", kind="server"),
            tracing.start_span("publish t", kind="producer", attributes={"n": 3}),
        ):
            pass
    finally:
        tracing.shutdown_tracing()
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    producer, server = lines  # children end first
    assert server["name"] == "POST /v1/chat/completions"
    assert server["kind"] == "server"
    assert server["parent_span_id"] is None
    assert producer["parent_span_id"] == server["span_id"]
    assert producer["trace_id"] == server["trace_id"]
    assert len(server["trace_id"]) == 32
    assert len(server["span_id"]) == 16
    assert producer["service"] == "tollway-ingress"
    assert producer["attributes"] == {"n": 3}
    assert server["end_unix_nano"] >= producer["end_unix_nano"] > producer["start_unix_nano"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_jsonl_exporter_after_shutdown_refuses(tmp_path: Path) -> None:
    exporter = JsonlSpanExporter(tmp_path / "s.jsonl")
    exporter.shutdown()
    assert exporter.export([]).name == "FAILURE"


def test_setup_with_jsonl_exports_through_a_batch_processor(tmp_path: Path) -> None:
    template = str(tmp_path / "{service}-{pid}.jsonl")
    environ = {"TOLLWAY_OTEL_EXPORTER": f"jsonl:{template}"}
    try:
        assert tracing.setup_tracing("tollway-unit", environ=environ)
        with tracing.start_span("one"):
            pass
    finally:
        tracing.shutdown_tracing()  # flushes the batch processor
    (written,) = tmp_path.glob("tollway-unit-*.jsonl")
    (line,) = written.read_bytes().splitlines()
    assert orjson.loads(line)["service"] == "tollway-unit"


# --- the router's provider-call spans ---------------------------------------------------

DEPLOYMENT = Deployment(name="mock-a", base_url="http://127.0.0.1:1/v1", model="gpt-x")
ENVELOPE: Any = {"request_id": "req_1", "model": "gpt-4o-mini"}


async def test_traced_send_is_send_itself_when_off() -> None:
    async def send(route: Deployment) -> ProviderReply:
        raise AssertionError("not called")

    envelope: RequestEnvelope = ENVELOPE
    assert traced_send(send, envelope, []) is send


async def test_provider_call_span_records_model_deployment_and_usage(
    spans: InMemorySpanExporter,
) -> None:
    usage: Usage = {**ZERO_USAGE, "prompt_tokens": 11, "completion_tokens": 7}

    async def send(route: Deployment) -> ProviderReply:
        return ProviderReply(body=b"{}", usage=usage, served_model="gpt-x-2025")

    attempts: list[object] = [object()]  # one attempt already made: this is the second
    await traced_send(send, ENVELOPE, attempts)(DEPLOYMENT)
    (span,) = spans.get_finished_spans()
    assert span.name == "chat gpt-x"
    assert span.kind.name == "CLIENT"
    assert dict(span.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-x",
        "gen_ai.provider.name": "openai",
        "tollway.deployment": "mock-a",
        "tollway.attempt": 2,
        "tollway.request_id": "req_1",
        "tollway.outcome": "ok",
        "http.response.status_code": 200,
        "gen_ai.response.model": "gpt-x-2025",
        "gen_ai.usage.input_tokens": 11,
        "gen_ai.usage.output_tokens": 7,
    }


async def test_failed_provider_call_span_is_an_error_with_the_upstream_status(
    spans: InMemorySpanExporter,
) -> None:
    async def send(route: Deployment) -> ProviderReply:
        raise ProviderServerError("mock-a: 503 from upstream", upstream_status=503)

    with pytest.raises(ProviderServerError):
        await traced_send(send, ENVELOPE, [], embeddings=True)(DEPLOYMENT)
    (span,) = spans.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert span.name == "embeddings gpt-x"
    assert span.status.status_code.name == "ERROR"
    assert attributes["tollway.outcome"] == "error"
    assert attributes["http.response.status_code"] == 503
    assert attributes["error.type"] == "ProviderServerError"


# --- the ingress's server spans ---------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "route"),
    [
        ("/v1/chat/completions", None, "/v1/chat/completions"),
        (
            "/v1/async/requests/req_abc",
            {"request_id": "req_abc"},
            "/v1/async/requests/{request_id}",
        ),
        ("/v1/files/file-1/content", {"file_id": "file-1"}, "/v1/files/{file_id}/content"),
    ],
)
def test_route_of_puts_parameter_names_back(
    path: str, params: dict[str, Any] | None, route: str
) -> None:
    assert route_of(path, params) == route


async def _asgi_call(app: Any, path: str, headers: list[tuple[bytes, bytes]]) -> list[Any]:
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": headers}
    await app(scope, receive, send)
    return sent


async def test_server_span_continues_a_client_trace_and_names_the_route(
    spans: InMemorySpanExporter,
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["path_params"] = {"request_id": "req_9"}  # what Starlette's router adds
        tracing.set_attributes({"inner": True})
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent = await _asgi_call(
        with_server_spans(app), "/v1/async/requests/req_9", [(b"traceparent", TRACEPARENT.encode())]
    )
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    (span,) = spans.get_finished_spans()
    assert span.name == "GET /v1/async/requests/{request_id}"
    assert span.kind.name == "SERVER"
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == "b7ad6b7169203331"
    attributes = dict(span.attributes or {})
    assert attributes["http.response.status_code"] == 503
    assert attributes["http.route"] == "/v1/async/requests/{request_id}"
    assert attributes["inner"] is True
    assert span.status.status_code.name == "ERROR"


def test_with_server_spans_is_the_app_itself_when_off() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("not called")

    assert with_server_spans(app) is app
