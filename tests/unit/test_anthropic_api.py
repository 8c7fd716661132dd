"""POST /v1/messages driven in-process by the official `anthropic` SDK (and raw httpx).

The ingress runs over ASGI with the in-memory bus: each responder plays the router,
answering the canonical (OpenAI-format) request with a Result or a list of stream items.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import anthropic
import httpx
import httpx2  # the anthropic SDK's HTTP client
import orjson
import pytest
import pytest_asyncio
from anthropic.types import MessageParam, ToolParam

from ingress.anthropic_api import anthropic_routes
from ingress.app import REQUEST_ID_HEADER, build_app
from ingress.bus import MemoryBus, StreamItem
from ingress.settings import IngressSettings
from schemas.records import RequestEnvelope, Result, StreamChunk
from schemas.routes import default_routes

MODEL: Final = "gpt-4o-mini"
USAGE: Final = {
    "prompt_tokens": 30,
    "completion_tokens": 7,
    "total_tokens": 37,
    "prompt_tokens_details": {"cached_tokens": 10},
}
WEATHER_TOOL: Final[ToolParam] = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}

Responder = Callable[[RequestEnvelope], Awaitable[Result | list[StreamItem] | None]]


def completion(message: dict[str, Any], finish_reason: str = "stop") -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": USAGE,
        }
    )


def result(
    envelope: RequestEnvelope,
    body: bytes,
    *,
    http_status: int = 200,
    cache_write_tokens: int = 0,
) -> Result:
    failed = http_status >= 400
    return {
        "request_id": envelope["request_id"],
        "team_id": envelope["team_id"],
        "key_id": envelope["key_id"],
        "mode": envelope["mode"],
        "execution_id": "exec-1",
        "status": "failed" if failed else "succeeded",
        "http_status": http_status,
        "body": body,
        "error_type": "ProviderRateLimited" if failed else None,
        "requested_model": envelope["model"],
        "served_model": None if failed else "gpt-4o-mini-2024-07-18",
        "provider": "openai",
        "deployment": "mock",
        "attempts": 1,
        "prompt_tokens": 30,
        "completion_tokens": 7,
        "cached_tokens": 10,
        "reasoning_tokens": 0,
        "cache_write_tokens": cache_write_tokens,
        "received_at_ms": envelope["received_at_ms"],
        "finished_at_ms": envelope["received_at_ms"] + 5,
        "metadata": envelope["metadata"],
    }


def openai_error(message: str, error_type: str) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": None, "code": None}}
    )


def chunk(
    envelope: RequestEnvelope, seq: int, data: dict[str, Any], execution: str = "exec-1"
) -> StreamChunk:
    payload = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": MODEL, **data}
    return {
        "request_id": envelope["request_id"],
        "execution_id": execution,
        "seq": seq,
        "data": orjson.dumps(payload),
        "cache": None,
    }


def delta(**fields: Any) -> dict[str, Any]:
    finish = fields.pop("finish_reason", None)
    return {"choices": [{"index": 0, "delta": fields, "finish_reason": finish}]}


Setup = Callable[[Responder], tuple[anthropic.AsyncAnthropic, httpx.AsyncClient, MemoryBus]]


@pytest_asyncio.fixture
async def setup() -> AsyncIterator[Setup]:
    clients: list[tuple[httpx.AsyncClient, httpx2.AsyncClient]] = []

    def factory(
        responder: Responder,
    ) -> tuple[anthropic.AsyncAnthropic, httpx.AsyncClient, MemoryBus]:
        bus = MemoryBus(responder)
        app = build_app(
            IngressSettings(id_secret="unit-test", sync_timeout_s=5),
            default_routes({}),
            bus,
            ingress_id="ingress-test",
            extra_routes=[anthropic_routes],
        )
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        sdk_http = httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app), base_url="http://test"
        )
        clients.append((http, sdk_http))
        sdk = anthropic.AsyncAnthropic(
            base_url="http://test", api_key="x", http_client=sdk_http, max_retries=0
        )
        return sdk, http, bus

    yield factory
    for http, sdk_http in clients:
        await http.aclose()
        await sdk_http.aclose()


def canonical(bus: MemoryBus, number: int = 0) -> dict[str, Any]:
    envelope = bus.published[number][1]
    assert envelope["endpoint"] == "/v1/messages"
    body: dict[str, Any] = orjson.loads(envelope["body"])
    return body


async def test_a_plain_message(setup: Setup) -> None:
    async def answer(envelope: RequestEnvelope) -> Result:
        body = completion({"role": "assistant", "content": "Hello from Kafka"})
        return result(envelope, body, cache_write_tokens=5)

    sdk, _, bus = setup(answer)
    message = await sdk.messages.create(
        model=MODEL,
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello"}],
        metadata={"user_id": "u-1"},
        stop_sequences=["END"],
    )

    assert message.type == "message"
    assert message.id.startswith("msg_")
    assert message.model == "gpt-4o-mini-2024-07-18"
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [
        ("text", "Hello from Kafka")
    ]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 15
    assert message.usage.output_tokens == 7
    assert message.usage.cache_read_input_tokens == 10
    assert message.usage.cache_creation_input_tokens == 5
    assert message._request_id is not None
    assert message._request_id.startswith("req_")
    assert canonical(bus) == {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
        ],
        "max_tokens": 64,
        "stop": ["END"],
        "user": "u-1",
    }


async def test_the_raw_response_carries_the_tollway_headers(setup: Setup) -> None:
    async def answer(envelope: RequestEnvelope) -> Result:
        return result(envelope, completion({"role": "assistant", "content": "hi"}))

    _, http, _ = setup(answer)
    response = await http.post(
        "/v1/messages",
        json={"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]},
        headers={"x-api-key": "ignored", "anthropic-version": "2023-06-01"},
    )
    assert response.status_code == 200
    assert response.headers[REQUEST_ID_HEADER].startswith("req_")
    assert response.headers["request-id"] == response.headers[REQUEST_ID_HEADER]
    assert response.headers["x-tollway-attempts"] == "1"
    assert response.headers["x-tollway-deployment"] == "mock"


async def test_a_tool_use_round_trip(setup: Setup) -> None:
    async def answer(envelope: RequestEnvelope) -> Result:
        chat = orjson.loads(envelope["body"])
        if chat["messages"][-1]["role"] == "tool":
            return result(envelope, completion({"role": "assistant", "content": "It is sunny."}))
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
        body = completion({"role": "assistant", "content": None, "tool_calls": [call]})
        return result(envelope, body.replace(b'"stop"', b'"tool_calls"'))

    sdk, _, bus = setup(answer)
    question: MessageParam = {"role": "user", "content": "Weather in Paris?"}
    first = await sdk.messages.create(
        model=MODEL,
        max_tokens=64,
        messages=[question],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any"},
    )
    assert first.stop_reason == "tool_use"
    tool_use = first.content[0]
    assert tool_use.type == "tool_use"
    assert (tool_use.id, tool_use.name, tool_use.input) == (
        "call_1",
        "get_weather",
        {"city": "Paris"},
    )

    second = await sdk.messages.create(
        model=MODEL,
        max_tokens=64,
        tools=[WEATHER_TOOL],
        messages=[
            question,
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"}],
            },
        ],
    )
    assert [getattr(b, "text", None) for b in second.content] == ["It is sunny."]
    assert canonical(bus, 0)["tool_choice"] == "required"
    assert canonical(bus, 0)["tools"][0]["function"]["parameters"] == WEATHER_TOOL["input_schema"]
    messages = canonical(bus, 1)["messages"]
    assert messages[1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
    }
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}


async def test_streaming_text_and_a_tool_call(setup: Setup) -> None:
    async def stream(envelope: RequestEnvelope) -> list[StreamItem]:
        call = {"index": 0, "id": "call_9", "type": "function"}
        return [
            chunk(envelope, 0, delta(role="assistant", content="Hel")),
            chunk(envelope, 0, delta(content="stale"), execution="exec-0"),  # dropped
            chunk(envelope, 1, delta(content="lo")),
            chunk(envelope, 2, delta(tool_calls=[{**call, "function": {"name": "get_weather"}}])),
            chunk(envelope, 3, delta(tool_calls=[{"index": 0, "function": {"arguments": '{"ci'}}])),
            chunk(
                envelope, 4, delta(tool_calls=[{"index": 0, "function": {"arguments": 'ty":1}'}}])
            ),
            chunk(envelope, 5, delta(finish_reason="tool_calls")),
            chunk(envelope, 6, {"choices": [], "usage": USAGE}),
            result(envelope, b"{}", cache_write_tokens=4),
        ]

    sdk, _, bus = setup(stream)
    async with sdk.messages.stream(
        model=MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": "hi"}],
        tools=[WEATHER_TOOL],
    ) as events:
        texts = [text async for text in events.text_stream]
        final = await events.get_final_message()

    assert texts == ["Hel", "lo"]
    assert [block.type for block in final.content] == ["text", "tool_use"]
    tool_use = final.content[1]
    assert tool_use.type == "tool_use"
    assert (tool_use.id, tool_use.input) == ("call_9", {"city": 1})
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (16, 7)
    assert final.usage.cache_read_input_tokens == 10
    assert final.usage.cache_creation_input_tokens == 4
    assert canonical(bus)["stream"] is True
    assert canonical(bus)["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("status", "error_type", "exception"),
    [
        (429, "rate_limit_error", anthropic.RateLimitError),
        (400, "invalid_request_error", anthropic.BadRequestError),
        (502, "api_error", anthropic.InternalServerError),
        (504, "timeout_error", anthropic.GatewayTimeoutError),
    ],
)
async def test_a_failed_result_is_the_sdk_exception(
    setup: Setup, status: int, error_type: str, exception: type[anthropic.APIStatusError]
) -> None:
    async def fail(envelope: RequestEnvelope) -> Result:
        return result(envelope, openai_error("upstream said no", "x"), http_status=status)

    sdk, _, _ = setup(fail)
    with pytest.raises(exception) as caught:
        await sdk.messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == status
    assert caught.value.body == {
        "type": "error",
        "error": {"type": error_type, "message": "upstream said no"},
        "request_id": caught.value.response.headers[REQUEST_ID_HEADER],
    }


async def test_an_unknown_model_is_not_found(setup: Setup) -> None:
    async def never(_: RequestEnvelope) -> None:
        return None

    sdk, _, bus = setup(never)
    with pytest.raises(anthropic.NotFoundError) as caught:
        await sdk.messages.create(
            model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "not_found_error"
    assert bus.published == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        (
            {"model": MODEL, "max_tokens": 1, "messages": [], "bogus": 1},
            "messages",
        ),
        (
            {
                "model": MODEL,
                "max_tokens": 1,
                "messages": [{"role": "user", "content": "x"}],
                "n": 2,
            },
            "n",
        ),
        (
            {
                "model": MODEL,
                "max_tokens": 1,
                "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}],
            },
            "messages.0.content",
        ),
    ],
)
async def test_an_invalid_body_is_an_anthropic_400(
    setup: Setup, body: dict[str, Any], param: str
) -> None:
    async def never(_: RequestEnvelope) -> None:
        return None

    _, http, bus = setup(never)
    response = await http.post("/v1/messages", json=body)
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"].startswith(param)
    assert bus.published == []


async def test_malformed_json_is_an_anthropic_400(setup: Setup) -> None:
    async def never(_: RequestEnvelope) -> None:
        return None

    _, http, _ = setup(never)
    response = await http.post("/v1/messages", content=b"{nope")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def sse_events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for frame in body.split(b"\n\n"):
        if frame:
            event_line, data_line = frame.split(b"\n")
            events.append((event_line[7:].decode(), orjson.loads(data_line[6:])))
    return events


async def test_a_stream_failing_before_its_first_chunk_is_a_plain_error(setup: Setup) -> None:
    async def fail(envelope: RequestEnvelope) -> list[StreamItem]:
        return [result(envelope, openai_error("busy", "rate_limit_error"), http_status=429)]

    sdk, _, _ = setup(fail)
    with pytest.raises(anthropic.RateLimitError):
        async with sdk.messages.stream(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "x"}]
        ) as events:
            await events.get_final_message()


async def test_a_stream_failing_after_chunks_ends_with_an_error_event(setup: Setup) -> None:
    async def broken(envelope: RequestEnvelope) -> list[StreamItem]:
        return [
            chunk(envelope, 0, delta(content="partial")),
            result(envelope, openai_error("stream broke", "upstream_error"), http_status=502),
        ]

    _, http, _ = setup(broken)
    response = await http.post(
        "/v1/messages",
        json={
            "model": MODEL,
            "max_tokens": 8,
            "stream": True,
            "messages": [{"role": "user", "content": "x"}],
        },
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.content)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "error",
    ]
    assert events[-1][1]["error"] == {"type": "api_error", "message": "stream broke"}
