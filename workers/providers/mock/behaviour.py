"""What the mock provider answers: a pure decision from the request and the model name.

Input: the parsed request JSON, the model name, ``MockSettings`` and the per-model call
index. Output: an ``Answer`` (a normal completion) or a ``Failure`` (an OpenAI-format
error), each carrying the HTTP status, the latency to wait in milliseconds and any
headers. No I/O, no clock, no global state: the same inputs always give the same
outcome, which is what makes tests and benchmarks against the mock repeatable.

Behaviours are chosen by the model name, so callers need no other configuration:

==========================  ====================================================
model name                  outcome
==========================  ====================================================
anything else               200 completion after ``settings.latency_ms``
``mock-slow-<ms>``          200 completion after ``<ms>`` milliseconds
``mock-error-<status>``     ``<status>`` (400-599) with an OpenAI error body
``mock-429-<s>``            429 ``rate_limit_exceeded`` with ``Retry-After: <s>``
``mock-flaky-<pct>``        500 on ``<pct>`` % of calls (seeded, deterministic)
``mock-timeout``            200 completion after 600 s, i.e. never in practice
``mock-context-window``     400 ``context_length_exceeded``
``mock-content-filter``     400 ``content_filter``
==========================  ====================================================

Tool calls (OpenAI request shape): a request with ``tools`` of ``{"type": "function"}``
whose last message is not a ``tool`` result, and whose ``tool_choice`` is not
``"none"``, is answered with one call of the chosen function (``tool_choice``'s, else
the first), its arguments built from the schema's required properties (see
``tool_call_for``); once the tool's result is in the conversation, the mock answers in
text. Other request shapes (Anthropic, Gemini tools) get text answers.

A name with one of the prefixes above but an unusable parameter (``mock-slow-abc``,
``mock-error-200``) answers 400 ``invalid_mock_model`` rather than a normal reply, so
a typo in a test fails loudly instead of silently passing.

Validation mirrors a real provider: a request without a non-empty ``messages`` list or
with a ``max_tokens`` that is not a positive integer answers 400 whatever the model.
Every outcome, errors included, waits the model's latency first.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Final, Literal

TIMEOUT_LATENCY_MS: Final = 600_000
"""How long ``mock-timeout`` waits before answering: longer than any sane deadline."""

MAX_SLOW_LATENCY_MS: Final = 600_000
MAX_RETRY_AFTER_S: Final = 86_400
PER_MESSAGE_OVERHEAD_TOKENS: Final = 3
"""Tokens charged per message on top of its text, as OpenAI's chat format roughly does."""

CHARS_PER_TOKEN: Final = 4

