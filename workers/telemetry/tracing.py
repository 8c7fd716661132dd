"""Tracing: one request is one trace, ingress to loader, its context carried in Kafka headers.

    TOLLWAY_OTEL_EXPORTER=none          (default) off: no spans, no headers, no SDK imported
    TOLLWAY_OTEL_EXPORTER=otlp          OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT (the SDK's
                                        own variables: headers, timeout, compression)
    TOLLWAY_OTEL_EXPORTER=jsonl:<path>  one span per line appended to <path> (tests, offline
                                        runs); `{service}` and `{pid}` in <path> are replaced

Every process calls `setup_tracing(service_name)` once at start (deploy/cli.py). Stages
then use the four helpers below, which cost a function call and a flag test when
tracing is off (opentelemetry is not even imported then):

    with start_span("process tollway.attempts", kind="consumer", headers=record.headers):
        ...                                     # a child of the producer's span
        producer.send(topic, value, headers=inject_headers())

The W3C trace context (`traceparent`, `tracestate`; never `baggage`, which could carry
anything) travels as Kafka record headers, `list[tuple[str, bytes]]` as aiokafka and
faust take them: the record, not a side channel, carries its trace, so a record
re-read after a crash or a rebalance still joins its request's trace
(docs/decisions/0019). Spans record no exception messages or request bodies: an
upstream error text may echo a key; the error's type name is enough to find it.

Sampling, batching and resource settings are the SDK's (OTEL_TRACES_SAMPLER,
OTEL_BSP_SCHEDULE_DELAY, OTEL_RESOURCE_ATTRIBUTES); `service.name` is set per process
(`tollway-<component>`) and wins over OTEL_SERVICE_NAME, which a shared environment
would give every process alike.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

ENV_EXPORTER: Final = "TOLLWAY_OTEL_EXPORTER"
SERVICE_NAMESPACE: Final = "tollway"
TRACE_HEADERS: Final = ("traceparent", "tracestate")
"""The record headers this module writes and reads (W3C Trace Context)."""

SpanKindName = Literal["internal", "server", "client", "producer", "consumer"]
AttributeValue = str | bool | int | float
KafkaHeaders = Sequence[tuple[str, bytes]] | Mapping[str, bytes]
"""Record headers as aiokafka gives them (a sequence of pairs) or faust may (a mapping)."""


@dataclass(frozen=True, slots=True)
class ExporterChoice:
    """What `TOLLWAY_OTEL_EXPORTER` asks for; `path` only for jsonl."""

    kind: Literal["none", "otlp", "jsonl"]
    path: str | None = None


def parse_exporter(value: str | None) -> ExporterChoice:
    """`none` / empty / unset -> off; `otlp`; `jsonl:<path>`. Anything else: ValueError
    (a typo must not silently turn tracing off)."""
    text = (value or "").strip()
    if text in ("", "none"):
        return ExporterChoice("none")
    if text == "otlp":
        return ExporterChoice("otlp")
    if text.startswith("jsonl:") and text[len("jsonl:") :].strip():
        return ExporterChoice("jsonl", text[len("jsonl:") :].strip())
    raise ValueError(f"{ENV_EXPORTER} must be none, otlp or jsonl:<path>, not {value!r}")


def span_file_path(template: str, service: str, pid: int) -> str:
    """The jsonl path for one process: `{service}` and `{pid}` replaced."""
    return template.replace("{service}", service).replace("{pid}", str(pid))


class _State:
    """The process's tracing state: set once by `setup_tracing`."""

    enabled: bool = False
    tracer: Tracer | None = None
    provider: TracerProvider | None = None


_state = _State()
_NO_SPAN: Final = contextlib.nullcontext(None)


def enabled() -> bool:
    return _state.enabled


