"""Structured logs: one JSON object per line, with request and trace ids, and no secrets.

    {"ts": "2026-05-01T12:00:00.123Z", "level": "WARNING", "logger": "tollway.router",
     "msg": "...", "component": "router", "pid": 4242, "request_id": "req_...",
     "trace_id": "<32 hex>", "span_id": "<16 hex>", "exc": "Traceback ..."}

`request_id` is present while a request is being handled (`request_id_bound`, a
contextvar: each asyncio task sees its own); `trace_id`/`span_id` while a span is
recording (workers/telemetry/tracing.py); `exc` when the record carries an exception.

`TOLLWAY_LOG_FORMAT=json|text` picks the format; `configure_logging` is told the
default (json for the stack's long-running processes, text for interactive commands;
deploy/cli.py). Both formats go through the same `Redactor`: a guard, not a licence to
log secrets (ARCHITECTURE.md invariant 7). It masks `Authorization`/`x-api-key`/`api-key`
values, bearer tokens, virtual keys (`tw-` + 21 or more characters; the 8-character
display prefix stays readable), OpenAI/Anthropic (`sk-`), Google (`AIza`) and webhook
(`whsec_`) secrets, `key=` URL parameters, and the exact values of this process's
secret-looking environment variables (names containing KEY, SECRET, TOKEN, PASSWORD,
PEPPER or CREDENTIAL), so a provider key of any shape is masked once it is in the env.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any, Final, Literal, TextIO

import orjson

from workers.telemetry import tracing

LogFormat = Literal["json", "text"]
ENV_FORMAT: Final = "TOLLWAY_LOG_FORMAT"
REDACTED: Final = "[REDACTED]"
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s %(message)s"

_REQUEST_ID: ContextVar[str | None] = ContextVar("tollway_request_id", default=None)

# (pattern, replacement): each keeps what names the secret and masks only its value.
# Replacements are literals or functions, never `\1` templates: expanding a template
# imports `re` from C, which fails in loggers that run at interpreter shutdown.
_PATTERNS: Final[tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...]] = (
    (
        re.compile(
            r"(?i)\b((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)"
            r"(?:(bearer|basic)\s+)?[^\s\"',;}]+"
        ),
        lambda m: f"{m.group(1)}{m.group(2) + ' ' if m.group(2) else ''}{REDACTED}",
    ),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}"), lambda m: f"{m.group(1)} {REDACTED}"),
    (
        re.compile(
            r"(?i)\b((?:x-api-key|x-goog-api-key|api-key|api_key|apikey)[\"']?\s*[:=]\s*[\"']?)"
            r"[^\s\"',;}&]+"
        ),
        lambda m: f"{m.group(1)}{REDACTED}",
    ),
    (re.compile(r"([?&]key=)[^&\s\"']+"), lambda m: f"{m.group(1)}{REDACTED}"),
    (re.compile(r"\btw-[A-Za-z0-9_-]{21,}"), f"tw-{REDACTED}"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), f"sk-{REDACTED}"),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{30,}"), REDACTED),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=_-]{16,}"), f"whsec_{REDACTED}"),
)
_SECRET_ENV_NAME: Final = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PEPPER|CREDENTIAL", re.IGNORECASE)
_MIN_SECRET_CHARS: Final = 8
"""Shorter environment values (`1`, `true`, a port) are not treated as secrets."""


class Redactor:
    """Masks secrets in text (see the module doc). Pure given its known secret values."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        known = sorted({s for s in secrets if len(s) >= _MIN_SECRET_CHARS}, key=len, reverse=True)
        self._known = re.compile("|".join(re.escape(s) for s in known)) if known else None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Redactor:
        """A redactor that also masks the values of secret-looking environment variables."""
        return cls(value for name, value in environ.items() if _SECRET_ENV_NAME.search(name))

    def redact(self, text: str) -> str:
        if self._known is not None:
            text = self._known.sub(REDACTED, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text


@contextlib.contextmanager
def request_id_bound(request_id: str) -> Iterator[None]:
    """Log records made inside carry `request_id` (this task and the tasks it creates)."""
    token = _REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        _REQUEST_ID.reset(token)


def bind_request_id(request_id: str) -> None:
    """Set the request id for the rest of the current task (the ingress's request task:
    the id is made deep in the handler, and the task ends with the request)."""
    _REQUEST_ID.set(request_id)


def current_request_id() -> str | None:
    return _REQUEST_ID.get()


def _iso_ms(created_s: float) -> str:
    """`2026-05-01T12:00:00.123Z` (UTC, milliseconds)."""
    whole = int(created_s)
    millis = int((created_s - whole) * 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(whole))}.{millis:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (fields in the module doc), secrets redacted."""

    def __init__(self, component: str, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.component = component
        self.redactor = redactor or Redactor()
        self.pid = os.getpid()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _iso_ms(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": self.redactor.redact(record.getMessage()),
            "component": self.component,
            "pid": self.pid,
        }
        request_id = _REQUEST_ID.get()
        if request_id is not None:
            entry["request_id"] = request_id
        ids = tracing.current_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exc"] = self.redactor.redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc"] = self.redactor.redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = self.redactor.redact(self.formatStack(record.stack_info))
        return orjson.dumps(entry, default=str).decode()


class RedactingFormatter(logging.Formatter):
    """The text format, through the same redaction as the JSON one."""

    def __init__(self, fmt: str = TEXT_FORMAT, redactor: Redactor | None = None) -> None:
        super().__init__(fmt)
        self.redactor = redactor or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor.redact(super().format(record))


def log_format(environ: Mapping[str, str], default: LogFormat) -> LogFormat:
    """`TOLLWAY_LOG_FORMAT` (json | text), else `default`; anything else is an error."""
    value = environ.get(ENV_FORMAT, "").strip().lower() or default
    if value not in ("json", "text"):
        raise ValueError(f"{ENV_FORMAT} must be json or text, not {value!r}")
    return "json" if value == "json" else "text"


def configure_logging(
    component: str,
    *,
    level: str | int = "INFO",
    default_format: LogFormat = "text",
    environ: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
) -> LogFormat:
    """Replace the root logger's handlers with one stream handler in the chosen format.

    Returns the format used. In JSON, Python warnings are logged too (captureWarnings),
    so every line a process writes through logging is one JSON object.
    """
    env = os.environ if environ is None else environ
    chosen = log_format(env, default_format)
    redactor = Redactor.from_environ(env)
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter: logging.Formatter = (
        JsonFormatter(component, redactor)
        if chosen == "json"
        else RedactingFormatter(TEXT_FORMAT, redactor)
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(chosen == "json")
    return chosen