_VOCABULARY: Final = (
    "mock", "reply", "token", "gateway", "stream", "route", "budget", "cost",
    "kafka", "event", "window", "model", "fallback", "retry", "cache", "quota",
    "prompt", "answer", "latency", "batch", "ledger", "price", "usage", "limit",
    "policy", "topic", "offset", "record", "signal", "metric", "trace", "tenant",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MockSettings:
    """Configuration of one mock provider process.

    Attributes:
        latency_ms: wait before answering (before the first chunk when streaming), in
            milliseconds, for every model without its own latency.
        completion_tokens: length of a reply when ``max_tokens`` does not cut it short,
            in tokens (one word per token).
        seed: seeds the flaky-failure draws and the reply words; the same seed gives the
            same answers and the same failure pattern.
        stream_chunk_interval_ms: wait between streamed word chunks, in milliseconds;
            0 writes all chunks after the first in one go (cheapest).
    """

    latency_ms: int = 50
    completion_tokens: int = 16
    seed: int = 0
    stream_chunk_interval_ms: int = 0

    def __post_init__(self) -> None:
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {self.latency_ms}")
        if self.completion_tokens < 1:
            raise ValueError(f"completion_tokens must be >= 1, got {self.completion_tokens}")
        if self.stream_chunk_interval_ms < 0:
            raise ValueError(
                f"stream_chunk_interval_ms must be >= 0, got {self.stream_chunk_interval_ms}"
            )


class Kind(Enum):
    """The behaviour a model name selects."""

    NORMAL = "normal"
    SLOW = "slow"
    ERROR = "error"
    RATE_LIMIT = "rate_limit"
    FLAKY = "flaky"
    TIMEOUT = "timeout"
    CONTEXT_WINDOW = "context_window"
    CONTENT_FILTER = "content_filter"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class Scenario:
    """A parsed model name.

    Attributes:
        kind: the selected behaviour.
        value: the name's numeric parameter: latency in ms (SLOW), HTTP status (ERROR),
            Retry-After in seconds (RATE_LIMIT), failure percentage (FLAKY); else 0.
        problem: why the name was rejected (INVALID only).
    """

    kind: Kind
    value: int = 0
    problem: str = ""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call the mock answers with: ``arguments`` is a JSON object as text."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Reply:
    """A normal completion's content and token counts.

    Attributes:
        words: the reply split per token; ``" ".join(words) == content``.
        content: the assistant message text.
        prompt_tokens: deterministic estimate of the request's prompt size, in tokens.
        completion_tokens: ``len(words)``, in tokens.
        finish_reason: ``"length"`` when ``max_tokens`` capped the reply, else ``"stop"``.
        tool_call: a function call to answer with instead of text (OpenAI wire only).
    """

    words: tuple[str, ...]
    content: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]
    tool_call: ToolCall | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """Answer 200 with ``reply`` after ``latency_ms`` milliseconds.

    Attributes:
        status: always 200.
        latency_ms: wait before the response (before the first chunk when streaming).
        reply: what to answer.
        stream: answer server-sent events instead of one JSON body.
        include_usage: when streaming, send the usage chunk before ``[DONE]``.
        headers: extra response headers.
    """

    reply: Reply
    latency_ms: int
    stream: bool = False
    include_usage: bool = False
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Failure:
    """Answer ``status`` with an OpenAI error body after ``latency_ms`` milliseconds.

    Attributes map one to one onto ``{"error": {"message", "type", "param", "code"}}``;
    ``headers`` holds e.g. ``Retry-After`` for 429.
    """

    status: int
    latency_ms: int
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


Outcome = Answer | Failure


def invalid_request(message: str, param: str | None = None, latency_ms: int = 0) -> Failure:
    """A 400 ``invalid_request_error``, the answer to a request the mock cannot read."""
    return Failure(400, latency_ms, message, "invalid_request_error", param)


def decide(
    request: Mapping[str, object], model: str, settings: MockSettings, call_index: int
) -> Outcome:
    """Decide the outcome of one chat completion request.

    Args:
        request: the parsed request body (nested JSON objects are ``dict``).
        model: the requested model name, which selects the behaviour.
        settings: the process's mock settings.
        call_index: how many calls this model received before this one (0-based); only
            ``mock-flaky-<pct>`` uses it, so a server keeps one counter per model.

    Guarantee: pure and deterministic in all four arguments.
    """
    scenario = parse_scenario(model)
    if scenario.kind is Kind.INVALID:
        return invalid_model(scenario)
    latency_ms = latency_ms_of(scenario, settings)

    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return invalid_request("'messages' must be a non-empty array", "messages", latency_ms)
    limit_tokens: int | None = None
    for field in ("max_completion_tokens", "max_tokens"):
        value = request.get(field)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return invalid_request(f"'{field}' must be a positive integer", field, latency_ms)
        limit_tokens = value if limit_tokens is None else min(limit_tokens, value)

    failure = scripted_failure(scenario, model, settings.seed, call_index, latency_ms)
    if failure is not None:
        return failure

    completion_tokens = settings.completion_tokens
    finish_reason: Literal["stop", "length"] = "stop"
    if limit_tokens is not None and limit_tokens <= completion_tokens:
        completion_tokens = limit_tokens
        finish_reason = "length"
    words, content = _reply_text(_last_user_crc32(messages), settings.seed, completion_tokens)
    reply = Reply(
        words,
        content,
        estimate_prompt_tokens(messages),
        completion_tokens,
        finish_reason,
        tool_call_for(request, messages),
    )
    stream = request.get("stream") is True
    options = request.get("stream_options")
    include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    return Answer(reply, latency_ms, stream, include_usage)


