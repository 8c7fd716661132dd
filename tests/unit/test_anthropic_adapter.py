"""workers/providers/anthropic.py over `httpx.MockTransport`: no sockets.

Payloads are written from the Anthropic API reference (the `anthropic` SDK's
MessageCreateParams, Message, Usage and ErrorResponse types): the request the adapter
sends is compared whole, and real-format answers are translated to canonical bodies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import httpx
import orjson
import pytest
import pytest_asyncio

from schemas.errors import (
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderError,
    ProviderRateLimited,
    ProviderServerError,
    ProviderTimeout,
)
from schemas.routes import Deployment
from workers.providers.anthropic import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    JSON_OBJECT_INSTRUCTION,
    AnthropicProvider,
    to_messages_request,
    usage_from_anthropic,
)
from workers.providers.base import StreamPiece
from workers.providers.http import HttpxClient

Handler = Callable[[httpx.Request], httpx.Response]

NOW_S: Final = 1_760_000_000
DEPLOYMENT: Final = Deployment(
    name="claude",
    provider="anthropic",
    base_url="https://api.anthropic.test/",
    model="claude-sonnet-4-5",
    api_key_env="TEST_ANTHROPIC_KEY",
    timeout_s=30.0,
)
HELLO: Final[dict[str, Any]] = {
    "model": "smart",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello"},
    ],
}
MESSAGE: Final[dict[str, Any]] = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": "Hello! How can I help?"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 12,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 9,
        "service_tier": "standard",
    },
}
WEATHER_TOOL: Final[dict[str, Any]] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}


class Upstream:
    """Records requests and answers them with `handler`."""

    def __init__(self) -> None:
        self.handler: Handler = lambda _: httpx.Response(200, json=MESSAGE)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def sent(self) -> Any:
        (request,) = self.requests
        return orjson.loads(request.content)


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest_asyncio.fixture
async def provider(upstream: Upstream) -> AsyncIterator[AnthropicProvider]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as raw_client:
        client = HttpxClient(raw_client)
        yield AnthropicProvider(
            client=client, environ={"TEST_ANTHROPIC_KEY": "sk-ant-test"}, clock_s=lambda: NOW_S
        )


def _answer(**fields: Any) -> Handler:
    return lambda _: httpx.Response(200, json={**MESSAGE, **fields})


async def test_text_reply_request_and_canonical_body(
    provider: AnthropicProvider, upstream: Upstream
) -> None:
    reply = await provider.chat(DEPLOYMENT, HELLO)
    (sent,) = upstream.requests
    assert str(sent.url) == "https://api.anthropic.test/v1/messages"
    assert sent.headers["x-api-key"] == "sk-ant-test"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["content-type"] == "application/json"
    assert "authorization" not in sent.headers
    assert sent.extensions["timeout"]["read"] == 30.0
    assert upstream.sent() == {
        "model": "claude-sonnet-4-5",
        "max_tokens": DEFAULT_MAX_OUTPUT_TOKENS,
        "system": [{"type": "text", "text": "You are terse."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
    }
    assert orjson.loads(reply.body) == {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "object": "chat.completion",
        "created": NOW_S,
        "model": "claude-sonnet-4-5-20250929",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello! How can I help?",
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 9,
            "total_tokens": 21,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
        "system_fingerprint": None,
    }
    assert reply.served_model == "claude-sonnet-4-5-20250929"
    assert HELLO["model"] == "smart"  # the caller's dict is not modified


async def test_without_deployment_model_or_key(upstream: Upstream) -> None:
    plain = Deployment(name="plain", provider="anthropic", base_url="http://mock.test")
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as raw_client:
        client = HttpxClient(raw_client)
        await AnthropicProvider(client=client, environ={}).chat(plain, HELLO)
    (sent,) = upstream.requests
    assert "x-api-key" not in sent.headers
    assert str(sent.url) == "http://mock.test/v1/messages"
    assert upstream.sent()["model"] == "smart"


def test_multi_turn_tool_round_trip_request() -> None:
    request = {
        "model": "smart",
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": "Checking both.",
                "tool_calls": [
                    {
                        "id": "toolu_01",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                    },
                    {
                        "id": "toolu_02",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_01", "content": "18C, sunny"},
            {
                "role": "tool",
                "tool_call_id": "toolu_02",
                "content": [{"type": "text", "text": "22C"}],
            },
            {"role": "user", "content": "Which is warmer?"},
            {"role": "assistant", "content": None, "tool_calls": []},  # empty: dropped
        ],
        "tools": [WEATHER_TOOL, {"type": "function", "function": {"name": "now"}}],
        "tool_choice": "auto",
    }
    assert to_messages_request(request, "claude") == {
        "model": "claude",
        "max_tokens": DEFAULT_MAX_OUTPUT_TOKENS,
        "system": [{"type": "text", "text": "Use tools."}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking both."},
                    {
                        "type": "tool_use",
                        "id": "toolu_01",
                        "name": "get_weather",
                        "input": {"location": "Paris"},
                    },
                    {
                        "type": "tool_use",
                        "id": "toolu_02",
                        "name": "get_weather",
                        "input": {"location": "Rome"},
                    },
                ],
            },
            {
                "role": "user",  # both results and the follow-up question: one user turn
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18C, sunny"},
                    {"type": "tool_result", "tool_use_id": "toolu_02", "content": "22C"},
                    {"type": "text", "text": "Which is warmer?"},
                ],
            },
        ],
        "tools": [
            {
                "name": "get_weather",
                "description": "Current weather in a city.",
                "input_schema": WEATHER_TOOL["function"]["parameters"],
            },
            {"name": "now", "input_schema": {"type": "object", "properties": {}}},
        ],
        "tool_choice": {"type": "auto"},
    }


async def test_tool_use_answer_becomes_tool_calls(
    provider: AnthropicProvider, upstream: Upstream
) -> None:
    upstream.handler = _answer(
        content=[
            {"type": "thinking", "thinking": "The user wants weather.", "signature": "EqQBCgIYAh"},
            {"type": "text", "text": "I'll check."},
            {
                "type": "tool_use",
                "id": "toolu_01A09q90qw90lq917835lq9",
                "name": "get_weather",
                "input": {"location": "San Francisco, CA", "unit": "celsius"},
            },
        ],
        stop_reason="tool_use",
    )
    reply = await provider.chat(DEPLOYMENT, {**HELLO, "tools": [WEATHER_TOOL]})
    (choice,) = orjson.loads(reply.body)["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "I'll check."  # thinking is not content
    (call,) = choice["message"]["tool_calls"]
    assert call["id"] == "toolu_01A09q90qw90lq917835lq9"
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert orjson.loads(call["function"]["arguments"]) == {
        "location": "San Francisco, CA",
        "unit": "celsius",
    }


async def test_tool_only_answer_has_null_content(
    provider: AnthropicProvider, upstream: Upstream
) -> None:
    upstream.handler = _answer(
        content=[{"type": "tool_use", "id": "toolu_9", "name": "now", "input": {}}],
        stop_reason="tool_use",
    )
    reply = await provider.chat(DEPLOYMENT, HELLO)
    message = orjson.loads(reply.body)["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"][0]["function"]["arguments"] == "{}"


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            {"type": "tool", "name": "get_weather"},
        ),
        (None, None, None),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        ("auto", True, {"type": "auto"}),
    ],
)
def test_tool_choice(tool_choice: Any, parallel: bool | None, expected: Any) -> None:
    request = {**HELLO, "tools": [WEATHER_TOOL], "tool_choice": tool_choice}
    if parallel is not None:
        request["parallel_tool_calls"] = parallel
    assert to_messages_request(request, "claude").get("tool_choice") == expected


def test_tool_choice_without_tools_is_not_sent() -> None:
    body = to_messages_request({**HELLO, "tool_choice": "required"}, "claude")
    assert "tool_choice" not in body
    assert "tools" not in body


def test_images_base64_and_url() -> None:
    request = {
        "model": "smart",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare these."},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                    },
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.test/cat.jpg", "detail": "high"},
                    },
                ],
            }
        ],
    }
    (turn,) = to_messages_request(request, "claude")["messages"]
    assert turn["content"] == [
        {"type": "text", "text": "Compare these."},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.test/cat.jpg"}},
    ]


def test_json_modes() -> None:
    json_object = to_messages_request({**HELLO, "response_format": {"type": "json_object"}}, "c")
    assert json_object["system"][-1] == {"type": "text", "text": JSON_OBJECT_INSTRUCTION}
    assert "output_config" not in json_object
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    json_schema = to_messages_request(
        {
            **HELLO,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": schema, "strict": True},
            },
        },
        "c",
    )
    assert json_schema["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert json_schema["system"] == [{"type": "text", "text": "You are terse."}]
    text = to_messages_request({**HELLO, "response_format": {"type": "text"}}, "c")
    assert "output_config" not in text
    assert len(text["system"]) == 1


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"stop": "END"}, {"stop_sequences": ["END"]}),
        ({"stop": ["\n\n", "Human:"]}, {"stop_sequences": ["\n\n", "Human:"]}),
        ({"temperature": 0.2, "top_p": 0.9}, {"temperature": 0.2, "top_p": 0.9}),
        ({"temperature": 1.7}, {"temperature": 1.0}),  # clamped to Anthropic's range
        ({"max_tokens": 300}, {"max_tokens": 300}),
        ({"max_completion_tokens": 200, "max_tokens": 300}, {"max_tokens": 200}),
        ({"user": "user-42"}, {"metadata": {"user_id": "user-42"}}),
        ({"stop": None, "temperature": None, "seed": 7, "presence_penalty": 1}, {}),
    ],
)
def test_sampling_and_limits(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    body = to_messages_request({**HELLO, **fields}, "claude")
    base = to_messages_request(HELLO, "claude")
    assert {k: v for k, v in body.items() if base.get(k) != v} == expected


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
        ("something_new", "stop"),
    ],
)
async def test_finish_reasons(
    provider: AnthropicProvider, upstream: Upstream, stop_reason: str, finish_reason: str
) -> None:
    stop_sequence = "END" if stop_reason == "stop_sequence" else None
    upstream.handler = _answer(stop_reason=stop_reason, stop_sequence=stop_sequence)
    reply = await provider.chat(DEPLOYMENT, {**HELLO, "stop": "END"})
    assert orjson.loads(reply.body)["choices"][0]["finish_reason"] == finish_reason


async def test_usage_with_cache_read_write_and_thinking(
    provider: AnthropicProvider, upstream: Upstream
) -> None:
    upstream.handler = _answer(
        usage={
            "input_tokens": 50,
            "cache_creation_input_tokens": 1_000,
            "cache_read_input_tokens": 2_000,
            "cache_creation": {"ephemeral_5m_input_tokens": 1_000, "ephemeral_1h_input_tokens": 0},
            "output_tokens": 300,
            "output_tokens_details": {"thinking_tokens": 120},
            "service_tier": "standard",
        }
    )
    reply = await provider.chat(DEPLOYMENT, HELLO)
    assert reply.usage == {
        "prompt_tokens": 3_050,
        "completion_tokens": 300,
        "cached_tokens": 2_000,
        "reasoning_tokens": 120,
        "cache_write_tokens": 1_000,
    }
    assert orjson.loads(reply.body)["usage"] == {
        "prompt_tokens": 3_050,
        "completion_tokens": 300,
        "total_tokens": 3_350,
        "prompt_tokens_details": {"cached_tokens": 2_000},
        "completion_tokens_details": {"reasoning_tokens": 120},
    }


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (None, (0, 0, 0, 0, 0)),
        ({"input_tokens": 5, "output_tokens": 2}, (5, 2, 0, 0, 0)),
        (
            {"input_tokens": 5, "cache_read_input_tokens": None, "output_tokens": 2},
            (5, 2, 0, 0, 0),
        ),
        ({"input_tokens": 0, "cache_read_input_tokens": 7, "output_tokens": 1}, (7, 1, 7, 0, 0)),
    ],
)
def test_usage_from_anthropic(usage: Any, expected: tuple[int, ...]) -> None:
    parsed = usage_from_anthropic(usage)
    assert tuple(parsed.values()) == expected


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0]"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}
                        ],
                    }
                ]
            },
            "messages[0].content",
        ),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0]"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}
                ]
            },
            "messages[0].content",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}
                        ],
                    }
                ]
            },
            "messages[0].content",
        ),
        ({"messages": [{"role": "tool", "content": "no id"}]}, "messages[0]"),
    ],
)
async def test_unsupported_requests_are_refused_before_any_call(
    provider: AnthropicProvider, upstream: Upstream, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(ProviderBadRequest) as info:
        await provider.chat(DEPLOYMENT, {**HELLO, **fields})
    assert info.value.upstream_code == "unsupported_parameter"
    assert info.value.param == param
    assert upstream.requests == []


@pytest.mark.parametrize(
    "arguments", ["{not json", "[1, 2]", '"a string"'], ids=["broken", "array", "string"]
)
def test_tool_arguments_must_be_a_json_object(arguments: str) -> None:
    call = {"id": "t", "type": "function", "function": {"name": "f", "arguments": arguments}}
    request = {"model": "m", "messages": [{"role": "assistant", "tool_calls": [call]}]}
    with pytest.raises(ProviderBadRequest) as info:
        to_messages_request(request, "claude")
    assert info.value.upstream_code == "invalid_tool_arguments"
    assert info.value.param == "messages[0].tool_calls[0]"


def _error(error_type: str, message: str = "upstream says no") -> bytes:
    return orjson.dumps(
        {
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
        }
    )


@pytest.mark.parametrize(
    ("status", "body", "cls", "code"),
    [
        (400, _error("invalid_request_error"), ProviderBadRequest, "invalid_request_error"),
        (
            400,
            _error("invalid_request_error", "prompt is too long: 208845 tokens > 200000 maximum"),
            ProviderBadRequest,
            "context_length_exceeded",
        ),
        (
            400,
            _error(
                "invalid_request_error",
                "input length and `max_tokens` exceed context limit: 198000 + 8192 > 200000",
            ),
            ProviderBadRequest,
            "context_length_exceeded",
        ),
        (413, _error("request_too_large"), ProviderBadRequest, "request_too_large"),
        (401, _error("authentication_error"), ProviderError, "authentication_error"),
        (402, _error("billing_error"), ProviderError, "billing_error"),
        (403, _error("permission_error"), ProviderError, "permission_error"),
        (404, _error("not_found_error"), ProviderError, "not_found_error"),
        (500, _error("api_error"), ProviderServerError, "api_error"),
        (504, _error("timeout_error"), ProviderServerError, "timeout_error"),
        (529, _error("overloaded_error"), ProviderServerError, "overloaded_error"),
        (502, b"<html>bad gateway</html>", ProviderServerError, None),
        (400, b'{"type": "error", "error": "flat"}', ProviderBadRequest, None),
    ],
)
async def test_error_statuses(
    provider: AnthropicProvider,
    upstream: Upstream,
    status: int,
    body: bytes,
    cls: type[ProviderError],
    code: str | None,
) -> None:
    upstream.handler = lambda _: httpx.Response(status, content=body)
    with pytest.raises(ProviderError) as info:
        await provider.chat(DEPLOYMENT, HELLO)
    assert type(info.value) is cls
    assert (info.value.upstream_status, info.value.upstream_code) == (status, code)
    assert info.value.retriable is (status >= 500)
    assert "upstream says no" not in info.value.message  # provider text is not echoed


@pytest.mark.parametrize(("header", "expected"), [("13", 13.0), (None, None)])
async def test_rate_limit_keeps_retry_after(
    provider: AnthropicProvider, upstream: Upstream, header: str | None, expected: float | None
) -> None:
    headers = {} if header is None else {"retry-after": header}
    upstream.handler = lambda _: httpx.Response(
        429, content=_error("rate_limit_error"), headers=headers
    )
    with pytest.raises(ProviderRateLimited) as info:
        await provider.chat(DEPLOYMENT, HELLO)
    assert info.value.retry_after_s == expected
    assert info.value.upstream_code == "rate_limit_error"
    assert info.value.retriable


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (httpx.ConnectError("refused"), ProviderConnectionError),
        (httpx.ReadTimeout("slow"), ProviderTimeout),
        (httpx.RemoteProtocolError("dropped"), ProviderConnectionError),
    ],
)
async def test_transport_errors(
    provider: AnthropicProvider, upstream: Upstream, exc: Exception, cls: type[ProviderError]
) -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        raise exc

    upstream.handler = handler
    with pytest.raises(cls) as info:
        await provider.chat(DEPLOYMENT, HELLO)
    assert info.value.__cause__ is not None
    assert info.value.__cause__.__cause__ is exc  # TransportFailure keeps the original


@pytest.mark.parametrize(
    "answer",
    [
        b"<html>maintenance</html>",
        b"[]",
        orjson.dumps({"type": "error", "error": {"type": "api_error", "message": "x"}}),
        orjson.dumps({**MESSAGE, "content": "not a list"}),
        orjson.dumps({**MESSAGE, "content": [{"type": "tool_use", "id": "t"}]}),
        orjson.dumps({**MESSAGE, "usage": {"input_tokens": "many"}}),
        orjson.dumps({**MESSAGE, "usage": {"input_tokens": -1}}),
        orjson.dumps(
            {**MESSAGE, "usage": {"input_tokens": 2**62, "cache_read_input_tokens": 2**62}}
        ),
    ],
    ids=[
        "html",
        "array",
        "error-object-in-200",
        "content-not-a-list",
        "tool-use-without-name",
        "non-numeric-usage",
        "negative-usage",
        "usage-sum-beyond-avro-long",
    ],
)
async def test_unusable_200_is_a_server_error(
    provider: AnthropicProvider, upstream: Upstream, answer: bytes
) -> None:
    upstream.handler = lambda _: httpx.Response(200, content=answer)
    with pytest.raises(ProviderServerError) as info:
        await provider.chat(DEPLOYMENT, HELLO)
    assert info.value.retriable


# --- streaming (chat_stream) ------------------------------------------------------------


def _sse(events: list[dict[str, Any]]) -> bytes:
    """Events framed as the Messages API sends them: an `event:` line, then `data:`."""
    return b"".join(
        b"event: " + str(e["type"]).encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n"
        for e in events
    )


async def _in_pieces(body: bytes, size: int = 7) -> AsyncIterator[bytes]:
    """The body in small network chunks that split lines and events anywhere."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


