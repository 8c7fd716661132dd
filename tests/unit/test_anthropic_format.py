"""The inbound Anthropic translations (ingress/anthropic_format.py, anthropic_answer.py).

Tables for each rule, and round trips through the outbound adapter
(workers/providers/anthropic.py), which translates the other way: Anthropic request
-> canonical -> Anthropic request, and Message -> canonical -> Message, must agree.
"""

from __future__ import annotations

import itertools
from typing import Any, Final

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingress.anthropic_answer import (
    STOP_REASONS,
    StreamTranslator,
    error_body,
    error_from_openai,
    error_type,
    message_id,
    sse,
    to_message,
    usage_from_openai,
)
from ingress.anthropic_format import parse_messages_request, to_chat_request
from schemas.errors import InvalidRequest, MalformedJSON, ProviderServerError
from workers.providers.anthropic import FINISH_REASONS, from_message, to_messages_request
from workers.router.stream_assembly import StreamAssembler

MODEL: Final = "claude-via-tollway"
USER: Final = {"role": "user", "content": "hi"}
PNG: Final = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
TOOL: Final = {
    "name": "get_weather",
    "description": "Weather by city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def translate(**fields: Any) -> dict[str, Any]:
    body = {"model": MODEL, "max_tokens": 100, "messages": [USER], **fields}
    return to_chat_request(parse_messages_request(orjson.dumps(body)))


# --- request ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param(
            {},
            {"model": MODEL, "messages": [USER], "max_tokens": 100},
            id="minimal",
        ),
        pytest.param(
            {"system": "Be brief."},
            {"messages": [{"role": "system", "content": "Be brief."}, USER]},
            id="system string",
        ),
        pytest.param(
            {"system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]},
            {
                "messages": [
                    {
                        "role": "system",
                        "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
                    },
                    USER,
                ]
            },
            id="system blocks",
        ),
        pytest.param(
            {"stop_sequences": ["\n\n", "END"], "temperature": 0.2, "top_p": 0.9, "top_k": 5},
            {"stop": ["\n\n", "END"], "temperature": 0.2, "top_p": 0.9},
            id="sampling, top_k dropped",
        ),
        pytest.param(
            {"metadata": {"user_id": "u-1"}, "stream": True},
            {"user": "u-1", "stream": True, "stream_options": {"include_usage": True}},
            id="user and stream",
        ),
        pytest.param(
            {"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "output", "schema": {"type": "object"}},
                }
            },
            id="structured output",
        ),
        pytest.param(
            {"tools": [TOOL]},
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "parameters": TOOL["input_schema"],
                            "description": "Weather by city.",
                        },
                    }
                ]
            },
            id="tools",
        ),
        pytest.param({"tool_choice": {"type": "any"}}, {}, id="tool_choice without tools"),
    ],
)
def test_request_fields(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    chat = translate(**fields)
    assert {key: chat[key] for key in expected} == expected
    assert "top_k" not in chat
    if "tools" not in fields:
        assert "tool_choice" not in chat


@pytest.mark.parametrize(
    ("choice", "tool_choice", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "none"}, "none", None),
        ({"type": "any"}, "required", None),
        (
            {"type": "tool", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
            None,
        ),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
    ],
)
def test_tool_choice(choice: dict[str, Any], tool_choice: Any, parallel: bool | None) -> None:
    chat = translate(tools=[TOOL], tool_choice=choice)
    assert chat["tool_choice"] == tool_choice
    assert chat.get("parallel_tool_calls") == parallel


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image", "source": PNG},
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
                ],
            },
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                        },
                        {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
                    ],
                }
            ],
            id="images",
        ),
        pytest.param(
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
                ],
            },
            [
                {
                    "role": "assistant",
                    "content": "Let me look.",
                    "tool_calls": [
                        {
                            "id": "toolu_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a":1}'},
                        }
                    ],
                }
            ],
            id="assistant tool_use, thinking dropped",
        ),
        pytest.param(
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
            },
            [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "t",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                }
            ],
            id="assistant tool_use only",
        ),
        pytest.param(
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "12 C"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "t2",
                        "is_error": True,
                        "content": [
                            {"type": "text", "text": "see "},
                            {"type": "image", "source": PNG},
                            {"type": "text", "text": "chart"},
                        ],
                    },
                    {"type": "text", "text": "Summarise."},
                ],
            },
            [
                {"role": "tool", "tool_call_id": "t1", "content": "12 C"},
                {"role": "tool", "tool_call_id": "t2", "content": "see chart"},
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                        },
                        {"type": "text", "text": "Summarise."},
                    ],
                },
            ],
            id="tool results first, their images to the user",
        ),
        pytest.param(
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
            [{"role": "tool", "tool_call_id": "t1", "content": ""}],
            id="tool result without content",
        ),
        pytest.param(
            {"role": "system", "content": "Mid-conversation rule."},
            [{"role": "system", "content": "Mid-conversation rule."}],
            id="system role message",
        ),
        pytest.param(
            {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "x"}]},
            [],
            id="empty assistant turn dropped",
        ),
    ],
)
def test_message_translation(message: dict[str, Any], expected: list[dict[str, Any]]) -> None:
    assert translate(messages=[message])["messages"] == expected


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL, "messages": [USER]}, "max_tokens"),
        ({"model": MODEL, "max_tokens": 0, "messages": [USER]}, "max_tokens"),
        ({"model": MODEL, "max_tokens": 5, "messages": []}, "messages"),
        ({"model": MODEL, "max_tokens": 5, "messages": [USER], "n": 2}, "n"),
        ({"model": MODEL, "max_tokens": 5, "messages": [USER], "temperature": 1.5}, "temperature"),
        ({"model": MODEL, "max_tokens": "5", "messages": [USER]}, "max_tokens"),
        (
            {"model": MODEL, "max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]},
            "messages.0.role",
        ),
        (
            {
                "model": MODEL,
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "document"}]}],
            },
            "messages.0.content",
        ),
        (
            {
                "model": MODEL,
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "source": {**PNG, "media_type": "image/bmp"}}
                        ],
                    }
                ],
            },
            "messages.0.content",
        ),
        (
            {
                "model": MODEL,
                "max_tokens": 5,
                "messages": [USER],
                "tools": [{**TOOL, "type": "web_search_20250305"}],
            },
            "tools.0.type",
        ),
        (
            {"model": MODEL, "max_tokens": 5, "messages": [USER], "tool_choice": {"type": "tool"}},
            "tool_choice.name",
        ),
    ],
)
def test_invalid_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_messages_request(orjson.dumps(body))
    assert caught.value.param is not None
    assert caught.value.param.startswith(param)
    assert caught.value.http_status == 400


