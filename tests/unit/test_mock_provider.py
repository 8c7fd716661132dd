"""The mock LLM provider's pure core: the behaviour table and the wire format.

The aiohttp app is tested in tests/integration/test_mock_provider_http.py (sockets).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st

from workers.providers.mock import anthropic_wire, behaviour, gemini_wire, wire
from workers.providers.mock.behaviour import (
    TIMEOUT_LATENCY_MS,
    Answer,
    Failure,
    Kind,
    MockSettings,
    Scenario,
    decide,
    estimate_prompt_tokens,
    flaky_fails,
    parse_scenario,
)

Client = TestClient[web.Request, web.Application]

SETTINGS = MockSettings(latency_ms=0, completion_tokens=16, seed=7)
HELLO = {"messages": [{"role": "user", "content": "hello"}]}


def _request(**fields: object) -> dict[str, object]:
    return {"model": "mock", **HELLO, **fields}


# --- pure core: model names -------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o-mini", Scenario(Kind.NORMAL)),
        ("mock", Scenario(Kind.NORMAL)),
        ("mock-slow-250", Scenario(Kind.SLOW, 250)),
        ("mock-slow-0", Scenario(Kind.SLOW, 0)),
        ("mock-error-500", Scenario(Kind.ERROR, 500)),
        ("mock-error-400", Scenario(Kind.ERROR, 400)),
        ("mock-429-3", Scenario(Kind.RATE_LIMIT, 3)),
        ("mock-flaky-30", Scenario(Kind.FLAKY, 30)),
        ("mock-flaky-100", Scenario(Kind.FLAKY, 100)),
        ("mock-timeout", Scenario(Kind.TIMEOUT)),
        ("mock-context-window", Scenario(Kind.CONTEXT_WINDOW)),
        ("mock-content-filter", Scenario(Kind.CONTENT_FILTER)),
    ],
)
def test_parse_scenario(model: str, expected: Scenario) -> None:
    assert parse_scenario(model) == expected


@pytest.mark.parametrize(
    "model",
    [
        "mock-slow-abc",
        "mock-slow-",
        "mock-slow--5",
        "mock-slow-600001",
        "mock-error-200",
        "mock-error-600",
        "mock-429-x",
        "mock-flaky-101",
        "mock-flaky-\u0663",  # an Arabic-Indic digit is not an ASCII number
    ],
)
def test_bad_mock_parameters_are_rejected_loudly(model: str) -> None:
    assert parse_scenario(model).kind is Kind.INVALID
    outcome = decide(_request(), model, SETTINGS, 0)
    assert isinstance(outcome, Failure)
    assert (outcome.status, outcome.code, outcome.param) == (400, "invalid_mock_model", "model")


# --- pure core: outcomes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "status", "latency_ms", "error_type", "code", "headers"),
    [
        ("mock", 200, 50, None, None, ()),
        ("mock-slow-1200", 200, 1200, None, None, ()),
        ("mock-timeout", 200, TIMEOUT_LATENCY_MS, None, None, ()),
        ("mock-error-500", 500, 50, "server_error", None, ()),
        ("mock-error-503", 503, 50, "server_error", None, ()),
        ("mock-error-400", 400, 50, "invalid_request_error", None, ()),
        ("mock-error-401", 401, 50, "invalid_request_error", "invalid_api_key", ()),
        ("mock-error-404", 404, 50, "invalid_request_error", "model_not_found", ()),
        ("mock-error-429", 429, 50, "requests", "rate_limit_exceeded", ()),
        ("mock-429-7", 429, 50, "requests", "rate_limit_exceeded", (("Retry-After", "7"),)),
        ("mock-flaky-100", 500, 50, "server_error", None, ()),
        ("mock-flaky-0", 200, 50, None, None, ()),
        (
            "mock-context-window",
            400,
            50,
            "invalid_request_error",
            "context_length_exceeded",
            (),
        ),
        ("mock-content-filter", 400, 50, "invalid_request_error", "content_filter", ()),
    ],
)
def test_outcome_table(
    model: str,
    status: int,
    latency_ms: int,
    error_type: str | None,
    code: str | None,
    headers: tuple[tuple[str, str], ...],
) -> None:
    outcome = decide(_request(), model, MockSettings(latency_ms=50), 0)
    assert (outcome.status, outcome.latency_ms, outcome.headers) == (status, latency_ms, headers)
    if error_type is None:
        assert isinstance(outcome, Answer)
    else:
        assert isinstance(outcome, Failure)
        assert (outcome.type, outcome.code) == (error_type, code)
        assert outcome.message


@pytest.mark.parametrize(
    ("fields", "completion_tokens", "finish_reason"),
    [
        ({}, 16, "stop"),
        ({"max_tokens": 100}, 16, "stop"),
        ({"max_tokens": 16}, 16, "length"),
        ({"max_tokens": 5}, 5, "length"),
        ({"max_completion_tokens": 3}, 3, "length"),
        ({"max_tokens": 4, "max_completion_tokens": 9}, 4, "length"),
        ({"max_tokens": None}, 16, "stop"),
    ],
)
def test_max_tokens_caps_the_reply(
    fields: dict[str, object], completion_tokens: int, finish_reason: str
) -> None:
    outcome = decide(_request(**fields), "mock", SETTINGS, 0)
    assert isinstance(outcome, Answer)
    reply = outcome.reply
    assert (reply.completion_tokens, reply.finish_reason) == (completion_tokens, finish_reason)
    assert len(reply.words) == completion_tokens
    assert " ".join(reply.words) == reply.content


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_completion_tokens": 1.5}, "max_completion_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": "hello"}, "messages"),
        ({"messages": None}, "messages"),
    ],
)
def test_invalid_requests_answer_400(fields: dict[str, object], param: str) -> None:
    outcome = decide(_request(**fields), "mock-error-500", SETTINGS, 0)
    assert isinstance(outcome, Failure)
    assert (outcome.status, outcome.type, outcome.param) == (400, "invalid_request_error", param)


@pytest.mark.parametrize(
    ("messages", "tokens"),
    [
        ([{"role": "user", "content": ""}], 3),
        ([{"role": "user", "content": "abcd"}], 4),
        ([{"role": "user", "content": "abcde"}], 5),
        ([{"role": "system", "content": "x" * 40}, {"role": "user", "content": "hi"}], 17),
        ([{"role": "user", "content": [{"type": "text", "text": "abcdefgh"}]}], 5),
        ([{"role": "assistant", "content": None, "tool_calls": []}], 3),
        (["not a message"], 3),
        ([], 1),
    ],
)
def test_prompt_token_estimate(messages: list[object], tokens: int) -> None:
    assert estimate_prompt_tokens(messages) == tokens


def test_replies_are_deterministic_and_depend_on_the_last_user_message() -> None:
    first = decide(_request(), "mock", SETTINGS, 0)
    again = decide(_request(), "mock", SETTINGS, 5)
    assert isinstance(first, Answer)
    assert isinstance(again, Answer)
    assert first == again
    contents = {
        outcome.reply.content
        for text in ("hello", "goodbye", "what is the cost?", "summarise this")
        if isinstance(
            outcome := decide(
                {"messages": [{"role": "user", "content": text}]}, "mock", SETTINGS, 0
            ),
            Answer,
        )
    }
    assert len(contents) == 4


def test_stream_options_are_read() -> None:
    streamed = decide(
        _request(stream=True, stream_options={"include_usage": True}), "m", SETTINGS, 0
    )
    plain = decide(_request(stream_options={"include_usage": True}), "m", SETTINGS, 0)
    assert isinstance(streamed, Answer)
    assert isinstance(plain, Answer)
    assert (streamed.stream, streamed.include_usage) == (True, True)
    assert (plain.stream, plain.include_usage) == (False, False)


def test_flaky_failures_follow_the_percentage_and_the_seed() -> None:
    calls = range(10_000)
    assert not any(flaky_fails(1, index, 0) for index in calls)
    assert all(flaky_fails(1, index, 100) for index in calls)
    failures = sum(flaky_fails(1, index, 30) for index in calls)
    assert 2_800 < failures < 3_200
    pattern = [flaky_fails(1, index, 50) for index in range(64)]
    assert pattern == [flaky_fails(1, index, 50) for index in range(64)]
    assert pattern != [flaky_fails(2, index, 50) for index in range(64)]


def test_flaky_outcomes_follow_the_call_index() -> None:
    statuses = [decide(_request(), "mock-flaky-50", SETTINGS, i).status for i in range(200)]
    expected = [500 if flaky_fails(SETTINGS.seed, i, 50) else 200 for i in range(200)]
    assert statuses == expected
    assert set(statuses) == {200, 500}


@pytest.mark.parametrize(
    "fields",
    [{"latency_ms": -1}, {"completion_tokens": 0}, {"stream_chunk_interval_ms": -1}],
)
def test_settings_reject_impossible_values(fields: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=">="):
        MockSettings(**fields)


@given(
    texts=st.lists(st.text(max_size=200), min_size=1, max_size=6),
    max_tokens=st.none() | st.integers(min_value=1, max_value=64),
    completion_tokens=st.integers(min_value=1, max_value=64),
)
def test_reply_invariants(texts: list[str], max_tokens: int | None, completion_tokens: int) -> None:
    settings = MockSettings(latency_ms=0, completion_tokens=completion_tokens)
    messages = [{"role": "user", "content": text} for text in texts]
    outcome = decide({"messages": messages, "max_tokens": max_tokens}, "m", settings, 0)
    assert isinstance(outcome, Answer)
    reply = outcome.reply
    assert reply.prompt_tokens >= len(texts) * 3
    assert 1 <= reply.completion_tokens <= completion_tokens
    if max_tokens is not None:
        assert reply.completion_tokens <= max_tokens
    deltas = wire.stream_chunks(reply, "m", "id", 0, include_usage=False)
    streamed = "".join(_delta_text(chunk) for chunk in deltas)
    assert streamed == reply.content


def _delta_text(chunk: dict[str, object]) -> str:
    choices: Any = chunk["choices"]
    return str(choices[0]["delta"].get("content", ""))


@pytest.mark.parametrize("module", [behaviour, wire, anthropic_wire, gemini_wire])
def test_pure_modules_import_only_the_standard_library(module: object) -> None:
    path = Path(str(getattr(module, "__file__", "")))
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported - sys.stdlib_module_names <= {"workers"}


# --- the Anthropic and Gemini dialects ---------------------------------------------------


def _outcome(model: str, fields: dict[str, object]) -> behaviour.Outcome:
    return decide(fields, model, SETTINGS, 0)


def test_anthropic_reader_needs_max_tokens_and_reads_stream() -> None:
    hello = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}
    missing = anthropic_wire.read_request(hello)
    assert isinstance(missing, Failure)
    assert (missing.status, missing.param) == (400, "max_tokens")
    streamed = anthropic_wire.read_request({**hello, "max_tokens": 5, "stream": True})
    assert isinstance(streamed, dict)
    assert streamed["stream"] is True  # stream events: tests/unit/test_mock_stream_wire.py


def test_anthropic_reader_counts_the_system_prompt() -> None:
    user = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    plain = anthropic_wire.read_request({"messages": user, "max_tokens": 9})
    with_system = anthropic_wire.read_request(
        {"messages": user, "max_tokens": 9, "system": [{"type": "text", "text": "Be terse."}]}
    )
    assert isinstance(plain, dict)
    assert isinstance(with_system, dict)
    assert plain["max_tokens"] == 9
    plain_reply = _outcome("mock", plain)
    system_reply = _outcome("mock", with_system)
    assert isinstance(plain_reply, Answer)
    assert isinstance(system_reply, Answer)
    assert system_reply.reply.prompt_tokens > plain_reply.reply.prompt_tokens
    assert system_reply.reply.content == plain_reply.reply.content  # same last user text


@pytest.mark.parametrize(
    ("model", "status", "error_type"),
    [
        ("mock-error-400", 400, "invalid_request_error"),
        ("mock-error-401", 401, "authentication_error"),
        ("mock-error-404", 404, "not_found_error"),
        ("mock-error-422", 422, "invalid_request_error"),
        ("mock-error-500", 500, "api_error"),
        ("mock-error-503", 503, "api_error"),
        ("mock-error-529", 529, "overloaded_error"),
        ("mock-429-3", 429, "rate_limit_error"),
        ("mock-context-window", 400, "invalid_request_error"),
    ],
)
def test_anthropic_error_bodies(model: str, status: int, error_type: str) -> None:
    fields = {"messages": HELLO["messages"], "max_tokens": 5}
    code, body, headers = anthropic_wire.render(_outcome(model, fields), fields, model, "msg_1")
    assert code == status
    assert body["type"] == "error"
    error: Any = body["error"]
    assert error["type"] == error_type
    if model == "mock-429-3":
        assert headers == (("Retry-After", "3"),)
    if model == "mock-context-window":
        assert error["message"].startswith("prompt is too long: ")


def test_anthropic_answers_and_refusals() -> None:
    fields = {"messages": HELLO["messages"], "max_tokens": 4}
    status, body, _ = anthropic_wire.render(_outcome("mock", fields), fields, "mock", "msg_1")
    assert status == 200
    assert (body["id"], body["type"], body["role"], body["stop_reason"]) == (
        "msg_1",
        "message",
        "assistant",
        "max_tokens",
    )
    usage: Any = body["usage"]
    assert usage["output_tokens"] == 4
    assert usage["cache_read_input_tokens"] == usage["cache_creation_input_tokens"] == 0
    model = "mock-content-filter"
    status, body, _ = anthropic_wire.render(_outcome(model, fields), fields, model, "msg_2")
    assert (status, body["stop_reason"], body["content"]) == (200, "refusal", [])


def test_gemini_reader_maps_contents_roles_and_limits() -> None:
    fields = gemini_wire.read_request(
        {
            "contents": [
                {"role": "user", "parts": [{"text": "hi"}]},
                {"role": "model", "parts": [{"text": "hello"}]},
                {"role": "user", "parts": [{"text": "again"}]},
            ],
            "systemInstruction": {"parts": [{"text": "Be terse."}]},
            "generationConfig": {"maxOutputTokens": 3},
        }
    )
    assert fields == {
        "messages": [
            {"role": "system", "content": [{"text": "Be terse."}]},
            {"role": "user", "content": [{"text": "hi"}]},
            {"role": "assistant", "content": [{"text": "hello"}]},
            {"role": "user", "content": [{"text": "again"}]},
        ],
        "max_tokens": 3,
    }
    missing = gemini_wire.read_request({"contents": []})
    assert isinstance(missing, Failure)
    assert missing.status == 400


@pytest.mark.parametrize(
    ("model", "status", "status_name"),
    [
        ("mock-error-400", 400, "INVALID_ARGUMENT"),
        ("mock-error-403", 403, "PERMISSION_DENIED"),
        ("mock-error-500", 500, "INTERNAL"),
        ("mock-error-503", 503, "UNAVAILABLE"),
        ("mock-error-599", 599, "INTERNAL"),
        ("mock-context-window", 400, "INVALID_ARGUMENT"),
    ],
)
def test_gemini_error_bodies(model: str, status: int, status_name: str) -> None:
    fields: dict[str, object] = {"messages": HELLO["messages"]}
    code, body, headers = gemini_wire.render(_outcome(model, fields), fields, model, "r1")
    error: Any = body["error"]
    assert (code, error["code"], error["status"], headers) == (status, status, status_name, ())
    if model == "mock-context-window":
        assert "exceeds the maximum number of tokens allowed" in error["message"]


def test_gemini_rate_limit_uses_retry_info_not_a_header() -> None:
    fields: dict[str, object] = {"messages": HELLO["messages"]}
    code, body, headers = gemini_wire.render(_outcome("mock-429-6", fields), fields, "m", "r1")
    error: Any = body["error"]
    assert (code, error["status"], headers) == (429, "RESOURCE_EXHAUSTED", ())
    assert error["details"] == [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "6s"}
    ]


def test_gemini_answers_and_blocked_prompts() -> None:
    fields: dict[str, object] = {"messages": HELLO["messages"], "max_tokens": 4}
    status, body, _ = gemini_wire.render(_outcome("mock", fields), fields, "mock", "r1")
    candidates: Any = body["candidates"]
    assert (status, candidates[0]["finishReason"], body["responseId"]) == (200, "MAX_TOKENS", "r1")
    assert body["usageMetadata"] == {
        "promptTokenCount": estimate_prompt_tokens(HELLO["messages"]),
        "candidatesTokenCount": 4,
        "totalTokenCount": estimate_prompt_tokens(HELLO["messages"]) + 4,
    }
    model = "mock-content-filter"
    status, body, _ = gemini_wire.render(_outcome(model, fields), fields, model, "r2")
    assert (status, body["promptFeedback"]) == (200, {"blockReason": "SAFETY"})
    assert "candidates" not in body


# --- tool calls (OpenAI request shape) ---------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
OTHER_TOOL = {"type": "function", "function": {"name": "other", "parameters": {}}}


def _reply(request: dict[str, object]) -> behaviour.Reply:
    outcome = decide(request, "mock", SETTINGS, 0)
    assert isinstance(outcome, Answer)
    return outcome.reply


def test_a_request_with_tools_is_answered_with_a_call_of_the_first_tool() -> None:
    call = _reply(_request(tools=[WEATHER_TOOL, OTHER_TOOL])).tool_call
    assert call is not None
    assert (call.name, call.arguments) == ("get_weather", '{"city":"mock","days":1}')
    body = wire.completion_body(_reply(_request(tools=[WEATHER_TOOL])), "m", "id", 0)
    choice = body["choices"][0]  # type: ignore[index]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_tool_choice_picks_the_function_and_none_turns_calls_off() -> None:
    chosen = {"type": "function", "function": {"name": "other"}}
    picked = _reply(_request(tools=[WEATHER_TOOL, OTHER_TOOL], tool_choice=chosen)).tool_call
    assert picked is not None
    assert (picked.name, picked.arguments) == ("other", "{}")
    assert _reply(_request(tools=[WEATHER_TOOL], tool_choice="none")).tool_call is None


def test_once_the_tool_result_is_in_the_conversation_the_mock_answers_in_text() -> None:
    first = _reply(_request(tools=[WEATHER_TOOL])).tool_call
    assert first is not None
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": first.call_id,
                    "type": "function",
                    "function": {"name": first.name, "arguments": first.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": first.call_id, "content": "sunny"},
    ]
    reply = _reply({"model": "mock", "messages": messages, "tools": [WEATHER_TOOL]})
    assert reply.tool_call is None
    assert reply.content


def test_anthropic_shaped_tools_get_a_text_answer() -> None:
    anthropic_tool = {"name": "get_weather", "input_schema": {"type": "object"}}
    assert _reply(_request(tools=[anthropic_tool])).tool_call is None


def test_a_streamed_tool_call_sends_the_name_then_the_arguments() -> None:
    reply = _reply(_request(tools=[WEATHER_TOOL], stream=True))
    chunks = wire.stream_chunks(reply, "m", "id", 0, include_usage=True)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]  # type: ignore[index]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city":"mock","days":1}'
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]  # type: ignore[index]
    assert finishes[-1] == "tool_calls"
    assert chunks[-1]["usage"] is not None
