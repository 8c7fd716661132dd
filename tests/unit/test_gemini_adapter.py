"""workers/providers/gemini.py over `httpx.MockTransport`: no sockets.

Payloads are written from the Gemini API reference (the `google-genai` SDK's Gemini
Developer API converters and GenerateContentResponse / UsageMetadata / FinishReason
types; google.rpc.Status for errors).
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
)
from schemas.routes import Deployment
from workers.providers.base import StreamPiece
from workers.providers.gemini import (
    THOUGHT_SIGNATURE_SEPARATOR,
    GeminiProvider,
    to_generate_content_request,
    usage_from_gemini,
)
from workers.providers.http import HttpxClient

Handler = Callable[[httpx.Request], httpx.Response]

NOW_S: Final = 1_760_000_000
DEPLOYMENT: Final = Deployment(
    name="gemini",
    provider="gemini",
    base_url="https://generativelanguage.test/",
    model="gemini-2.5-flash",
    api_key_env="TEST_GEMINI_KEY",
    timeout_s=20.0,
)
HELLO: Final[dict[str, Any]] = {
    "model": "fast",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello"},
    ],
}
ANSWER: Final[dict[str, Any]] = {
    "candidates": [
        {
            "content": {"parts": [{"text": "Hello! How can I help?"}], "role": "model"},
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 8,
        "candidatesTokenCount": 7,
        "totalTokenCount": 15,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}],
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "f0BKaOW2EPXKnvgP4-6h0AM",
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
            "additionalProperties": False,
        },
    },
}


class Upstream:
    """Records requests and answers them with `handler`."""

    def __init__(self) -> None:
        self.handler: Handler = lambda _: httpx.Response(200, json=ANSWER)
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
async def provider(upstream: Upstream) -> AsyncIterator[GeminiProvider]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as raw_client:
        client = HttpxClient(raw_client)
        yield GeminiProvider(
            client=client, environ={"TEST_GEMINI_KEY": "AIza-test"}, clock_s=lambda: NOW_S
        )


def _answer(**fields: Any) -> Handler:
    return lambda _: httpx.Response(200, json={**ANSWER, **fields})


def _candidate(parts: list[dict[str, Any]], finish_reason: str = "STOP") -> dict[str, Any]:
    return {"content": {"parts": parts, "role": "model"}, "finishReason": finish_reason, "index": 0}


async def test_text_reply_request_and_canonical_body(
    provider: GeminiProvider, upstream: Upstream
) -> None:
    reply = await provider.chat(DEPLOYMENT, HELLO)
    (sent,) = upstream.requests
    assert (
        str(sent.url)
        == "https://generativelanguage.test/v1beta/models/gemini-2.5-flash:generateContent"
    )
    assert sent.headers["x-goog-api-key"] == "AIza-test"
    assert sent.headers["content-type"] == "application/json"
    assert sent.extensions["timeout"]["read"] == 20.0
    assert upstream.sent() == {
        "contents": [{"role": "user", "parts": [{"text": "Hello"}]}],
        "systemInstruction": {"parts": [{"text": "You are terse."}]},
    }
    assert orjson.loads(reply.body) == {
        "id": "f0BKaOW2EPXKnvgP4-6h0AM",
        "object": "chat.completion",
        "created": NOW_S,
        "model": "gemini-2.5-flash",
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
            "prompt_tokens": 8,
            "completion_tokens": 7,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
        "system_fingerprint": None,
    }
    assert reply.served_model == "gemini-2.5-flash"


@pytest.mark.parametrize(
    ("model", "path"),
    [
        ("fast", "/v1beta/models/fast:generateContent"),
        ("models/gemini-2.0-flash", "/v1beta/models/gemini-2.0-flash:generateContent"),
        ("../../evil?x=1#", "/v1beta/models/..%2F..%2Fevil%3Fx%3D1%23:generateContent"),
    ],
)
async def test_the_model_name_stays_one_path_segment(
    upstream: Upstream, model: str, path: str
) -> None:
    plain = Deployment(name="plain", provider="gemini", base_url="http://gemini.test")
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as raw_client:
        client = HttpxClient(raw_client)
        await GeminiProvider(client=client, environ={}).chat(plain, {**HELLO, "model": model})
    (sent,) = upstream.requests
    assert sent.url.host == "gemini.test"
    assert sent.url.raw_path.decode() == path
    assert "x-goog-api-key" not in sent.headers


def test_multi_turn_tool_round_trip_request() -> None:
    request = {
        "model": "fast",
        "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_1{THOUGHT_SIGNATURE_SEPARATOR}CiIBVKhc7o==",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Rome"}'},
                    },
                ],
            },
            {
                "role": "tool",
                "tool_call_id": f"call_1{THOUGHT_SIGNATURE_SEPARATOR}CiIBVKhc7o==",
                "content": "18C",
            },
            {"role": "tool", "tool_call_id": "call_2", "content": "22C"},
            {"role": "assistant", "content": "Rome is warmer."},
            {"role": "user", "content": [{"type": "text", "text": "Thanks"}]},
        ],
        "tools": [WEATHER_TOOL],
        "tool_choice": "auto",
    }
    assert to_generate_content_request(request) == {
        "contents": [
            {"role": "user", "parts": [{"text": "Weather in Paris and Rome?"}]},
            {
                "role": "model",
                "parts": [
                    {
                        "functionCall": {"name": "get_weather", "args": {"location": "Paris"}},
                        "thoughtSignature": "CiIBVKhc7o==",
                    },
                    {"functionCall": {"name": "get_weather", "args": {"location": "Rome"}}},
                ],
            },
            {
                "role": "user",  # both responses in one turn, as Gemini requires
                "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"output": "18C"}}},
                    {"functionResponse": {"name": "get_weather", "response": {"output": "22C"}}},
                ],
            },
            {"role": "model", "parts": [{"text": "Rome is warmer."}]},
            {"role": "user", "parts": [{"text": "Thanks"}]},
        ],
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "get_weather",
                        "description": "Current weather in a city.",
                        "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"],
                    }
                ]
            }
        ],
        "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
    }


async def test_function_call_answer_becomes_tool_calls_and_comes_back(
    provider: GeminiProvider, upstream: Upstream
) -> None:
    upstream.handler = _answer(
        candidates=[
            _candidate(
                [
                    {"text": "Let me think.", "thought": True},
                    {
                        "functionCall": {"name": "get_weather", "args": {"location": "Paris"}},
                        "thoughtSignature": "CiIBVKhc7oCrC3Wb==",
                    },
                    {"functionCall": {"id": "fc-7", "name": "now", "args": {}}},
                ]
            )
        ]
    )
    reply = await provider.chat(DEPLOYMENT, {**HELLO, "tools": [WEATHER_TOOL]})
    (choice,) = orjson.loads(reply.body)["choices"]
    assert choice["finish_reason"] == "tool_calls"  # Gemini says STOP
    assert choice["message"]["content"] is None  # the thought is not content
    first, second = choice["message"]["tool_calls"]
    assert first["function"] == {"name": "get_weather", "arguments": '{"location":"Paris"}'}
    assert first["id"].endswith(f"{THOUGHT_SIGNATURE_SEPARATOR}CiIBVKhc7oCrC3Wb==")
    assert second["id"] == "fc-7"
    # The client sends the turn back: the signature is restored, ids stay local.
    again = to_generate_content_request(
        {
            "model": "fast",
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [first, second]},
                {"role": "tool", "tool_call_id": first["id"], "content": "18C"},
                {"role": "tool", "tool_call_id": "fc-7", "content": "noon"},
            ],
        }
    )
    model_turn, results = again["contents"][1:]
    assert model_turn["parts"][0]["thoughtSignature"] == "CiIBVKhc7oCrC3Wb=="
    assert "thoughtSignature" not in model_turn["parts"][1]
    assert [p["functionResponse"]["name"] for p in results["parts"]] == ["get_weather", "now"]


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
    ],
)
def test_tool_choice(tool_choice: Any, expected: dict[str, Any]) -> None:
    body = to_generate_content_request(
        {**HELLO, "tools": [WEATHER_TOOL], "tool_choice": tool_choice}
    )
    assert body["toolConfig"] == {"functionCallingConfig": expected}


def test_no_tool_config_without_tools_or_choice() -> None:
    assert "toolConfig" not in to_generate_content_request({**HELLO, "tools": [WEATHER_TOOL]})
    assert "tools" not in to_generate_content_request({**HELLO, "tool_choice": "required"})


def test_images_inline_and_by_url() -> None:
    request = {
        "model": "fast",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.test/a/cat.PNG?s=1"},
                    },
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
    }
    assert to_generate_content_request(request)["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}},
        {"fileData": {"mimeType": "image/png", "fileUri": "https://example.test/a/cat.PNG?s=1"}},
        {"text": "What is this?"},
    ]


@pytest.mark.parametrize(
    ("fields", "config"),
    [
        ({}, None),
        ({"temperature": 1.5, "top_p": 0.8}, {"temperature": 1.5, "topP": 0.8}),
        ({"max_tokens": 100, "max_completion_tokens": 50}, {"maxOutputTokens": 50}),
        ({"stop": "END"}, {"stopSequences": ["END"]}),
        ({"stop": ["a", "b"], "seed": 3}, {"stopSequences": ["a", "b"], "seed": 3}),
        ({"n": 2}, {"candidateCount": 2}),
        ({"response_format": {"type": "json_object"}}, {"responseMimeType": "application/json"}),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "r", "schema": {"type": "object"}},
                }
            },
            {"responseMimeType": "application/json", "responseJsonSchema": {"type": "object"}},
        ),
        ({"response_format": {"type": "text"}, "presence_penalty": 1.0}, None),
    ],
)
def test_generation_config(fields: dict[str, Any], config: dict[str, Any] | None) -> None:
    assert to_generate_content_request({**HELLO, **fields}).get("generationConfig") == config


async def test_several_candidates_become_choices(
    provider: GeminiProvider, upstream: Upstream
) -> None:
    second = _candidate([{"text": "Hi."}], "MAX_TOKENS") | {"index": 1}
    upstream.handler = _answer(candidates=[*ANSWER["candidates"], second])
    reply = await provider.chat(DEPLOYMENT, {**HELLO, "n": 2})
    choices = orjson.loads(reply.body)["choices"]
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in choices] == [
        (0, "Hello! How can I help?", "stop"),
        (1, "Hi.", "length"),
    ]


@pytest.mark.parametrize(
    ("finish_reason", "expected"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("SPII", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        ("OTHER", "stop"),
        ("FINISH_REASON_UNSPECIFIED", "stop"),
    ],
)
async def test_finish_reasons(
    provider: GeminiProvider, upstream: Upstream, finish_reason: str, expected: str
) -> None:
    upstream.handler = _answer(candidates=[_candidate([{"text": "x"}], finish_reason)])
    reply = await provider.chat(DEPLOYMENT, HELLO)
    assert orjson.loads(reply.body)["choices"][0]["finish_reason"] == expected


async def test_safety_stop_without_content(provider: GeminiProvider, upstream: Upstream) -> None:
    upstream.handler = _answer(
        candidates=[
            {
                "finishReason": "SAFETY",
                "index": 0,
                "safetyRatings": [
                    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}
                ],
            }
        ]
    )
    reply = await provider.chat(DEPLOYMENT, HELLO)
    (choice,) = orjson.loads(reply.body)["choices"]
    assert (choice["finish_reason"], choice["message"]["content"]) == ("content_filter", None)


async def test_blocked_prompt_is_a_content_filter_bad_request(
    provider: GeminiProvider, upstream: Upstream
) -> None:
    upstream.handler = lambda _: httpx.Response(
        200,
        json={
            "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
            "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
            "modelVersion": "gemini-2.5-flash",
        },
    )
    with pytest.raises(ProviderBadRequest) as info:
        await provider.chat(DEPLOYMENT, HELLO)
    assert info.value.upstream_code == "content_filter"


async def test_usage_with_cache_thoughts_and_tool_prompt(
    provider: GeminiProvider, upstream: Upstream
) -> None:
    upstream.handler = _answer(
        usageMetadata={
            "promptTokenCount": 4_000,
            "cachedContentTokenCount": 3_000,
            "candidatesTokenCount": 200,
            "thoughtsTokenCount": 800,
            "toolUsePromptTokenCount": 50,
            "totalTokenCount": 5_050,
            "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 3_000}],
        }
    )
    reply = await provider.chat(DEPLOYMENT, HELLO)
    assert reply.usage == {
        "prompt_tokens": 4_050,
        "completion_tokens": 1_000,
        "cached_tokens": 3_000,
        "reasoning_tokens": 800,
        "cache_write_tokens": 0,
    }
    usage = orjson.loads(reply.body)["usage"]
    assert usage["total_tokens"] == 5_050  # Gemini's own totalTokenCount
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 800}


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        (None, (0, 0, 0, 0, 0)),
        ({"promptTokenCount": 3}, (3, 0, 0, 0, 0)),
        ({"candidatesTokenCount": 2, "thoughtsTokenCount": None}, (0, 2, 0, 0, 0)),
    ],
)
def test_usage_from_gemini(metadata: Any, expected: tuple[int, ...]) -> None:
    assert tuple(usage_from_gemini(metadata).values()) == expected


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "modalities"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0]"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}
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
                            {"type": "image_url", "image_url": {"url": "https://x.test/i"}}
                        ],
                    }
                ]
            },
            "messages[0].content",
        ),
        ({"messages": [{"role": "tool", "tool_call_id": "nobody", "content": "x"}]}, "messages[0]"),
    ],
)
async def test_unsupported_requests_are_refused_before_any_call(
    provider: GeminiProvider, upstream: Upstream, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(ProviderBadRequest) as info:
        await provider.chat(DEPLOYMENT, {**HELLO, **fields})
    assert info.value.upstream_code == "unsupported_parameter"
    assert info.value.param == param
    assert upstream.requests == []


def _status(code: int, status: str, message: str = "upstream says no", **extra: Any) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "status": status, **extra}})


API_KEY_INVALID: Final = _status(
    400,
    "INVALID_ARGUMENT",
    "API key not valid. Please pass a valid API key.",
    details=[
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        }
    ],
)


@pytest.mark.parametrize(
    ("status", "body", "cls", "code"),
    [
        (400, _status(400, "INVALID_ARGUMENT"), ProviderBadRequest, "INVALID_ARGUMENT"),
        (
            400,
            _status(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1196265) exceeds the maximum number of tokens "
                "allowed (1048575).",
            ),
            ProviderBadRequest,
            "context_length_exceeded",
        ),
        (400, API_KEY_INVALID, ProviderError, "API_KEY_INVALID"),
        (400, _status(400, "FAILED_PRECONDITION"), ProviderError, "FAILED_PRECONDITION"),
        (403, _status(403, "PERMISSION_DENIED"), ProviderError, "PERMISSION_DENIED"),
        (404, _status(404, "NOT_FOUND"), ProviderError, "NOT_FOUND"),
        (500, _status(500, "INTERNAL"), ProviderServerError, "INTERNAL"),
        (503, _status(503, "UNAVAILABLE"), ProviderServerError, "UNAVAILABLE"),
        (504, _status(504, "DEADLINE_EXCEEDED"), ProviderServerError, "DEADLINE_EXCEEDED"),
        (503, b"[" + _status(503, "UNAVAILABLE") + b"]", ProviderServerError, "UNAVAILABLE"),
        (502, b"<html>bad gateway</html>", ProviderServerError, None),
    ],
)
async def test_error_statuses(
    provider: GeminiProvider,
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
    assert "upstream says no" not in info.value.message


@pytest.mark.parametrize(
    ("details", "headers", "expected"),
    [
        ([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}], {}, 37.0),
        ([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.5s"}], {}, 0.5),
        (
            [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"},
            ],
            {"retry-after": "9"},
            9.0,  # an HTTP header wins
        ),
        ([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "soon"}], {}, None),
        ([], {}, None),
    ],
)
async def test_rate_limit_retry_delay(
    provider: GeminiProvider,
    upstream: Upstream,
    details: list[dict[str, Any]],
    headers: dict[str, str],
    expected: float | None,
) -> None:
    body = _status(429, "RESOURCE_EXHAUSTED", details=details)
    upstream.handler = lambda _: httpx.Response(429, content=body, headers=headers)
    with pytest.raises(ProviderRateLimited) as info:
        await provider.chat(DEPLOYMENT, HELLO)
    assert info.value.retry_after_s == expected
    assert info.value.upstream_code == "RESOURCE_EXHAUSTED"


async def test_transport_errors(provider: GeminiProvider, upstream: Upstream) -> None:
    exc = httpx.ConnectError("refused")

    def handler(_: httpx.Request) -> httpx.Response:
        raise exc

    upstream.handler = handler
    with pytest.raises(ProviderConnectionError) as info:
        await provider.chat(DEPLOYMENT, HELLO)
    assert info.value.__cause__ is not None
    assert info.value.__cause__.__cause__ is exc  # TransportFailure keeps the original


@pytest.mark.parametrize(
    "answer",
    [
        b"<html>maintenance</html>",
        b"[]",
        orjson.dumps({"candidates": []}),
        orjson.dumps({**ANSWER, "candidates": "nope"}),
        orjson.dumps({**ANSWER, "candidates": [_candidate([{"functionCall": {"args": {}}}])]}),
        orjson.dumps({**ANSWER, "usageMetadata": {"promptTokenCount": "many"}}),
        orjson.dumps({**ANSWER, "usageMetadata": {"candidatesTokenCount": -2}}),
    ],
    ids=[
        "html",
        "array",
        "no-candidates-no-block",
        "candidates-not-a-list",
        "function-call-without-name",
        "non-numeric-usage",
        "negative-usage",
    ],
)
async def test_unusable_200_is_a_server_error(
    provider: GeminiProvider, upstream: Upstream, answer: bytes
) -> None:
    upstream.handler = lambda _: httpx.Response(200, content=answer)
    with pytest.raises(ProviderServerError) as info:
        await provider.chat(DEPLOYMENT, HELLO)
    assert info.value.retriable


# --- streaming (chat_stream) ------------------------------------------------------------


def _sse(events: list[dict[str, Any]]) -> bytes:
    """Events framed as streamGenerateContent?alt=sse sends them: `data:` lines only."""
    return b"".join(b"data: " + orjson.dumps(e) + b"\r\n\r\n" for e in events)


async def _in_pieces(body: bytes, size: int = 7) -> AsyncIterator[bytes]:
    """The body in small network chunks that split lines and events anywhere."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def _drain(stream: AsyncIterator[StreamPiece], into: list[Any]) -> None:
    """Collect chunks into `into` until the stream ends or raises."""
    async for piece in stream:
        # One by one: a comprehension would lose the pieces relayed before an error.
        into.append(orjson.loads(piece.data))  # noqa: PERF401