@pytest.mark.parametrize("body", [b"{", b"[1]", b"\xff"])
def test_a_body_that_is_not_a_json_object_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_messages_request(body)
    assert caught.value.http_status == 400
    assert isinstance(caught.value, MalformedJSON) == (body != b"[1]")


# The request round trip: Anthropic -> canonical (here) -> Anthropic (outbound adapter).
_text = st.text(min_size=1, max_size=20)  # no surrogates: every text is valid UTF-8
_ident = st.text("abcdefghij_", min_size=1, max_size=8)
_text_block = st.builds(lambda t: {"type": "text", "text": t}, _text)
_input = st.dictionaries(
    _ident, st.integers(-(2**63), 2**63 - 1) | _text | st.booleans(), max_size=3
)  # JSON numbers as orjson reads them: larger integers arrive as floats
_tool_use = st.builds(
    lambda i, n, inp: {"type": "tool_use", "id": f"toolu_{i}", "name": n, "input": inp},
    _ident,
    _ident,
    _input,
)
_tool_result = st.builds(
    lambda i, t: {"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": t}, _ident, _text
)
_user_turn = st.builds(
    lambda results, texts: {"role": "user", "content": results + texts},
    st.lists(_tool_result, max_size=2),
    st.lists(_text_block, max_size=3),
).filter(lambda m: bool(m["content"]))
_assistant_turn = st.builds(
    lambda text, calls: {"role": "assistant", "content": text + calls},
    st.lists(_text_block, max_size=1),
    st.lists(_tool_use, max_size=2),
).filter(lambda m: bool(m["content"]))


