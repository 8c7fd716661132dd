"""End to end: client -> ingress -> Kafka -> router -> mock provider -> Kafka -> client.

Every process is real and separate; the broker is the real Kafka. The last
test SIGKILLs a router in the middle of a run and proves that every request
that got a 202 still gets its result. /v1/embeddings (openai SDK, limits, pricing)
runs through the same stack, at the end.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from openai import OpenAI

from deploy.stack import Stack
from schemas import codec, topics

pytestmark = pytest.mark.e2e

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def mock_calls(stack: Stack) -> int:
    stats = httpx.get(f"http://127.0.0.1:{stack.mock_port}/stats", timeout=5).json()
    return int(stats["total"])


async def results_per_id(bootstrap: str, ids: set[str], timeout_s: float) -> Counter[str]:
    """How many result records each id has on tollway.results (read from the beginning)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    counts: Counter[str] = Counter()
    try:
        tps = [TopicPartition(topics.RESULTS.name, p) for p in range(topics.RESULTS.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batch.values():
                for record in records:
                    key = (record.key or b"").decode()
                    if key in ids:
                        counts[key] += 1
            if not batch and set(counts) >= ids:
                ends = await consumer.end_offsets(tps)
                positions = {tp: await consumer.position(tp) for tp in tps}
                if all(positions[tp] >= ends[tp] for tp in tps):
                    break
    finally:
        await consumer.stop()
    return counts


@pytest.fixture
def openai_client(stack: Stack) -> Iterator[OpenAI]:
    """An SDK client closed after the test: a pooled socket left to the collector
    surfaces later as a ResourceWarning in whichever test is running (an error here)."""
    with OpenAI(base_url=f"{stack.url}/v1", api_key="any", max_retries=0) as client:
        yield client


def test_the_openai_sdk_gets_a_chat_completion_through_kafka(openai_client: OpenAI) -> None:
    client = openai_client
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    assert raw.headers["x-tollway-request-id"].startswith("req_")
    models = client.models.list()
    assert "gpt-4o-mini" in {m.id for m in models.data}


def test_async_request_answers_202_and_its_result_is_fetchable(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        accepted = client.post("/v1/async/chat/completions", json=CHAT)
        assert accepted.status_code == 202
        request_id = accepted.json()["id"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            polled = client.get(f"/v1/async/requests/{request_id}").json()
            if polled["status"] != "queued":
                break
            time.sleep(0.05)
    assert polled["status"] == "succeeded"
    assert polled["response"]["choices"][0]["message"]["content"]


def test_an_idempotency_key_is_answered_once_through_the_real_ingress(stack: Stack) -> None:
    key = {"Idempotency-Key": f"e2e-{time.time_ns()}"}
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        first = client.post("/v1/async/chat/completions", json=CHAT, headers=key)
        again = client.post("/v1/async/chat/completions", json=CHAT, headers=key)
        other = client.post("/v1/async/chat/completions", json={**CHAT, "n": 2}, headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert (other.status_code, other.json()["error"]["code"]) == (422, "idempotency_key_reused")


async def test_1000_concurrent_requests_all_complete_exactly_once(
    stack: Stack, kafka_bootstrap: str
) -> None:
    calls_before = mock_calls(stack)
    limits = httpx.Limits(max_connections=1_000, max_keepalive_connections=1_000)
    async with httpx.AsyncClient(base_url=stack.url, timeout=120, limits=limits) as client:
        bodies = [
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]}
            for i in range(1_000)
        ]
        responses = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=b) for b in bodies)
        )
    assert Counter(r.status_code for r in responses) == {200: 1_000}
    ids = {r.headers["x-tollway-request-id"] for r in responses}
    assert len(ids) == 1_000
    counts = await results_per_id(kafka_bootstrap, ids, timeout_s=60)
    assert set(counts) == ids
    assert all(n == 1 for n in counts.values()), "a request produced two results"
    assert mock_calls(stack) - calls_before == 1_000  # one provider call each, no more