@lru_cache(maxsize=1024)
def parse_scenario(model: str) -> Scenario:
    """Parse a model name into the behaviour it selects (cached: names repeat)."""
    exact = {
        "mock-timeout": Kind.TIMEOUT,
        "mock-context-window": Kind.CONTEXT_WINDOW,
        "mock-content-filter": Kind.CONTENT_FILTER,
    }
    if model in exact:
        return Scenario(exact[model])
    prefixed = (
        ("mock-slow-", Kind.SLOW, 0, MAX_SLOW_LATENCY_MS, "a latency in ms"),
        ("mock-error-", Kind.ERROR, 400, 599, "an HTTP status 400-599"),
        ("mock-429-", Kind.RATE_LIMIT, 0, MAX_RETRY_AFTER_S, "a Retry-After in seconds"),
        ("mock-flaky-", Kind.FLAKY, 0, 100, "a failure percentage 0-100"),
    )
    for prefix, kind, lowest, highest, meaning in prefixed:
        if model.startswith(prefix):
            text = model.removeprefix(prefix)
            if text.isascii() and text.isdigit() and lowest <= int(text) <= highest:
                return Scenario(kind, int(text))
            problem = f"mock model {model!r}: expected {prefix}<n> with n {meaning}"
            return Scenario(Kind.INVALID, problem=problem)
    return Scenario(Kind.NORMAL)


def estimate_prompt_tokens(messages: Sequence[object]) -> int:
    """Deterministic prompt size in tokens: ceil(chars / 4) + 3 per message, at least 1."""
    total_tokens = 0
    for message in messages:
        chars = len(_message_text(message))
        total_tokens += math.ceil(chars / CHARS_PER_TOKEN) + PER_MESSAGE_OVERHEAD_TOKENS
    return max(total_tokens, 1)


def flaky_fails(seed: int, call_index: int, percent: int) -> bool:
    """Whether call ``call_index`` of a ``mock-flaky-<percent>`` model fails.

    A stateless seeded draw (splitmix64 of seed and index) in [0, 1): over many calls
    the failure rate converges to ``percent`` %, and the pattern repeats per seed.
    """
    mask = (1 << 64) - 1
    z = (seed * 0x9E3779B97F4A7C15 + (call_index + 1) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    z ^= z >> 31
    draw = (z >> 11) / float(1 << 53)
    return draw * 100 < percent


def invalid_model(scenario: Scenario) -> Failure:
    """The 400 ``invalid_mock_model`` answering an unusable mock model name."""
    return Failure(400, 0, scenario.problem, "invalid_request_error", "model", "invalid_mock_model")


def latency_ms_of(scenario: Scenario, settings: MockSettings) -> int:
    """How long the model's answer waits, in milliseconds."""
    if scenario.kind is Kind.SLOW:
        return scenario.value
    if scenario.kind is Kind.TIMEOUT:
        return TIMEOUT_LATENCY_MS
    return settings.latency_ms


def scripted_failure(
    scenario: Scenario, model: str, seed: int, call_index: int, latency_ms: int
) -> Failure | None:
    """The failure the model name scripts for call ``call_index``, or None (answer
    normally). Shared by every API the mock serves (chat, embeddings)."""
    kind = scenario.kind
    if kind is Kind.ERROR:
        return _status_failure(scenario.value, model, latency_ms)
    if kind is Kind.RATE_LIMIT:
        retry_after = (("Retry-After", str(scenario.value)),)
        message = f"Rate limit reached for {model}; retry after {scenario.value} s (mock)."
        return Failure(
            429, latency_ms, message, "requests", None, "rate_limit_exceeded", retry_after
        )
    if kind is Kind.FLAKY and flaky_fails(seed, call_index, scenario.value):
        return _status_failure(500, model, latency_ms)
    if kind is Kind.CONTEXT_WINDOW:
        message = f"This model's maximum context length was exceeded ({model}, mock)."
        return Failure(
            400, latency_ms, message, "invalid_request_error", "messages", "context_length_exceeded"
        )
    if kind is Kind.CONTENT_FILTER:
        message = "The response was filtered by the content management policy (mock)."
        return Failure(
            400, latency_ms, message, "invalid_request_error", "prompt", "content_filter"
        )
    return None


def _status_failure(status: int, model: str, latency_ms: int) -> Failure:
    message = f"Mock error {status} requested by model name {model!r}."
    if status >= 500:
        return Failure(status, latency_ms, message, "server_error")
    codes = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}
    error_type = "requests" if status == 429 else "invalid_request_error"
    return Failure(status, latency_ms, message, error_type, None, codes.get(status))


