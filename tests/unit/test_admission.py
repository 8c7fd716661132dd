"""ingress/admission.py and schemas/openai.py: from HTTP body bytes to a request envelope."""

from __future__ import annotations

from typing import Any, Final

import orjson
import pytest

from ingress.admission import CHAT_ENDPOINT, build_envelope, parse_chat_request
from schemas.errors import InvalidRequest, MalformedJSON, UnknownModel
from schemas.openai import MAX_MESSAGES, MAX_TOKENS_LIMIT, ChatCompletionRequest
from schemas.routes import default_routes

ROUTES: Final = default_routes({})
HELLO: Final = [{"role": "user", "content": "hello"}]


def _body(**fields: Any) -> bytes:
    return orjson.dumps({"model": "gpt-4o-mini", "messages": HELLO, **fields})


TOOLS: Final = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
MULTI_PART: Final = [
    {"role": "system", "content": "be brief"},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        ],
    },
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
]


VALID: Final = {
    "minimal": _body(),
    "pattern-model": _body(model="mock-error-500"),
    "tools": _body(tools=TOOLS, tool_choice="auto", parallel_tool_calls=False),
    "multi-part": _body(messages=MULTI_PART),
    "limits-at-max": _body(max_tokens=MAX_TOKENS_LIMIT, temperature=0, top_p=1, n=16, stop=["\n"]),
    "stream-false": _body(temperature=2.0, stream=False, metadata={"trace": "t-1"}, seed=-3),
    "json-mode": _body(
        response_format={"type": "json_object"}, stream_options={"include_usage": True}
    ),
    "unknown-nested-key": _body(messages=[{"role": "user", "content": "x", "new_field": 1}]),
    "max-messages": _body(messages=HELLO * MAX_MESSAGES),
}


@pytest.mark.parametrize("body", list(VALID.values()), ids=list(VALID))
def test_valid_requests(body: bytes) -> None:
    request = parse_chat_request(body, ROUTES)
    assert request.model == orjson.loads(body)["model"]


def test_parsed_request_keeps_parts_and_tool_calls() -> None:
    request = parse_chat_request(_body(messages=MULTI_PART, tools=TOOLS), ROUTES)
    content = request.messages[1].content
    assert isinstance(content, list)
    assert [part.type for part in content] == ["text", "image_url"]
    tool_calls = request.messages[2].tool_calls
    assert tool_calls is not None
    assert tool_calls[0].function["name"] == "f"
    assert request.tools == TOOLS


def _nested(depth: int) -> bytes:
    return b'{"model":"gpt-4o-mini","messages":' + b"[" * depth + b"]" * depth + b"}"


MALFORMED: Final = {
    "empty": b"",
    "unterminated": b"{",
    "trailing-comma": b'{"model": "gpt-4o-mini",}',
    "invalid-utf8": b'{"model": "\xff\xfe"}',
    "nested-2000": _nested(2_000),
    "nan": b"NaN",
    "single-quotes": b"{'model': 'gpt-4o-mini'}",
}