def setup_tracing(service_name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Install the SDK's tracer provider for this process as `TOLLWAY_OTEL_EXPORTER` says.

    Returns whether tracing is on. Off (the default) installs nothing. Spans are exported
    in batches from a background thread; the provider flushes them at interpreter exit.
    """
    choice = parse_exporter((os.environ if environ is None else environ).get(ENV_EXPORTER))
    if choice.kind == "none":
        return False
    import socket

    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

    resource = Resource.create(
        {
            "service.name": service_name,
            "service.namespace": SERVICE_NAMESPACE,
            "service.instance.id": f"{socket.gethostname()}-{os.getpid()}",
        }
    )
    provider = TracerProvider(resource=resource)
    exporter: SpanExporter
    if choice.kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    else:
        from workers.telemetry.span_file import JsonlSpanExporter

        assert choice.path is not None
        exporter = JsonlSpanExporter(span_file_path(choice.path, service_name, os.getpid()))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    use_provider(provider)
    return True


def use_provider(provider: TracerProvider) -> None:
    """Make this module's helpers record through `provider` (`setup_tracing`; tests pass
    one with an in-memory exporter)."""
    _state.provider = provider
    _state.tracer = provider.get_tracer("tollway")
    _state.enabled = True


def shutdown_tracing() -> None:
    """Flush and stop the exporter, back to off (tests; processes rely on the exit hook)."""
    if _state.provider is not None:
        _state.provider.shutdown()
    _state.enabled = False
    _state.tracer = None
    _state.provider = None


def start_span(
    name: str,
    *,
    kind: SpanKindName = "internal",
    headers: KafkaHeaders | None = None,
    attributes: Mapping[str, AttributeValue | None] | None = None,
) -> contextlib.AbstractContextManager[Span | None]:
    """A span made current for the block; yields it (None when tracing is off).

    `headers`: the record headers of the input, whose trace context becomes the parent
    (absent or invalid: the current context's span, or a new trace). Attributes whose
    value is None are left out.
    """
    if not _state.enabled:
        return _NO_SPAN
    return _span(name, kind, headers, attributes)


@contextlib.contextmanager
def _span(
    name: str,
    kind: SpanKindName,
    headers: KafkaHeaders | None,
    attributes: Mapping[str, AttributeValue | None] | None,
) -> Iterator[Span | None]:
    from opentelemetry.trace import SpanKind, Status, StatusCode

    tracer = _state.tracer
    assert tracer is not None
    parent = extract_context(headers) if headers is not None else None
    with tracer.start_as_current_span(
        name,
        context=parent,
        kind=SpanKind[kind.upper()],
        attributes=_clean(attributes),
        record_exception=False,  # messages may echo secrets (module doc)
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            span.set_attribute("error.type", type(exc).__name__)
            raise


def _clean(attributes: Mapping[str, AttributeValue | None] | None) -> dict[str, AttributeValue]:
    return {k: v for k, v in (attributes or {}).items() if v is not None}


def set_attributes(attributes: Mapping[str, AttributeValue | None]) -> None:
    """Add attributes to the current span (nothing when tracing is off)."""
    if not _state.enabled:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(_clean(attributes))


def mark_error(error_type: str) -> None:
    """Set the current span's status to ERROR, described by an error type name only."""
    if not _state.enabled:
        return
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    span = trace.get_current_span()
    span.set_status(Status(StatusCode.ERROR, error_type))
    span.set_attribute("error.type", error_type)


def inject_headers(
    headers: list[tuple[str, bytes]] | None = None,
) -> list[tuple[str, bytes]] | None:
    """`headers` plus the current span's trace context (any old trace headers replaced).

    Tracing off, or no current span: `headers` unchanged (None stays None, so records
    carry no header bytes at all)."""
    if not _state.enabled:
        return headers
    carrier: dict[str, str] = {}
    _propagator().inject(carrier)
    if not carrier:
        return headers
    kept = [(k, v) for k, v in headers or () if k.lower() not in TRACE_HEADERS]
    return kept + [(k, v.encode("ascii")) for k, v in carrier.items()]


def extract_context(headers: KafkaHeaders | None) -> Context | None:
    """The trace context carried by record headers; None when they carry none (or an
    invalid one). Works whether or not tracing is on (it only parses)."""
    carrier = trace_headers(headers)
    if not carrier:
        return None
    from opentelemetry import trace

    context = _propagator().extract(carrier)
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    return context


def trace_headers(headers: KafkaHeaders | None) -> dict[str, str]:
    """The W3C headers among record headers, lower-cased names, decoded values. Pure."""
    if not headers:
        return {}
    pairs: Any = headers.items() if isinstance(headers, Mapping) else headers
    found: dict[str, str] = {}
    for key, value in pairs:
        name = key.lower() if isinstance(key, str) else bytes(key).decode("latin-1").lower()
        if name in TRACE_HEADERS and value is not None:
            found[name] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return found


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the recording current span, as lower-case hex; else None."""
    if not _state.enabled:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


@functools.cache
def _propagator() -> TraceContextTextMapPropagator:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator()
