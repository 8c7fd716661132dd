"""workers/providers/anthropic_stream.py: Messages API stream events -> canonical chunks.

Event sequences are written in the Messages API's streaming format (the `anthropic`
SDK's RawMessageStreamEvent types: message_start, content_block_start/_delta/_stop,
message_delta, message_stop, ping, error), shaped like the API reference's examples.
Pure: no HTTP.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
import pytest

from schemas.errors import ProviderRateLimited, ProviderServerError, ProviderTimeout
from workers.providers.anthropic import from_message
from workers.providers.anthropic_stream import AnthropicStreamTranslator
from workers.providers.base import StreamPiece
from workers.router.stream_assembly import StreamAssembler

NOW_S: Final = 1_760_000_000
MESSAGE_ID: Final = "msg_01XFDUDYJgAACzvnptvVoYEL"
MODEL: Final = "claude-sonnet-4-5-20250929"

Event = dict[str, Any]


def _start(usage: dict[str, Any]) -> Event:
    return {
        "type": "message_start",
        "message": {
            "id": MESSAGE_ID,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": MODEL,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        },
    }


def _delta(index: int, delta: dict[str, Any]) -> Event:
    return {"type": "content_block_delta", "index": index, "delta": delta}


def _text_block(index: int, *texts: str) -> list[Event]:
    text = {"type": "text", "text": ""}
    return [
        {"type": "content_block_start", "index": index, "content_block": text},
        *(_delta(index, {"type": "text_delta", "text": t}) for t in texts),
        {"type": "content_block_stop", "index": index},
    ]


def _tool_block(index: int, call_id: str, name: str, *fragments: str) -> list[Event]:
    return [
        {
            "type": "content_block_start",
            "index": index,
            "content_block": {"type": "tool_use", "id": call_id, "name": name, "input": {}},
        },
        *(_delta(index, {"type": "input_json_delta", "partial_json": f}) for f in fragments),
        {"type": "content_block_stop", "index": index},
    ]


def _end(stop_reason: str, usage: dict[str, Any]) -> list[Event]:
    return [
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": usage,
        },
        {"type": "message_stop"},
    ]


TEXT_STREAM: Final = [
    _start({"input_tokens": 25, "output_tokens": 1}),
    *_text_block(0, "Hello", "!", " How can I help?")[:2],
    {"type": "ping"},
    *_text_block(0, "Hello", "!", " How can I help?")[2:],
    *_end("end_turn", {"output_tokens": 15}),
]
TOOL_STREAM: Final = [
    _start({"input_tokens": 472, "output_tokens": 2}),
    *_text_block(0, "Okay", ", let's check the weather for San Francisco, CA:"),
    *_tool_block(
        1,
        "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
        "get_weather",
        "",
        '{"location":',
        ' "San',
        " Francisc",
        'o, CA"',
        ", ",
        '"unit": "fah',
        'renheit"}',
    ),
    *_tool_block(2, "toolu_02", "get_time"),  # no parameters: no fragment at all
    *_end("tool_use", {"output_tokens": 89}),
]


def _translate(
    events: list[Event], *, include_usage: bool = True
) -> tuple[list[StreamPiece], list[dict[str, Any]]]:
    translator = AnthropicStreamTranslator(
        source="claude",
        requested_model="claude-sonnet-4-5",
        created_s=NOW_S,
        include_usage=include_usage,
    )
    pieces = [piece for event in events for piece in translator.feed(event)]
    pieces.extend(translator.close())
    return pieces, [orjson.loads(piece.data) for piece in pieces]


def _deltas(chunks: list[dict[str, Any]]) -> list[Any]:
    return [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]


def _assemble(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    assembler = StreamAssembler()
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.completion()


def test_text_stream_role_first_deltas_finish_and_usage() -> None:
    pieces, chunks = _translate(TEXT_STREAM)
    assert _deltas(chunks) == [
        {"role": "assistant", "content": ""},
        {"content": "Hello"},
        {"content": "!"},
        {"content": " How can I help?"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]] == [None] * 4 + [
        "stop"
    ]
    for chunk in chunks:
        assert (chunk["id"], chunk["object"], chunk["created"], chunk["model"]) == (
            MESSAGE_ID,
            "chat.completion.chunk",
            NOW_S,
            MODEL,
        )
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"] == {
        "prompt_tokens": 25,
        "completion_tokens": 15,
        "total_tokens": 40,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    assert [piece.usage for piece in pieces[:-1]] == [None] * (len(pieces) - 1)
    assert pieces[-1].usage == {
        "prompt_tokens": 25,
        "completion_tokens": 15,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
    }


def test_tool_use_with_partial_json_becomes_tool_call_deltas() -> None:
    _, chunks = _translate(TOOL_STREAM)
    calls = [d["tool_calls"][0] for d in _deltas(chunks) if "tool_calls" in d]
    assert calls[0] == {
        "index": 0,
        "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert all(set(c) == {"index", "function"} for c in calls[1:8])  # fragments: no id/name
    assert calls[8] == {
        "index": 1,
        "id": "toolu_02",
        "type": "function",
        "function": {"name": "get_time", "arguments": ""},
    }
    assert calls[9] == {"index": 1, "function": {"arguments": "{}"}}
    completion = _assemble(chunks)
    (choice,) = completion["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Okay, let's check the weather for San Francisco, CA:"
    weather, clock = choice["message"]["tool_calls"]
    assert orjson.loads(weather["function"]["arguments"]) == {
        "location": "San Francisco, CA",
        "unit": "fahrenheit",
    }
    assert (clock["id"], clock["function"]) == ("toolu_02", {"name": "get_time", "arguments": "{}"})


def test_a_stream_assembles_to_the_unstreamed_translation() -> None:
    """The same answer streamed and unstreamed reaches the client as the same completion."""
    message = {
        "id": MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [
            {"type": "text", "text": "Okay, let's check the weather for San Francisco, CA:"},
            {
                "type": "tool_use",
                "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                "name": "get_weather",
                "input": {"location": "San Francisco, CA", "unit": "fahrenheit"},
            },
            {"type": "tool_use", "id": "toolu_02", "name": "get_time", "input": {}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 472, "output_tokens": 89},
    }
    body, usage, model = from_message(message, NOW_S, "claude-sonnet-4-5")
    unstreamed = orjson.loads(body)
    pieces, chunks = _translate(TOOL_STREAM)
    streamed = _assemble(chunks)
    (want,) = unstreamed["choices"]
    (got,) = streamed["choices"]
    assert got["finish_reason"] == want["finish_reason"]
    assert got["message"]["content"] == want["message"]["content"]
    for got_call, want_call in zip(
        got["message"]["tool_calls"], want["message"]["tool_calls"], strict=True
    ):
        assert got_call["id"] == want_call["id"]
        assert got_call["function"]["name"] == want_call["function"]["name"]
        assert orjson.loads(got_call["function"]["arguments"]) == orjson.loads(
            want_call["function"]["arguments"]
        )
    assert (streamed["id"], streamed["model"]) == (unstreamed["id"], model)
    assert streamed["usage"] == unstreamed["usage"]
    assert pieces[-1].usage == usage


def test_usage_with_cache_read_and_write_tokens() -> None:
    events = [
        _start(
            {
                "input_tokens": 10,
                "cache_creation_input_tokens": 2_000,
                "cache_read_input_tokens": 500,
                "output_tokens": 1,
                "service_tier": "standard",
            }
        ),
        *_text_block(0, "Hi"),
        *_end("end_turn", {"output_tokens": 120}),
    ]
    pieces, chunks = _translate(events)
    assert pieces[-1].usage == {
        "prompt_tokens": 2_510,
        "completion_tokens": 120,
        "cached_tokens": 500,
        "reasoning_tokens": 0,
        "cache_write_tokens": 2_000,
    }
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 500}


def test_message_delta_cumulative_usage_overrides_field_by_field() -> None:
    """Newer API versions repeat input and cache counts in message_delta (nullable)."""
    events = [
        _start({"input_tokens": 10, "cache_read_input_tokens": 0, "output_tokens": 1}),
        *_text_block(0, "Hi"),
        *_end(
            "max_tokens",
            {
                "input_tokens": 12,
                "cache_creation_input_tokens": None,
                "cache_read_input_tokens": 300,
                "output_tokens": 64,
                "output_tokens_details": {"thinking_tokens": 40},
            },
        ),
    ]
    pieces, chunks = _translate(events)
    assert pieces[-1].usage == {
        "prompt_tokens": 312,
        "completion_tokens": 64,
        "cached_tokens": 300,
        "reasoning_tokens": 40,
        "cache_write_tokens": 0,
    }
    assert _assemble(chunks)["choices"][0]["finish_reason"] == "length"


def test_thinking_blocks_and_unknown_events_relay_nothing() -> None:
    thinking = {"type": "thinking", "thinking": ""}
    events = [
        _start({"input_tokens": 5, "output_tokens": 1}),
        {"type": "content_block_start", "index": 0, "content_block": thinking},
        _delta(0, {"type": "thinking_delta", "thinking": "Let me think"}),
        _delta(0, {"type": "signature_delta", "signature": "EqQB"}),
        {"type": "content_block_stop", "index": 0},
        {"type": "some_future_event", "anything": 1},
        {"type": "ping"},
        *_text_block(1, "42"),
        *_end("end_turn", {"output_tokens": 30}),
    ]
    _, chunks = _translate(events)
    assert _deltas(chunks) == [{"role": "assistant", "content": ""}, {"content": "42"}, {}]


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_finish_reasons(stop_reason: str, finish_reason: str) -> None:
    events = [
        _start({"input_tokens": 3, "output_tokens": 1}),
        *_end(stop_reason, {"output_tokens": 0}),
    ]
    _, chunks = _translate(events)
    # Without content (a refusal) the choice still opens with its role chunk.
    assert _deltas(chunks) == [{"role": "assistant", "content": ""}, {}]
    assert chunks[1]["choices"][0]["finish_reason"] == finish_reason


def test_without_include_usage_no_usage_field_and_no_usage_chunk() -> None:
    pieces, chunks = _translate(TEXT_STREAM, include_usage=False)
    assert all("usage" not in chunk and chunk["choices"] for chunk in chunks)
    assert all(piece.usage is None for piece in pieces)


def test_an_error_event_before_any_output_is_retriable_and_wrote_nothing() -> None:
    translator = AnthropicStreamTranslator(
        source="claude", requested_model="m", created_s=NOW_S, include_usage=True
    )
    assert translator.feed(_start({"input_tokens": 3, "output_tokens": 1})) == []
    assert translator.feed({"type": "ping"}) == []
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(ProviderServerError) as info:
        translator.feed(overloaded)
    assert info.value.retriable
    assert (info.value.upstream_status, info.value.upstream_code) == (529, "overloaded_error")


@pytest.mark.parametrize(
    ("error_type", "error_class", "status"),
    [
        ("rate_limit_error", ProviderRateLimited, 429),
        ("timeout_error", ProviderTimeout, 504),
        ("api_error", ProviderServerError, 500),
        ("invalid_request_error", ProviderServerError, 400),
        ("a_new_error_type", ProviderServerError, None),
    ],
)
def test_error_events_after_output(
    error_type: str, error_class: type[Exception], status: int | None
) -> None:
    translator = AnthropicStreamTranslator(
        source="claude", requested_model="m", created_s=NOW_S, include_usage=True
    )
    pieces = [p for event in TEXT_STREAM[:4] for p in translator.feed(event)]
    assert len(pieces) == 2  # role + "Hello" already relayed
    with pytest.raises(error_class) as info:
        translator.feed({"type": "error", "error": {"type": error_type, "message": "x"}})
    assert type(info.value) is error_class
    assert getattr(info.value, "upstream_status", None) == status
    assert getattr(info.value, "upstream_code", None) == error_type


def test_a_stream_cut_before_message_stop_is_a_server_error() -> None:
    translator = AnthropicStreamTranslator(
        source="claude", requested_model="m", created_s=NOW_S, include_usage=True
    )
    for event in TEXT_STREAM[:-1]:  # message_delta came, message_stop did not
        translator.feed(event)
    with pytest.raises(ProviderServerError, match="before message_stop"):
        translator.close()


@pytest.mark.parametrize(
    "event",
    [
        {"type": "content_block_start", "index": 0},
        {"type": "content_block_delta", "index": "x", "delta": {"type": "text_delta", "text": "a"}},
        {"type": "message_start", "message": {"usage": {"input_tokens": -1}}},
        {"type": "message_delta", "delta": {}, "usage": {"output_tokens": "many"}},
    ],
)
def test_unreadable_events_are_server_errors(event: Event) -> None:
    translator = AnthropicStreamTranslator(
        source="claude", requested_model="m", created_s=NOW_S, include_usage=True
    )
    with pytest.raises(ProviderServerError, match="unreadable"):
        translator.feed(event)


def test_events_after_message_stop_are_ignored() -> None:
    translator = AnthropicStreamTranslator(
        source="claude", requested_model="m", created_s=NOW_S, include_usage=False
    )
    for event in TEXT_STREAM:
        translator.feed(event)
    assert translator.feed(_text_block(1, "late")[1]) == []
    assert translator.close() == []
