"""workers/providers/gemini_stream.py: streamGenerateContent events -> canonical chunks.

Each event is a GenerateContentResponse as `streamGenerateContent?alt=sse` sends it
(REST reference; field names as the `google-genai` SDK's Gemini Developer API
converters write them): new parts per candidate, finishReason on the last event,
cumulative usageMetadata. Pure: no HTTP.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
import pytest

from schemas.errors import (
    ProviderBadRequest,
    ProviderRateLimited,
    ProviderServerError,
    ProviderTimeout,
)
from workers.providers.base import StreamPiece
from workers.providers.gemini import THOUGHT_SIGNATURE_SEPARATOR, from_generate_content
from workers.providers.gemini_stream import GeminiStreamTranslator
from workers.router.stream_assembly import StreamAssembler

NOW_S: Final = 1_760_000_000
RESPONSE_ID: Final = "f0BKaOW2EPXKnvgP4-6h0AM"
MODEL: Final = "gemini-2.5-flash"

Event = dict[str, Any]


def _event(
    parts: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    index: int | None = None,
) -> Event:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
    if finish_reason is not None:
        candidate["finishReason"] = finish_reason
    if index is not None:
        candidate["index"] = index
    event: Event = {"candidates": [candidate], "modelVersion": MODEL, "responseId": RESPONSE_ID}
    if usage is not None:
        event["usageMetadata"] = usage
    return event


TEXT_STREAM: Final = [
    _event([{"text": "Once"}], {"promptTokenCount": 8, "totalTokenCount": 8}, index=0),
    _event([{"text": " upon a time"}], {"promptTokenCount": 8, "totalTokenCount": 8}),
    _event(
        [{"text": ", there was a gateway."}],
        {
            "promptTokenCount": 8,
            "candidatesTokenCount": 11,
            "thoughtsTokenCount": 20,
            "cachedContentTokenCount": 4,
            "totalTokenCount": 39,
        },
        "STOP",
    ),
]


def _translator(*, include_usage: bool = True) -> GeminiStreamTranslator:
    return GeminiStreamTranslator(
        source="gemini", requested_model="gemini-2.5", created_s=NOW_S, include_usage=include_usage
    )


def _translate(
    events: list[Event], *, include_usage: bool = True
) -> tuple[list[StreamPiece], list[dict[str, Any]]]:
    translator = _translator(include_usage=include_usage)
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


def test_text_stream_role_first_deltas_finish_and_final_usage() -> None:
    pieces, chunks = _translate(TEXT_STREAM)
    assert _deltas(chunks) == [
        {"role": "assistant", "content": ""},
        {"content": "Once"},
        {"content": " upon a time"},
        {"content": ", there was a gateway."},
        {},
    ]
    assert chunks[4]["choices"][0]["finish_reason"] == "stop"
    for chunk in chunks:
        assert (chunk["id"], chunk["object"], chunk["created"], chunk["model"]) == (
            RESPONSE_ID,
            "chat.completion.chunk",
            NOW_S,
            MODEL,
        )
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-1]["choices"] == []
    # The last usageMetadata counts; thoughts are completion (reasoning) tokens.
    assert pieces[-1].usage == {
        "prompt_tokens": 8,
        "completion_tokens": 31,
        "cached_tokens": 4,
        "reasoning_tokens": 20,
        "cache_write_tokens": 0,
    }
    assert chunks[-1]["usage"]["total_tokens"] == 39


def test_function_calls_arrive_whole_with_ids_and_signatures() -> None:
    events = [
        _event(
            [
                {"text": "Checking."},
                {
                    "functionCall": {"name": "get_weather", "args": {"location": "Paris"}},
                    "thoughtSignature": "CiQBVKhc",
                },
            ],
            {"promptTokenCount": 30},
        ),
        _event(
            [{"functionCall": {"id": "fc_7", "name": "get_time", "args": {}}}],
            {"promptTokenCount": 30, "candidatesTokenCount": 12},
            "STOP",
        ),
    ]
    _, chunks = _translate(events)
    calls = [d["tool_calls"][0] for d in _deltas(chunks) if "tool_calls" in d]
    assert calls == [
        {
            "index": 0,
            "id": f"call_{RESPONSE_ID}_0_0{THOUGHT_SIGNATURE_SEPARATOR}CiQBVKhc",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
        },
        {
            "index": 1,
            "id": "fc_7",
            "type": "function",
            "function": {"name": "get_time", "arguments": "{}"},
        },
    ]
    (choice,) = _assemble(chunks)["choices"]
    assert choice["finish_reason"] == "tool_calls"  # STOP after a call
    assert choice["message"]["content"] == "Checking."


def test_a_stream_assembles_to_the_unstreamed_translation() -> None:
    """The same answer streamed and unstreamed reaches the client as the same completion."""
    call = {"functionCall": {"name": "lookup", "args": {"q": "x"}}, "thoughtSignature": "SIG"}
    usage = {"promptTokenCount": 8, "candidatesTokenCount": 11, "totalTokenCount": 19}
    events = [
        _event([{"text": "Once"}, {"text": "thinking...", "thought": True}]),
        _event([{"text": " upon"}, call], usage, "STOP"),
    ]
    whole = {
        "candidates": [
            {
                "content": {"parts": [{"text": "Once"}, {"text": " upon"}, call], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": usage,
        "modelVersion": MODEL,
        "responseId": RESPONSE_ID,
    }
    body, reply_usage, _ = from_generate_content(whole, NOW_S, "gemini-2.5")
    unstreamed = orjson.loads(body)
    pieces, chunks = _translate(events)
    streamed = _assemble(chunks)
    (want,) = unstreamed["choices"]
    (got,) = streamed["choices"]
    assert got["message"]["content"] == want["message"]["content"] == "Once upon"
    assert got["message"]["tool_calls"] == want["message"]["tool_calls"]
    assert got["finish_reason"] == want["finish_reason"] == "tool_calls"
    assert streamed["usage"] == unstreamed["usage"]
    assert pieces[-1].usage == reply_usage


def test_several_candidates_stream_as_several_choices() -> None:
    events: list[Event] = [
        {
            "candidates": [
                {"content": {"parts": [{"text": "A"}], "role": "model"}},
                {"content": {"parts": [{"text": "B"}], "role": "model"}, "index": 1},
            ],
            "responseId": RESPONSE_ID,
        },
        {
            "candidates": [
                {"content": {"parts": [{"text": "b"}], "role": "model"}, "index": 1},
                {"content": {"parts": [], "role": "model"}, "index": 0, "finishReason": "STOP"},
            ],
        },
        {
            "candidates": [{"content": {"parts": [], "role": "model"}, "index": 1}],
            "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 3},
        },
        {"candidates": [{"index": 1, "finishReason": "MAX_TOKENS"}]},
    ]
    _, chunks = _translate(events)
    choices = _assemble(chunks)["choices"]
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in choices] == [
        (0, "A", "stop"),
        (1, "Bb", "length"),
    ]
    roles = [
        c["choices"][0]["index"]
        for c in chunks
        if c["choices"] and "role" in c["choices"][0]["delta"]
    ]
    assert roles == [0, 1]


@pytest.mark.parametrize(
    ("gemini_reason", "finish_reason"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("OTHER", "stop"),
    ],
)
def test_finish_reasons(gemini_reason: str, finish_reason: str) -> None:
    _, chunks = _translate([_event([{"text": "x"}], None, gemini_reason)])
    assert chunks[-2]["choices"][0]["finish_reason"] == finish_reason


def test_without_include_usage_no_usage_field_and_no_usage_chunk() -> None:
    pieces, chunks = _translate(TEXT_STREAM, include_usage=False)
    assert all("usage" not in chunk and chunk["choices"] for chunk in chunks)
    assert all(piece.usage is None for piece in pieces)


def test_a_blocked_prompt_is_a_content_filter_bad_request_before_any_output() -> None:
    translator = _translator()
    blocked = {
        "promptFeedback": {"blockReason": "SAFETY"},
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
        "modelVersion": MODEL,
        "responseId": RESPONSE_ID,
    }
    with pytest.raises(ProviderBadRequest) as info:
        translator.feed(blocked)
    assert info.value.upstream_code == "content_filter"


@pytest.mark.parametrize(
    ("status", "name", "error_class"),
    [
        (429, "RESOURCE_EXHAUSTED", ProviderRateLimited),
        (504, "DEADLINE_EXCEEDED", ProviderTimeout),
        (500, "INTERNAL", ProviderServerError),
        (503, "UNAVAILABLE", ProviderServerError),
        (400, "INVALID_ARGUMENT", ProviderServerError),
    ],
)
def test_error_events(status: int, name: str, error_class: type[Exception]) -> None:
    translator = _translator()
    assert len(translator.feed(TEXT_STREAM[0])) == 2  # role + "Once" already relayed
    error = {"error": {"code": status, "message": "upstream says no", "status": name}}
    with pytest.raises(error_class) as info:
        translator.feed(error)
    assert type(info.value) is error_class
    assert getattr(info.value, "upstream_status", None) == status
    assert getattr(info.value, "upstream_code", None) == name
    assert getattr(info.value, "retriable", False)


@pytest.mark.parametrize("events", [[], TEXT_STREAM[:2]], ids=["empty", "no-finish-reason"])
def test_a_stream_that_ends_unfinished_is_a_server_error(events: list[Event]) -> None:
    translator = _translator()
    for event in events:
        translator.feed(event)
    with pytest.raises(ProviderServerError, match="before a finishReason"):
        translator.close()


@pytest.mark.parametrize(
    "event",
    [
        {"candidates": [{"content": {"parts": [{"functionCall": {"args": {}}}]}}]},
        {"candidates": [{"index": "first"}]},
        {"candidates": [], "usageMetadata": {"promptTokenCount": -3}},
        {"candidates": ["not an object"]},
    ],
)
def test_unreadable_events_are_server_errors(event: Event) -> None:
    with pytest.raises(ProviderServerError, match="unreadable"):
        _translator().feed(event)