def _message_text(message: object) -> str:
    """The text of one message: its string content or its text parts joined.

    JSON objects arrive as ``dict``; checking ``dict`` rather than ``Mapping`` halves the
    cost of ``decide`` (an ABC isinstance check costs about a microsecond).
    """
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return "".join(texts)
    return ""


_ARGUMENT_BY_TYPE: Final[Mapping[str, object]] = {
    "string": "mock",
    "integer": 1,
    "number": 1,
    "boolean": True,
    "array": [],
    "object": {},
}


def tool_call_for(request: Mapping[str, object], messages: Sequence[object]) -> ToolCall | None:
    """The function call to answer with, or None (see the module docstring).

    Arguments: each required property of the function's JSON schema gets a value of its
    type (``"mock"``, ``1``, ``true``, ``[]``, ``{}``; null for anything else).
    """
    tools = request.get("tools")
    choice = request.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    last = messages[-1]
    if isinstance(last, dict) and last.get("role") == "tool":
        return None
    functions = {
        function["name"]: function
        for tool in tools
        if isinstance(tool, dict)
        and tool.get("type") == "function"
        and isinstance(function := tool.get("function"), dict)
        and isinstance(function.get("name"), str)
    }
    if not functions:
        return None
    name = next(iter(functions))
    if isinstance(choice, dict) and isinstance(chosen := choice.get("function"), dict):
        name = chosen.get("name") if chosen.get("name") in functions else name
    schema = functions[name].get("parameters")
    arguments: dict[str, object] = {}
    if isinstance(schema, dict) and isinstance(schema.get("properties"), dict):
        required = schema.get("required")
        for prop in required if isinstance(required, list) else ():
            spec = schema["properties"].get(prop)
            kind = spec.get("type") if isinstance(spec, dict) else None
            arguments[str(prop)] = (
                _ARGUMENT_BY_TYPE.get(kind, None) if isinstance(kind, str) else None
            )
    text = json.dumps(arguments, separators=(",", ":"))
    call_id = f"call_mock{zlib.crc32((str(name) + text).encode()) & 0xFFFFFFFF:08x}"
    return ToolCall(call_id, str(name), text)


def _last_user_crc32(messages: Sequence[object]) -> int:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return zlib.crc32(_message_text(message).encode())
    return 0


@lru_cache(maxsize=4096)
def _reply_text(text_crc32: int, seed: int, tokens: int) -> tuple[tuple[str, ...], str]:
    """Reply words from a linear congruential walk seeded by the prompt and the seed."""
    state = (text_crc32 ^ (seed * 0x9E3779B1)) & 0xFFFFFFFF
    words: list[str] = []
    for _ in range(tokens):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        words.append(_VOCABULARY[(state >> 16) % len(_VOCABULARY)])
    return tuple(words), " ".join(words)