STREAM_EVENTS: Final[list[dict[str, Any]]] = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_stream",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-sonnet-4-5-20250929",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "cache_read_input_tokens": 4, "output_tokens": 1},
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 3},
    },
    {"type": "message_stop"},
]
STREAMED_HELLO: Final[dict[str, Any]] = {
    **HELLO,
    "stream": True,
    "stream_options": {"include_usage": True},
}


async def _collect(provider: AnthropicProvider, request: dict[str, Any]) -> list[Any]:
    return [orjson.loads(p.data) async for p in provider.chat_stream(DEPLOYMENT, request)]


async def _drain(stream: AsyncIterator[StreamPiece], into: list[Any]) -> None:
    """Collect chunks into `into` until the stream ends or raises."""
    async for piece in stream:
        # One by one: a comprehension would lose the pieces relayed before an error.
        into.append(orjson.loads(piece.data))  # noqa: PERF401


async def test_stream_request_and_chunks(provider: AnthropicProvider, upstream: Upstream) -> None:
    upstream.handler = lambda _: httpx.Response(
        200,
        content=_in_pieces(_sse(STREAM_EVENTS)),
        headers={"content-type": "text/event-stream"},
    )
    chunks = await _collect(provider, STREAMED_HELLO)
    (request,) = upstream.requests
    assert str(request.url) == "https://api.anthropic.test/v1/messages"
    assert request.headers["x-api-key"] == "sk-ant-test"
    assert request.headers["anthropic-version"] == "2023-06-01"
    expected = {**to_messages_request(HELLO, "claude-sonnet-4-5"), "stream": True}
    assert upstream.sent() == expected  # stream_options is OpenAI's: not sent upstream
    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {},
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert {c["id"] for c in chunks} == {"msg_stream"}
    assert {c["created"] for c in chunks} == {NOW_S}
    assert chunks[-1]["usage"]["prompt_tokens"] == 16
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}


