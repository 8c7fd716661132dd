"""Assembling streamed chunks into one chat.completion (workers/router/stream_assembly.py)."""

from __future__ import annotations

from typing import Any

from workers.router.stream_assembly import StreamAssembler


def test_text_tool_calls_finish_reason_and_usage_are_folded() -> None:
    chunks: list[dict[str, Any]] = [
        {"id": "c1", "model": "m", "created": 5,
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"content": "lo"}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_1", "type": "function",
             "function": {"name": "get_", "arguments": '{"ci'}}]}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"name": "weather", "arguments": 'ty": "Oslo"}'}}]}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
    ]  # fmt: skip
    assembler = StreamAssembler()
    for chunk in chunks:
        assembler.add(chunk)
    body = assembler.completion()
    assert body["id"] == "c1"
    assert body["model"] == "m"
    assert body["object"] == "chat.completion"
    message = body["choices"][0]["message"]
    assert message["content"] == "Hello"
    assert message["tool_calls"] == [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    ]  # fmt: skip
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4}


def test_no_chunks_gives_an_empty_completion() -> None:
    body = StreamAssembler().completion()
    assert body["choices"] == []
    assert "usage" not in body