def _stream_event(text: str, finish_reason: str | None = None, **fields: Any) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if finish_reason is not None:
        candidate["finishReason"] = finish_reason
    return {
        "candidates": [candidate],
        "modelVersion": "gemini-2.5-flash",
        "responseId": "resp_stream",
        **fields,
    }


STREAM_EVENTS: Final = [
    _stream_event("Hel", usageMetadata={"promptTokenCount": 8, "totalTokenCount": 8}),
    _stream_event(
        "lo",
        "STOP",
        usageMetadata={"promptTokenCount": 8, "candidatesTokenCount": 2, "totalTokenCount": 10},
    ),
]
STREAMED_HELLO: Final[dict[str, Any]] = {
    **HELLO,
    "stream": True,
    "stream_options": {"include_usage": True},
}


async def test_stream_request_and_chunks(provider: GeminiProvider, upstream: Upstream) -> None:
    upstream.handler = lambda _: httpx.Response(200, content=_in_pieces(_sse(STREAM_EVENTS)))
    chunks: list[Any] = []
    await _drain(provider.chat_stream(DEPLOYMENT, STREAMED_HELLO), chunks)
    (request,) = upstream.requests
    assert str(request.url) == (
        "https://generativelanguage.test/v1beta/models/gemini-2.5-flash:streamGenerateContent"
        "?alt=sse"
    )
    assert request.headers["x-goog-api-key"] == "AIza-test"
    assert upstream.sent() == to_generate_content_request(HELLO)
    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {},
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert {(c["id"], c["model"], c["created"]) for c in chunks} == {
        ("resp_stream", "gemini-2.5-flash", NOW_S)
    }
    assert chunks[-1]["usage"]["total_tokens"] == 10


