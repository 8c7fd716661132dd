"""Records a router cannot read go to tollway.dead-letters, and the router keeps going.

test_router.py already sends plain garbage; here the harder cases, on both request
topics: a record written by an older producer (its request schema lacked the last
fields, framed with today's schema id), another record type's schema id, an id no
version ever had, a truncated and an over-long body, a tombstone. Each is a dead letter
naming why (headers), with its bytes kept; a readable envelope whose body is hostile
(not JSON, deep nesting) is answered with a failed result instead, and a good request
sent after all of them is answered as usual.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import time
from importlib import resources
from typing import Any, cast

import fastavro
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas import codec, topics
from schemas.records import Result
from tests.integration.kafka_io import TopicReader, envelope

pytestmark = pytest.mark.kafka

GROUP = "tollway-router-bad-records-it"


def _older_request(good: dict[str, Any], dropped: int) -> bytes:
    """`good` as a producer whose request schema lacked the last `dropped` fields wrote it,
    framed with today's request schema id (what a rolling upgrade gone wrong looks like)."""
    text = resources.files("schemas").joinpath("avro/request.v1.avsc").read_text()
    schema = json.loads(text)
    schema["fields"] = schema["fields"][:-dropped]
    record = {f["name"]: good[f["name"]] for f in schema["fields"]}
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    header = struct.pack(">cI", codec.MAGIC, codec.REGISTRY.latest("request").schema_id)
    return header + out.getvalue()


def _framed(schema_id: int, body: bytes) -> bytes:
    return struct.pack(">cI", codec.MAGIC, schema_id) + body


async def _dead_letters(
    bootstrap: str, want: set[str], timeout_s: float = 60.0
) -> dict[str, tuple[bytes | None, dict[str, bytes]]]:
    """key -> (value, headers) of dead letters with the wanted keys (from the current end)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: dict[str, tuple[bytes | None, dict[str, bytes]]] = {}
    try:
        tps = [
            TopicPartition(topics.DEAD_LETTERS.name, p)
            for p in range(topics.DEAD_LETTERS.partitions)
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        while want - set(found) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    key = (record.key or b"").decode()
                    if key in want:
                        found[key] = (record.value, dict(record.headers))
    finally:
        await consumer.stop()
    return found


async def test_unreadable_records_are_dead_letters_and_the_router_keeps_going(
    kafka_bootstrap: str, run_router: Any
) -> None:
    results = await TopicReader(kafka_bootstrap, topics.RESULTS.name).start()
    run_id = str(time.time_ns())
    good_before = envelope()
    good_after = envelope()
    not_json = envelope(body=b'{"model": "gpt-4o-mini", "messages": [\xff')
    deep = envelope(
        body=b'{"model": "gpt-4o-mini", "messages": ' + b"[" * 3000 + b"]" * 3000 + b"}"
    )
    encoded = codec.encode("request", good_before)
    result_of_another = codec.encode("result", cast(Result, _a_result(good_before)))
    bad: dict[str, bytes | None] = {
        "older-producer": _older_request(dict(good_before), dropped=2),
        "older-producer-one-field": _older_request(dict(good_before), dropped=1),
        "foreign-schema": result_of_another,
        "retired-id": _framed(65_000, encoded[5:]),
        "truncated": encoded[: len(encoded) // 2],
        "trailing-bytes": encoded + b"\x00\x02",
        "header-only": encoded[:5],
        "tombstone": None,
    }
    keyed = {f"{name}-{run_id}": value for name, value in bad.items()}
    run_router(GROUP)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all"
    )
    await producer.start()
    try:
        sends = [
            await producer.send(
                topics.REQUESTS_INTERACTIVE.name,
                codec.encode("request", good_before),
                key=good_before["request_id"].encode(),
            )
        ]
        for i, (key, value) in enumerate(keyed.items()):
            topic = topics.REQUESTS_BATCH.name if i % 2 else topics.REQUESTS_INTERACTIVE.name
            sends.append(await producer.send(topic, value, key=key.encode()))
        for hostile in (not_json, deep, good_after):  # after the bad ones, in this order
            record = codec.encode("request", hostile)
            request_key = hostile["request_id"].encode()
            sent = await producer.send(topics.REQUESTS_INTERACTIVE.name, record, key=request_key)
            sends.append(sent)
        await asyncio.gather(*sends)
    finally:
        await producer.stop()

    letters = await _dead_letters(kafka_bootstrap, set(keyed))
    ids = {e["request_id"] for e in (good_before, not_json, deep, good_after)}
    answered = dict(cast(list[tuple[str, Result]], await results.collect("result", ids)))
    await results.stop()

    assert set(letters) == set(keyed), sorted(set(keyed) - set(letters))
    for key, (value, headers) in letters.items():
        assert value == keyed[key], key  # the bytes are kept as they came, for a replay
        assert headers["tollway-error"] == b"CorruptRecord", key
        assert headers["tollway-reason"], key
        assert headers["tollway-source"].startswith(b"tollway.requests."), key
    assert set(answered) == ids
    assert answered[good_before["request_id"]]["status"] == "succeeded"
    assert answered[good_after["request_id"]]["status"] == "succeeded"
    for hostile in (not_json, deep):
        failed = answered[hostile["request_id"]]
        assert (failed["status"], failed["http_status"]) == ("failed", 400)
        assert failed["attempts"] == 0  # nothing was sent to a provider


def _a_result(source: Any) -> dict[str, Any]:
    return {
        "request_id": source["request_id"],
        "team_id": "default",
        "key_id": None,
        "mode": "async",
        "execution_id": "e",
        "status": "succeeded",
        "http_status": 200,
        "body": b"{}",
        "error_type": None,
        "requested_model": "gpt-4o-mini",
        "served_model": None,
        "provider": "openai",
        "deployment": "mock",
        "attempts": 1,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "received_at_ms": 1,
        "finished_at_ms": 2,
        "metadata": {},
    }