@st.composite
def _requests(draw: st.DrawFn) -> dict[str, Any]:
    turns = draw(st.lists(st.tuples(_user_turn, _assistant_turn), min_size=1, max_size=3))
    request: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": draw(st.integers(1, 10_000)),
        "messages": [message for pair in turns for message in pair],
    }
    if draw(st.booleans()):
        request["system"] = [draw(_text_block)]
    if draw(st.booleans()):
        request["stop_sequences"] = draw(st.lists(_text, min_size=1, max_size=3))
    if draw(st.booleans()):
        request["temperature"] = draw(st.floats(0, 1))
    if draw(st.booleans()):
        request["metadata"] = {"user_id": draw(_ident)}
    if draw(st.booleans()):
        request["tools"] = [{**TOOL, "name": name} for name in draw(st.sets(_ident, min_size=1))]
        request["tool_choice"] = draw(
            st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "none"}])
        )
    return request


@given(_requests())
def test_request_round_trips_through_the_outbound_adapter(request: dict[str, Any]) -> None:
    chat = to_chat_request(parse_messages_request(orjson.dumps(request)))
    assert to_messages_request(chat, MODEL) == request


# --- answer ----------------------------------------------------------------------------


def _completion(
    message: dict[str, Any], finish_reason: str | None, usage: Any = None
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage,
    }


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
        ("something_new", "end_turn"),
    ],
)
def test_stop_reasons(finish_reason: str | None, stop_reason: str) -> None:
    message = to_message(_completion({"content": "x"}, finish_reason), message_id="msg_1")
    assert message["stop_reason"] == stop_reason
    assert message["stop_sequence"] is None


def test_stop_reasons_invert_the_outbound_finish_reasons() -> None:
    for finish_reason, stop_reason in STOP_REASONS.items():
        expected = "tool_calls" if finish_reason == "function_call" else finish_reason
        assert FINISH_REASONS[stop_reason] == expected


def test_a_completion_with_text_and_tool_calls() -> None:
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": [1]}'}},
        {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": ""}},
    ]
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "prompt_tokens_details": {"cached_tokens": 60},
    }
    message = to_message(
        _completion({"content": "Calling.", "tool_calls": calls}, "tool_calls", usage),
        message_id=message_id("req_abc"),
        cache_write_tokens=30,
    )
    assert message == {
        "id": "msg_abc",
        "type": "message",
        "role": "assistant",
        "model": "gpt-4o",
        "content": [
            {"type": "text", "text": "Calling."},
            {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": [1]}},
            {"type": "tool_use", "id": "call_2", "name": "g", "input": {}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "output_tokens": 20,
            "cache_read_input_tokens": 60,
            "cache_creation_input_tokens": 30,
        },
    }


def test_a_refusal_is_text_and_no_usage_is_zero() -> None:
    message = to_message(
        _completion({"content": None, "refusal": "I can't."}, "content_filter"), message_id="m"
    )
    assert message["content"] == [{"type": "text", "text": "I can't."}]
    assert message["usage"] == usage_from_openai(None)
    assert usage_from_openai(None)["input_tokens"] == 0


def test_tool_arguments_that_are_not_an_object_are_a_server_error() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1"}}
    with pytest.raises(ProviderServerError):
        to_message(
            _completion({"content": None, "tool_calls": [call]}, "tool_calls"), message_id="m"
        )


_usage = st.fixed_dictionaries(
    {
        "input_tokens": st.integers(0, 10**6),
        "output_tokens": st.integers(0, 10**6),
        "cache_read_input_tokens": st.integers(0, 10**6),
        "cache_creation_input_tokens": st.integers(0, 10**6),
    }
)
_messages = st.builds(
    lambda text, calls, stop, usage: {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": text + calls,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    },
    st.lists(_text_block, max_size=1),
    st.lists(_tool_use, max_size=3, unique_by=lambda c: c["id"]),
    st.sampled_from(["end_turn", "max_tokens", "tool_use", "refusal"]),
    _usage,
)


@given(_messages)
def test_message_round_trips_through_the_outbound_adapter(message: dict[str, Any]) -> None:
    body, usage, _ = from_message(message, 1, "claude-x")
    back = to_message(
        orjson.loads(body), message_id="msg_1", cache_write_tokens=usage["cache_write_tokens"]
    )
    assert back == message


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
def test_error_types_by_status(status: int, kind: str) -> None:
    assert error_type(status) == kind


def test_an_openai_error_body_becomes_an_anthropic_one() -> None:
    openai = orjson.dumps(
        {"error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "x"}}
    )
    assert error_from_openai(openai, 429, "req_1") == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
        "request_id": "req_1",
    }
    assert error_from_openai(b"not json", 502) == error_body(
        502, "The request failed with HTTP status 502."
    )


# --- streaming -------------------------------------------------------------------------


def _chunk(
    delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": "gpt-4o",
        "choices": choices,
        **extra,
    }


REALISTIC: Final = [
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"content": "Let me "}),
    _chunk({"content": "check."}),
    _chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        }
    ),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
    _chunk(
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "now", "arguments": "{}"},
                }
            ]
        }
    ),
    _chunk({}, "tool_calls"),
    _chunk(
        usage={
            "prompt_tokens": 50,
            "completion_tokens": 12,
            "prompt_tokens_details": {"cached_tokens": 8},
        }
    ),
]