@pytest.mark.parametrize(
    ("status", "body", "cls", "code"),
    [
        (429, _status(429, "RESOURCE_EXHAUSTED"), ProviderRateLimited, "RESOURCE_EXHAUSTED"),
        (503, _status(503, "UNAVAILABLE"), ProviderServerError, "UNAVAILABLE"),
        (
            400,
            _status(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1196265) exceeds the maximum number of tokens "
                "allowed (1048575).",
            ),
            ProviderBadRequest,
            "context_length_exceeded",
        ),
        (400, API_KEY_INVALID, ProviderError, "API_KEY_INVALID"),
    ],
)
async def test_stream_errors_before_the_first_byte_allow_fallback(
    provider: GeminiProvider,
    upstream: Upstream,
    status: int,
    body: bytes,
    cls: type[ProviderError],
    code: str | None,
) -> None:
    upstream.handler = lambda _: httpx.Response(status, content=body)
    with pytest.raises(ProviderError) as info:
        await anext(provider.chat_stream(DEPLOYMENT, STREAMED_HELLO))
    assert type(info.value) is cls
    assert (info.value.upstream_status, info.value.upstream_code) == (status, code)


async def test_a_blocked_prompt_stream_is_a_content_filter_bad_request(
    provider: GeminiProvider, upstream: Upstream
) -> None:
    blocked = {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "responseId": "r"}
    upstream.handler = lambda _: httpx.Response(200, content=_in_pieces(_sse([blocked])))
    with pytest.raises(ProviderBadRequest) as info:
        await anext(provider.chat_stream(DEPLOYMENT, STREAMED_HELLO))
    assert info.value.upstream_code == "content_filter"


async def test_an_error_event_mid_stream_raises_after_the_relayed_pieces(
    provider: GeminiProvider, upstream: Upstream
) -> None:
    error = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    upstream.handler = lambda _: httpx.Response(
        200, content=_in_pieces(_sse([STREAM_EVENTS[0], error]))
    )
    relayed: list[Any] = []
    with pytest.raises(ProviderServerError) as info:
        await _drain(provider.chat_stream(DEPLOYMENT, STREAMED_HELLO), relayed)
    assert [c["choices"][0]["delta"] for c in relayed] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
    ]
    assert (info.value.upstream_status, info.value.upstream_code) == (503, "UNAVAILABLE")


@pytest.mark.parametrize(
    "body",
    [_sse(STREAM_EVENTS[:1]), b"data: {oops\n\n", b""],
    ids=["no-finish-reason", "not-json", "empty"],
)
async def test_unusable_streams_are_server_errors(
    provider: GeminiProvider, upstream: Upstream, body: bytes
) -> None:
    upstream.handler = lambda _: httpx.Response(200, content=_in_pieces(body))
    with pytest.raises(ProviderServerError):
        await _drain(provider.chat_stream(DEPLOYMENT, STREAMED_HELLO), [])