@pytest.mark.parametrize(
    ("status", "body", "headers", "cls", "code"),
    [
        (429, _error("rate_limit_error"), {"retry-after": "9"}, ProviderRateLimited, None),
        (529, _error("overloaded_error"), {}, ProviderServerError, "overloaded_error"),
        (
            400,
            _error("invalid_request_error", "prompt is too long: 208845 tokens > 200000 maximum"),
            {},
            ProviderBadRequest,
            "context_length_exceeded",
        ),
        (401, _error("authentication_error"), {}, ProviderError, "authentication_error"),
    ],
)
async def test_stream_errors_before_the_first_byte_allow_fallback(
    provider: AnthropicProvider,
    upstream: Upstream,
    status: int,
    body: bytes,
    headers: dict[str, str],
    cls: type[ProviderError],
    code: str | None,
) -> None:
    upstream.handler = lambda _: httpx.Response(status, content=body, headers=headers)
    stream = provider.chat_stream(DEPLOYMENT, STREAMED_HELLO)
    with pytest.raises(ProviderError) as info:
        await anext(stream)  # nothing was relayed: the router may retry or fail over
    assert type(info.value) is cls
    assert info.value.upstream_status == status
    if cls is ProviderRateLimited:
        assert isinstance(info.value, ProviderRateLimited)
        assert info.value.retry_after_s == 9.0
    else:
        assert info.value.upstream_code == code