async def test_sigkill_of_a_router_mid_run_loses_no_accepted_request(
    stack: Stack, kafka_bootstrap: str
) -> None:
    accepted: list[str] = []
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=stack.url, timeout=30, limits=limits) as client:

        async def submit(i: int) -> None:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"k{i}"}]}
            try:
                response = await client.post("/v1/async/chat/completions", json=body)
            except httpx.TransportError:
                return  # no answer: not accepted, nothing was promised
            if response.status_code == 202:
                accepted.append(response.json()["id"])

        tasks: list[asyncio.Task[None]] = []
        rate_per_s, duration_s = 400, 5.0
        start = time.monotonic()
        killed = False
        for i in range(int(rate_per_s * duration_s)):
            await asyncio.sleep(max(0.0, start + i / rate_per_s - time.monotonic()))
            tasks.append(asyncio.create_task(submit(i)))
            if not killed and time.monotonic() - start > duration_s / 2:
                stack.get("router-1").signal(signal.SIGKILL)
                killed = True
        await asyncio.gather(*tasks)

        assert killed
        submitted = int(rate_per_s * duration_s)
        # The invariant is about what was accepted; a request refused under load (not 202)
        # was never promised anything. On an idle machine all are accepted.
        assert len(accepted) >= 0.95 * submitted, f"only {len(accepted)}/{submitted} accepted"
        ids = set(accepted)
        counts = await results_per_id(kafka_bootstrap, ids, timeout_s=90)
        missing = ids - set(counts)
        assert not missing, f"{len(missing)} accepted requests have no result"
        duplicates = sum(n - 1 for n in counts.values())
        print(
            f"\nrouter SIGKILL: {len(ids)} accepted, 0 lost, {duplicates} duplicate results "
            "(re-executed after the kill; every reader keeps the first)"
        )
    # A new client: the submitting one's connections sat idle while the results were read.
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as poller:
        sample = list(ids)[:50]
        polled = await asyncio.gather(*(poller.get(f"/v1/async/requests/{i}") for i in sample))
        assert all(p.json()["status"] == "succeeded" for p in polled)
    stack.restart("router-1")


def test_the_openai_sdk_streams_through_kafka(openai_client: OpenAI) -> None:
    client = openai_client
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


# --- /v1/embeddings (the same stack: no second start-up) ------------------------------

SMALL_NANO_USD_PER_TOKEN = 20
"""text-embedding-3-small: USD 0.02 per 1M input tokens (workers/cost/catalogue.json)."""


def test_the_openai_sdk_creates_embeddings_through_kafka(openai_client: OpenAI) -> None:
    client = openai_client
    # The SDK asks for base64 unless told otherwise and decodes it: the default path.
    raw = client.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=["hello", "world", "hello"]
    )
    created = raw.parse()
    assert created.object == "list"
    assert [e.index for e in created.data] == [0, 1, 2]
    assert all(len(e.embedding) == 1536 for e in created.data)
    assert created.data[0].embedding == created.data[2].embedding  # deterministic mock
    assert created.data[0].embedding != created.data[1].embedding
    assert created.usage.prompt_tokens == created.usage.total_tokens == 6
    assert raw.headers["x-tollway-request-id"].startswith("req_")
    assert raw.headers["x-tollway-deployment"] == "mock"

    as_float = client.embeddings.create(
        model="text-embedding-3-small", input="hello", encoding_format="float"
    )
    assert as_float.data[0].embedding == created.data[0].embedding  # float32 both ways

    short = client.embeddings.create(
        model="text-embedding-3-large", input=[[1, 2, 3]], dimensions=64
    )
    assert len(short.data[0].embedding) == 64
    assert short.usage.prompt_tokens == 3
    assert "text-embedding-3-small" in {m.id for m in client.models.list().data}