def test_a_realistic_stream() -> None:
    translator = StreamTranslator("msg_1", "requested")
    events = [event for chunk in REALISTIC for event in translator.feed(chunk)]
    events += translator.finish(cache_write_tokens=2)
    assert events == [
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "gpt-4o",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Let me "},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "check."},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {
                "type": "tool_use",
                "id": "call_1",
                "name": "get_weather",
                "input": {},
            },
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"city":'},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "call_2", "name": "now", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": "{}"},
        },
        {"type": "content_block_stop", "index": 2},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {
                "input_tokens": 40,
                "output_tokens": 12,
                "cache_read_input_tokens": 8,
                "cache_creation_input_tokens": 2,
            },
        },
        {"type": "message_stop"},
    ]


def test_an_empty_stream_still_starts_and_stops() -> None:
    names = [event["type"] for event in StreamTranslator("m", "model").finish()]
    assert names == ["message_start", "message_delta", "message_stop"]


def test_sse_framing() -> None:
    assert (
        sse({"type": "message_stop"}) == b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )


def _fold(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rebuild the content blocks from stream events, as a client does."""
    blocks: list[dict[str, Any]] = []
    partial: dict[int, str] = {}
    for event in events:
        if event["type"] == "content_block_start":
            blocks.append(dict(event["content_block"]))
        elif event["type"] == "content_block_delta":
            delta = event["delta"]
            if delta["type"] == "text_delta":
                blocks[event["index"]]["text"] += delta["text"]
            else:
                partial[event["index"]] = partial.get(event["index"], "") + delta["partial_json"]
    for index, raw in partial.items():
        blocks[index]["input"] = orjson.loads(raw)
    return blocks


def _split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


@given(
    st.text(max_size=30),
    st.lists(st.tuples(_ident, _input), max_size=3),
    st.lists(st.integers(0, 100), max_size=5),
)
def test_streamed_events_fold_to_the_assembled_message(
    text: str, calls: list[tuple[str, dict[str, Any]]], cuts: list[int]
) -> None:
    chunks = [_chunk({"content": piece}) for piece in _split(text, cuts)]
    for number, (name, arguments) in enumerate(calls):
        head = {"index": number, "id": f"call_{number}", "type": "function"}
        chunks.append(_chunk({"tool_calls": [{**head, "function": {"name": name}}]}))
        chunks.extend(
            _chunk({"tool_calls": [{"index": number, "function": {"arguments": piece}}]})
            for piece in _split(orjson.dumps(arguments).decode(), cuts)
        )
    chunks.append(_chunk({}, "tool_calls" if calls else "stop"))
    translator = StreamTranslator("m", "model")
    events = [event for chunk in chunks for event in translator.feed(chunk)] + translator.finish()

    assembler = StreamAssembler()
    for chunk in chunks:
        assembler.add(chunk)
    expected = to_message(assembler.completion(), message_id="m")
    assert _fold(events) == expected["content"]
    assert events[-2]["delta"]["stop_reason"] == expected["stop_reason"]


def test_a_whole_message_relayed_as_one_chunk() -> None:
    """Providers without streaming are relayed as one chunk whose calls have no index."""
    calls = [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"id": "b", "type": "function", "function": {"name": "g", "arguments": '{"x":1}'}},
    ]
    translator = StreamTranslator("m", "model")
    events = translator.feed(
        _chunk(
            {"role": "assistant", "content": None, "refusal": None, "tool_calls": calls},
            "tool_calls",
        )
    )
    blocks = _fold(events + translator.finish())
    assert blocks == [
        {"type": "tool_use", "id": "a", "name": "f", "input": {}},
        {"type": "tool_use", "id": "b", "name": "g", "input": {"x": 1}},
    ]