async def test_an_error_event_mid_stream_raises_after_the_relayed_pieces(
    provider: AnthropicProvider, upstream: Upstream
) -> None:
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    upstream.handler = lambda _: httpx.Response(
        200, content=_in_pieces(_sse([*STREAM_EVENTS[:4], overloaded]))
    )
    relayed: list[Any] = []
    with pytest.raises(ProviderServerError) as info:
        await _drain(provider.chat_stream(DEPLOYMENT, STREAMED_HELLO), relayed)
    assert [c["choices"][0]["delta"] for c in relayed] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
    ]
    assert info.value.upstream_code == "overloaded_error"


@pytest.mark.parametrize(
    "body",
    [
        _sse(STREAM_EVENTS[:-1]),  # cut before message_stop
        b"data: not json\n\n",
        b"data: [1, 2]\n\n",
    ],
    ids=["cut-short", "not-json", "not-an-object"],
)
async def test_unusable_streams_are_server_errors(
    provider: AnthropicProvider, upstream: Upstream, body: bytes
) -> None:
    upstream.handler = lambda _: httpx.Response(200, content=_in_pieces(body))
    with pytest.raises(ProviderServerError):
        await _collect(provider, STREAMED_HELLO)


async def test_a_read_timeout_mid_stream_is_a_provider_timeout(
    provider: AnthropicProvider, upstream: Upstream
) -> None:
    async def stalls() -> AsyncIterator[bytes]:
        yield _sse(STREAM_EVENTS[:4])
        raise httpx.ReadTimeout("no more bytes")

    upstream.handler = lambda _: httpx.Response(200, content=stalls())
    relayed: list[Any] = []
    with pytest.raises(ProviderTimeout):
        await _drain(provider.chat_stream(DEPLOYMENT, STREAMED_HELLO), relayed)
    assert len(relayed) == 2


async def test_an_unsupported_stream_request_is_refused_before_any_call(
    provider: AnthropicProvider, upstream: Upstream
) -> None:
    with pytest.raises(ProviderBadRequest) as info:
        await _collect(provider, {**STREAMED_HELLO, "n": 2})
    assert info.value.upstream_code == "unsupported_parameter"
    assert upstream.requests == []