def test_limits_are_clear_400s_and_the_largest_answer_crosses_kafka(openai_client: OpenAI) -> None:
    client = openai_client
    with pytest.raises(openai.BadRequestError) as too_many:
        client.embeddings.create(model="text-embedding-3-small", input=["x"] * 2049, dimensions=4)
    assert "at most 2048" in str(too_many.value)
    with pytest.raises(openai.BadRequestError) as too_large:
        client.embeddings.create(model="text-embedding-3-small", input=["x"] * 500)
    assert too_large.value.code == "response_too_large"
    # ~990 KB of base64 vectors: the biggest result the default Kafka record limit carries.
    big = client.embeddings.create(
        model="text-embedding-3-small", input=[f"t{i}" for i in range(120)]
    )
    assert len(big.data) == 120
    assert all(len(e.embedding) == 1536 for e in big.data)


async def test_the_call_is_priced_at_the_input_rate(stack: Stack, kafka_bootstrap: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="any", max_retries=0)
    raw = await client.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=["priced " * 25]
    )
    request_id = raw.headers["x-tollway-request-id"]
    prompt_tokens = raw.parse().usage.prompt_tokens
    await client.close()

    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topics.USAGE.name, p) for p in range(topics.USAGE.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        record = None
        deadline = time.monotonic() + 30
        while record is None and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for message in records:
                    usage = codec.decode("usage", message.value)
                    if usage["request_id"] == request_id:
                        record = usage
    finally:
        await consumer.stop()
    assert record is not None, "no priced usage record for the embeddings call"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (prompt_tokens, 0)
    assert record["cost_status"] == "priced"
    assert record["cost_nano_usd"] == prompt_tokens * SMALL_NANO_USD_PER_TOKEN


# --- tool calls with both SDKs (the mock calls the first tool until it sees a result) ----

WEATHER_FUNCTION = {
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def test_the_openai_sdk_completes_a_tool_call_round_trip_through_kafka(
    openai_client: OpenAI,
) -> None:
    client = openai_client
    tools: list[Any] = [{"type": "function", "function": WEATHER_FUNCTION}]
    question: Any = {"role": "user", "content": "Weather in Paris?"}
    first = client.chat.completions.create(model="gpt-4o-mini", messages=[question], tools=tools)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city":"mock"}')
    second = client.chat.completions.create(
        model="gpt-4o-mini",
        tools=tools,
        messages=[
            question,
            choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content

    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[question], tools=tools, stream=True
    )
    deltas = [c.choices[0].delta for c in stream if c.choices]
    fragments = [t for d in deltas for t in (d.tool_calls or [])]
    assert fragments[0].function is not None
    assert fragments[0].function.name == "get_weather"
    assert "".join((f.function.arguments or "") for f in fragments if f.function) == (
        '{"city":"mock"}'
    )


def test_the_anthropic_sdk_completes_a_tool_use_through_kafka(stack: Stack) -> None:
    with anthropic.Anthropic(base_url=stack.url, api_key="any", max_retries=0) as client:
        _anthropic_tool_use_round_trip(client)


def _anthropic_tool_use_round_trip(client: anthropic.Anthropic) -> None:
    tool: Any = {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": WEATHER_FUNCTION["parameters"],
    }
    question: Any = {"role": "user", "content": "Weather in Paris?"}
    first = client.messages.create(
        model="gpt-4o-mini", max_tokens=64, messages=[question], tools=[tool]
    )
    assert first.stop_reason == "tool_use"
    tool_use = first.content[0]
    assert tool_use.type == "tool_use"
    assert (tool_use.name, tool_use.input) == ("get_weather", {"city": "mock"})
    result: Any = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "sunny"}],
    }
    second = client.messages.create(
        model="gpt-4o-mini",
        max_tokens=64,
        tools=[tool],
        messages=[question, {"role": "assistant", "content": first.content}, result],
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text"

    with client.messages.stream(
        model="gpt-4o-mini", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
    ) as streamed:
        text = "".join(streamed.text_stream)
    assert text
