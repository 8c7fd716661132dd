"""Structured logs (workers/telemetry/logs.py): the JSON shape, request and trace ids,
the format switch, and the redaction guard."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider

from workers.telemetry import tracing
from workers.telemetry.logs import (
    REDACTED,
    JsonFormatter,
    Redactor,
    configure_logging,
    current_request_id,
    log_format,
    request_id_bound,
)

VIRTUAL_KEY = "tw-" + "Ab3_-" * 8 + "xyz"  # 43 url-safe characters, as keys are made


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Put the root logger back as it was (configure_logging replaces its handlers)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def _refuse() -> None:
    raise RuntimeError(f"upstream refused key {VIRTUAL_KEY}")


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            _refuse()
        except RuntimeError as error:
            exc_info = (type(error), error, error.__traceback__)
    return logging.LogRecord("tollway.router", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_json_line_has_the_documented_fields() -> None:
    line = JsonFormatter("router").format(_record("assigned %d partitions", 3))
    entry = orjson.loads(line)
    assert set(entry) == {"ts", "level", "logger", "msg", "component", "pid"}
    assert entry["msg"] == "assigned 3 partitions"
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "tollway.router"
    assert entry["component"] == "router"
    assert entry["ts"].endswith("Z")
    assert len(entry["ts"]) == len("2026-01-01T00:00:00.000Z")
    assert "\n" not in line


def test_request_id_is_added_while_bound_and_per_task() -> None:
    formatter = JsonFormatter("ingress")
    with request_id_bound("req_outer"):
        assert orjson.loads(formatter.format(_record("x")))["request_id"] == "req_outer"

        async def other_task() -> str | None:
            with request_id_bound("req_inner"):
                await asyncio.sleep(0)
                return current_request_id()

        assert asyncio.run(other_task()) == "req_inner"
        assert current_request_id() == "req_outer"
    assert "request_id" not in orjson.loads(formatter.format(_record("x")))


def test_trace_and_span_ids_are_added_inside_a_span() -> None:
    tracing.use_provider(TracerProvider())
    try:
        with tracing.start_span("work"):
            ids = tracing.current_ids()
            entry = orjson.loads(JsonFormatter("cost-processor").format(_record("x")))
    finally:
        tracing.shutdown_tracing()
    assert ids is not None
    assert (entry["trace_id"], entry["span_id"]) == ids


def test_exceptions_are_one_field_and_redacted() -> None:
    entry = orjson.loads(JsonFormatter("router").format(_record("failed", exc=True)))
    assert entry["exc"].startswith("Traceback")
    assert "RuntimeError: upstream refused key tw-[REDACTED]" in entry["exc"]
    assert VIRTUAL_KEY not in entry["exc"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Authorization: Bearer {VIRTUAL_KEY}", f"Authorization: Bearer {REDACTED}"),
        ("{'authorization': 'Bearer abc.def.ghi'}", f"{{'authorization': 'Bearer {REDACTED}'}}"),
        ('"Authorization":"Basic dXNlcjpwYXNz"', f'"Authorization":"Basic {REDACTED}"'),
        ("authorization=opaque-value-123", f"authorization={REDACTED}"),
        ("sent bearer eyJhbGciOiJIUzI1NiJ9.x.y", f"sent bearer {REDACTED}"),
        ("x-api-key: sk-ant-api03-abcdefghijklmnop", f"x-api-key: {REDACTED}"),
        ("headers={'api-key': 'azure0123456789'}", f"headers={{'api-key': '{REDACTED}'}}"),
        (
            "GET /v1beta/models/x?key=AIzaSyA-123&alt=sse",
            f"GET /v1beta/models/x?key={REDACTED}&alt=sse",
        ),
        (f"key {VIRTUAL_KEY} revoked", f"key tw-{REDACTED} revoked"),
        ("openai key sk-proj-0123456789abcdefXYZ", f"openai key sk-{REDACTED}"),
        ("google AIzaSyD-0123456789abcdefghijklmnopqrstu", f"google {REDACTED}"),
        ("secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", f"secret whsec_{REDACTED}"),
        # what is not a secret stays readable
        (
            "key key_0123456789abcdef (tw-AbC12) created",
            "key key_0123456789abcdef (tw-AbC12) created",
        ),
        ("1200 prompt tokens, sk- prefix", "1200 prompt tokens, sk- prefix"),
        ("ALERT unpriced usage: openai/gpt-x", "ALERT unpriced usage: openai/gpt-x"),
    ],
)
def test_redaction(text: str, expected: str) -> None:
    assert Redactor().redact(text) == expected


def test_secret_environment_values_are_masked_whatever_their_shape() -> None:
    redactor = Redactor.from_environ(
        {
            "MY_PROVIDER_API_KEY": "plain-looking-credential",
            "TOLLWAY_KEY_PEPPER": "pepper-pepper-pepper",
            "TOLLWAY_ADMIN_KEY": "short",  # too short to be told from ordinary words
            "TOLLWAY_MOCK_URL": "http://127.0.0.1:18080/v1",  # not a secret name
        }
    )
    text = "using plain-looking-credential, pepper-pepper-pepper, short, http://127.0.0.1:18080/v1"
    assert (
        redactor.redact(text) == f"using {REDACTED}, {REDACTED}, short, http://127.0.0.1:18080/v1"
    )


@pytest.mark.parametrize(
    ("environ", "default", "expected"),
    [
        ({}, "json", "json"),
        ({}, "text", "text"),
        ({"TOLLWAY_LOG_FORMAT": "text"}, "json", "text"),
        ({"TOLLWAY_LOG_FORMAT": " JSON "}, "text", "json"),
    ],
)
def test_log_format_switch(environ: dict[str, str], default: str, expected: str) -> None:
    assert log_format(environ, default) == expected  # type: ignore[arg-type]  # a table of str


def test_log_format_refuses_unknown_values() -> None:
    with pytest.raises(ValueError, match="TOLLWAY_LOG_FORMAT"):
        log_format({"TOLLWAY_LOG_FORMAT": "logfmt"}, "json")


@pytest.mark.usefixtures("root_logging")
def test_configure_logging_json_replaces_handlers_and_redacts() -> None:
    stream = io.StringIO()
    chosen = configure_logging(
        "loader",
        level="INFO",
        default_format="json",
        environ={"OPENAI_API_KEY": "sk-not-a-real-key-000000"},
        stream=stream,
    )
    assert chosen == "json"
    assert len(logging.getLogger().handlers) == 1
    log = logging.getLogger("tollway.loader")
    log.debug("below the level")
    with request_id_bound("req_7"):
        log.info("calling with %s", "sk-not-a-real-key-000000")
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert lines == [
        {
            "ts": lines[0]["ts"],
            "level": "INFO",
            "logger": "tollway.loader",
            "msg": f"calling with {REDACTED}",
            "component": "loader",
            "pid": lines[0]["pid"],
            "request_id": "req_7",
        }
    ]


@pytest.mark.usefixtures("root_logging")
def test_configure_logging_text_is_redacted_too() -> None:
    stream = io.StringIO()
    chosen = configure_logging(
        "tollway", default_format="text", environ={"TOLLWAY_LOG_FORMAT": "text"}, stream=stream
    )
    assert chosen == "text"
    logging.getLogger("tollway.test").warning("Authorization: Bearer %s", VIRTUAL_KEY)
    line = stream.getvalue().strip()
    assert line.endswith(f"WARNING tollway.test Authorization: Bearer {REDACTED}")
    assert VIRTUAL_KEY not in line
