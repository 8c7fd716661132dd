"""The mock provider's streamed Anthropic and Gemini dialects (pure renderers).

Each plan is checked for its provider's event order, and then read back by the
gateway's own translators (anthropic_stream.py, gemini_stream.py): the streamed
words must equal the unstreamed answer of the same outcome. The server's framing and
pacing are tested over sockets in tests/integration/test_provider_streaming.py.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
import pytest

from workers.providers.anthropic_stream import AnthropicStreamTranslator
from workers.providers.gemini_stream import GeminiStreamTranslator
from workers.providers.mock import anthropic_wire, gemini_wire
from workers.providers.mock.behaviour import Answer, MockSettings, Outcome, decide
from workers.providers.mock.stream_plan import StreamPlan

SETTINGS: Final = MockSettings(latency_ms=0, completion_tokens=5, seed=11)
MESSAGES: Final = [{"role": "user", "content": "stream please"}]


def _outcome(model: str, **fields: Any) -> Outcome:
    return decide({"messages": MESSAGES, "stream": True, **fields}, model, SETTINGS, 0)


def _plan(rendered: object) -> StreamPlan:
    assert isinstance(rendered, StreamPlan)
    return rendered


def _text(chunks: list[dict[str, Any]]) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )


def test_anthropic_stream_events_in_messages_api_order() -> None:
    fields = {"messages": MESSAGES, "max_tokens": 3}
    outcome = _outcome("mock", max_tokens=3)
    plan = _plan(anthropic_wire.render_stream(outcome, fields, "mock", "msg_1"))
    kinds = [event["type"] for event in plan.events]
    assert kinds == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert plan.lead == 4  # up to and including the first word
    start: Any = plan.events[0]["message"]
    assert (start["id"], start["model"], start["content"], start["stop_reason"]) == (
        "msg_1",
        "mock",
        [],
        None,
    )
    delta: Any = plan.events[-2]
    assert delta["delta"]["stop_reason"] == "max_tokens"
    assert delta["usage"] == {"output_tokens": 3}


@pytest.mark.parametrize("model", ["mock", "mock-content-filter"])
def test_anthropic_stream_reads_back_as_the_unstreamed_answer(model: str) -> None:
    fields = {"messages": MESSAGES, "max_tokens": 50}
    outcome = _outcome(model, max_tokens=50)
    plan = _plan(anthropic_wire.render_stream(outcome, fields, model, "msg_2"))
    _, whole, _ = anthropic_wire.render(outcome, fields, model, "msg_2")
    translator = AnthropicStreamTranslator(
        source="mock", requested_model=model, created_s=0, include_usage=True
    )
    pieces = [p for event in plan.events for p in translator.feed(event)] + translator.close()
    chunks = [orjson.loads(p.data) for p in pieces]
    content: Any = whole["content"]
    assert _text(chunks) == "".join(block["text"] for block in content)
    usage: Any = whole["usage"]
    assert pieces[-1].usage is not None
    assert pieces[-1].usage["prompt_tokens"] == usage["input_tokens"]
    assert pieces[-1].usage["completion_tokens"] == usage["output_tokens"]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1]
    assert finish == ("content_filter" if model == "mock-content-filter" else "stop")


def test_anthropic_stream_errors_are_rendered_before_any_stream() -> None:
    fields = {"messages": MESSAGES, "max_tokens": 5}
    status, body, headers = anthropic_wire.render(_outcome("mock-429-2"), fields, "m", "x")
    assert anthropic_wire.render_stream(_outcome("mock-429-2"), fields, "m", "x") == (
        status,
        body,
        headers,
    )
    assert status == 429


def test_gemini_stream_one_event_per_word_finish_and_usage_last() -> None:
    outcome = _outcome("mock")
    assert isinstance(outcome, Answer)
    plan = _plan(gemini_wire.render_stream(outcome, {"messages": MESSAGES}, "mock", "r1"))
    assert plan.lead == 1
    assert len(plan.events) == len(outcome.reply.words)
    events: list[Any] = plan.events
    finishes = [event["candidates"][0].get("finishReason") for event in events]
    assert finishes == [None] * (len(plan.events) - 1) + ["STOP"]
    translator = GeminiStreamTranslator(
        source="mock", requested_model="mock", created_s=0, include_usage=True
    )
    pieces = [p for event in plan.events for p in translator.feed(event)] + translator.close()
    assert _text([orjson.loads(p.data) for p in pieces]) == outcome.reply.content
    assert pieces[-1].usage is not None
    assert pieces[-1].usage["completion_tokens"] == outcome.reply.completion_tokens
    assert pieces[-1].usage["prompt_tokens"] == outcome.reply.prompt_tokens


def test_gemini_stream_blocked_prompt_and_errors() -> None:
    fields = {"messages": MESSAGES}
    blocked = _plan(gemini_wire.render_stream(_outcome("mock-content-filter"), fields, "m", "r2"))
    (event,) = blocked.events
    assert event["promptFeedback"] == {"blockReason": "SAFETY"}
    rendered = gemini_wire.render_stream(_outcome("mock-error-503"), fields, "m", "r3")
    assert not isinstance(rendered, StreamPlan)
    status, body, _ = rendered
    assert status == 503
    error: Any = body["error"]
    assert error["status"] == "UNAVAILABLE"