@pytest.mark.parametrize("body", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_json(body: bytes) -> None:
    with pytest.raises(MalformedJSON) as info:
        parse_chat_request(body, ROUTES)
    assert info.value.http_status == 400
    assert info.value.code == "invalid_json"
    assert "could not parse the JSON" in info.value.message


@pytest.mark.parametrize("body", [b"[]", b'"hello"', b"42", b"null", b"true"])
def test_json_that_is_not_an_object(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(body, ROUTES)
    assert type(info.value) is InvalidRequest
    assert info.value.message == "The request body must be a JSON object."


GE = "greater than or equal to"
LE = "less than or equal to"

# body -> (param named in the error, text in the message)
INVALID: Final = {
    "unknown-field": (_body(temprature=0.5), "temprature", "Unrecognized request argument"),
    "missing-messages": (b'{"model": "gpt-4o-mini"}', "messages", "Field required"),
    "missing-model": (orjson.dumps({"messages": HELLO}), "model", "Field required"),
    "empty-model": (_body(model=""), "model", "at least 1"),
    "model-not-string": (_body(model=7), "model", "valid string"),
    "empty-messages": (_body(messages=[]), "messages", "at least 1"),
    "too-many-messages": (_body(messages=HELLO * (MAX_MESSAGES + 1)), "messages", "at most"),
    "bad-role": (_body(messages=[{"role": "robot"}]), "messages.0.role", "Input should"),
    "missing-role": (_body(messages=[{"content": "x"}]), "messages.0.role", "Field required"),
    "negative-max-tokens": (_body(max_tokens=-1), "max_tokens", GE),
    "zero-max-tokens": (_body(max_tokens=0), "max_tokens", GE),
    "absurd-max-tokens": (_body(max_tokens=10**12), "max_tokens", LE),
    "absurd-max-completion": (
        _body(max_completion_tokens=MAX_TOKENS_LIMIT + 1),
        "max_completion_tokens",
        LE,
    ),
    "temperature-high": (_body(temperature=2.5), "temperature", LE),
    "temperature-negative": (_body(temperature=-0.1), "temperature", GE),
    "n-high": (_body(n=17), "n", LE),
    "top-p-high": (_body(top_p=1.5), "top_p", LE),
}


@pytest.mark.parametrize(("body", "param", "in_message"), list(INVALID.values()), ids=list(INVALID))
def test_invalid_requests(body: bytes, param: str, in_message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(body, ROUTES)
    assert type(info.value) is InvalidRequest
    assert info.value.http_status == 400
    assert info.value.param == param
    assert in_message in info.value.message
    assert info.value.message.endswith(f": {param}")  # the message names the field


def test_stream_true_is_accepted() -> None:
    assert parse_chat_request(_body(stream=True), ROUTES).stream is True


def test_unknown_model_is_404_model_not_found() -> None:
    with pytest.raises(UnknownModel) as info:
        parse_chat_request(_body(model="claude-3-opus"), ROUTES)
    assert info.value.http_status == 404
    assert info.value.to_body()["error"]["code"] == "model_not_found"
    assert info.value.param == "model"


def test_schema_errors_are_reported_before_the_model_lookup() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(_body(model="claude-3-opus", max_tokens=0), ROUTES)
    assert type(info.value) is InvalidRequest
    assert info.value.param == "max_tokens"


def test_validation_error_does_not_echo_the_input_value() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request(_body(user=["sk-should-not-be-echoed"]), ROUTES)
    assert "sk-should-not-be-echoed" not in info.value.message


def test_request_model_is_frozen_and_strict_about_top_level_keys() -> None:
    request = ChatCompletionRequest.model_validate({"model": "m", "messages": HELLO})
    with pytest.raises(ValueError, match="frozen"):
        request.model = "other"  # type: ignore[misc]  # the point of the test
    with pytest.raises(ValueError, match="Extra inputs"):
        ChatCompletionRequest.model_validate({"model": "m", "messages": HELLO, "x": 1})


def test_build_envelope() -> None:
    body = _body()
    envelope = build_envelope(
        request_id="req_1",
        team_id="default",
        key_id=None,
        mode="sync",
        model="gpt-4o-mini",
        body=body,
        now_ms=1_000,
        deadline_ms=601_000,
        ingress_id="ingress-1",
        reply_partition=3,
        metadata={"trace": "t"},
    )
    assert envelope == {
        "request_id": "req_1",
        "team_id": "default",
        "key_id": None,
        "mode": "sync",
        "endpoint": CHAT_ENDPOINT,
        "model": "gpt-4o-mini",
        "body": body,
        "received_at_ms": 1_000,
        "deadline_ms": 601_000,
        "ingress_id": "ingress-1",
        "reply_partition": 3,
        "metadata": {"trace": "t"},
    }
    assert envelope["body"] is body  # the original bytes travel on unchanged


def test_build_envelope_defaults_metadata_to_empty() -> None:
    envelope = build_envelope(
        request_id="req_1",
        team_id="t",
        key_id="k",
        mode="async",
        model="m",
        body=b"{}",
        now_ms=0,
        deadline_ms=0,
        ingress_id="i",
        reply_partition=None,
    )
    assert envelope["metadata"] == {}
    assert envelope["reply_partition"] is None
    assert envelope["endpoint"] == "/v1/chat/completions"
