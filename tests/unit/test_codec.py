"""schemas/codec.py: Avro records framed with a schema id.

Round trips, schema evolution (an older writer schema resolved against the latest
reader), and the guarantee the router's dead-letter path relies on: any input that is
not a well-formed record of the requested type raises `CorruptRecord` and nothing else.
"""

from __future__ import annotations

import copy
import io
import json
import struct
from importlib import resources
from typing import Any, Final

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import codec
from schemas.codec import MAGIC, SCHEMA_IDS, RecordName, SchemaRegistry
from schemas.errors import CorruptRecord
from schemas.records import Attempt, Mode, RequestEnvelope, Result

ENVELOPE: Final[RequestEnvelope] = {
    "request_id": "req_0123456789abcdef01234567fedcba9876543210",
    "team_id": "default",
    "key_id": "key_1",
    "mode": "sync",
    "endpoint": "/v1/chat/completions",
    "model": "gpt-4o-mini",
    "body": b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}',
    "received_at_ms": 1_700_000_000_000,
    "deadline_ms": 1_700_000_600_000,
    "ingress_id": "ingress-1",
    "reply_partition": 3,
    "metadata": {"trace": "abc", "user": "u-1"},
}
RESULT: Final[Result] = {
    "request_id": ENVELOPE["request_id"],
    "team_id": "default",
    "key_id": None,
    "mode": "async",
    "execution_id": "0123456789abcdef",
    "status": "succeeded",
    "http_status": 200,
    "body": b'{"id":"chatcmpl-1"}',
    "error_type": None,
    "requested_model": "gpt-4o-mini",
    "served_model": "gpt-4o-mini-2024-07-18",
    "provider": "openai",
    "deployment": "openai",
    "attempts": 2,
    "prompt_tokens": 12,
    "completion_tokens": 34,
    "cached_tokens": 5,
    "reasoning_tokens": 0,
    "cache_write_tokens": 0,
    "received_at_ms": 1_700_000_000_000,
    "finished_at_ms": 1_700_000_000_250,
    "metadata": {},
}
ATTEMPT: Final[Attempt] = {
    "request_id": ENVELOPE["request_id"],
    "attempt_id": "0123456789abcdef.1",
    "attempt": 1,
    "team_id": "default",
    "key_id": None,
    "mode": "batch",
    "deployment": "openai",
    "provider": "openai",
    "model": "gpt-4o-mini",
    "started_at_ms": 1_700_000_000_010,
    "latency_ms": 123.5,
    "outcome": "error",
    "http_status": 429,
    "error_type": "ProviderRateLimited",
    "error_code": "rate_limit_exceeded",
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "cached_tokens": 0,
    "reasoning_tokens": 0,
    "cache_write_tokens": 0,
    "router_id": "router-1",
}
SAMPLES: Final[dict[RecordName, RequestEnvelope | Result | Attempt]] = {
    "request": ENVELOPE,
    "result": RESULT,
    "attempt": ATTEMPT,
}
NAMES: Final[tuple[RecordName, ...]] = ("request", "result", "attempt")
MODES: Final[tuple[Mode, ...]] = ("sync", "async", "batch")


def _schema_json(name: RecordName) -> dict[str, Any]:
    _, filename = max(
        (schema_id, file) for schema_id, (record, file) in SCHEMA_IDS.items() if record == name
    )
    text = (resources.files("schemas") / "avro" / filename).read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _frame(schema_id: int, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    """What an older Tollway wrote: magic, schema id, schemaless Avro body."""
    buf = io.BytesIO()
    buf.write(MAGIC + struct.pack(">I", schema_id))
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


# --- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_round_trip(name: RecordName) -> None:
    record = SAMPLES[name]
    data = codec.encode(name, record)
    assert data[:1] == MAGIC
    assert struct.unpack(">I", data[1:5])[0] == codec.REGISTRY.latest(name).schema_id
    assert codec.decode(name, data) == record


def test_schema_ids_are_unique_per_file() -> None:
    files = [file for _, file in SCHEMA_IDS.values()]
    assert len(files) == len(set(files))
    assert {name for name, _ in SCHEMA_IDS.values()} >= set(NAMES)


_text = st.text(st.characters(codec="utf-8"), max_size=40)  # Avro strings are UTF-8
_long = st.integers(-(2**63), 2**63 - 1)


@given(
    request_id=_text,
    key_id=st.none() | _text,
    mode=st.sampled_from(MODES),
    body=st.binary(max_size=200),
    received_at_ms=_long,
    deadline_ms=_long,
    reply_partition=st.none() | st.integers(-(2**31), 2**31 - 1),
    metadata=st.dictionaries(_text, _text, max_size=5),
)
def test_request_round_trip_property(
    request_id: str,
    key_id: str | None,
    mode: Mode,
    body: bytes,
    received_at_ms: int,
    deadline_ms: int,
    reply_partition: int | None,
    metadata: dict[str, str],
) -> None:
    envelope: RequestEnvelope = {
        **ENVELOPE,
        "request_id": request_id,
        "key_id": key_id,
        "mode": mode,
        "body": body,
        "received_at_ms": received_at_ms,
        "deadline_ms": deadline_ms,
        "reply_partition": reply_partition,
        "metadata": metadata,
    }
    assert codec.decode("request", codec.encode("request", envelope)) == envelope


# --- schema evolution -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "dropped", "defaults"),
    [
        ("request", ("key_id", "metadata"), {"key_id": None, "metadata": {}}),
        (
            "result",
            ("key_id", "metadata", "cached_tokens"),
            {"key_id": None, "metadata": {}, "cached_tokens": 0},
        ),
        (
            "attempt",
            ("key_id", "cached_tokens", "reasoning_tokens", "error_code"),
            {"key_id": None, "cached_tokens": 0, "reasoning_tokens": 0, "error_code": None},
        ),
    ],
)
def test_older_writer_schema_is_read_with_defaults(
    name: RecordName, dropped: tuple[str, ...], defaults: dict[str, Any]
) -> None:
    current = _schema_json(name)
    old = copy.deepcopy(current)
    old["fields"] = [f for f in old["fields"] if f["name"] not in dropped]
    registry = SchemaRegistry()
    registry.register(10, name, old)
    registry.register(11, name, current)
    old_record = {k: v for k, v in SAMPLES[name].items() if k not in dropped}

    decoded = codec.decode(name, _frame(10, old, old_record), registry)

    assert decoded == {**SAMPLES[name], **defaults}


@pytest.mark.parametrize("name", ["result", "attempt"])
def test_records_written_with_the_shipped_v1_schemas_read_as_v2(name: RecordName) -> None:
    """The real upgrade: v1 (ids 2 and 3) had no cache_write_tokens; v2 reads it as 0."""
    v1_id = next(i for i, (rec, file) in SCHEMA_IDS.items() if rec == name and ".v1." in file)
    v1 = json.loads((resources.files("schemas") / "avro" / f"{name}.v1.avsc").read_text("utf-8"))
    old_record = {k: v for k, v in SAMPLES[name].items() if k != "cache_write_tokens"}
    decoded = codec.decode(name, _frame(v1_id, v1, old_record))
    assert decoded == {**old_record, "cache_write_tokens": 0}


def test_stream_chunks_written_before_v2_read_as_not_from_the_cache() -> None:
    v1 = json.loads(
        (resources.files("schemas") / "avro" / "stream_chunk.v1.avsc").read_text("utf-8")
    )
    old_record = {"request_id": "r", "execution_id": "e", "seq": 0, "data": b"{}"}
    decoded = codec.decode("stream_chunk", _frame(9, v1, old_record))
    assert decoded == {**old_record, "cache": None}


def test_registry_latest_is_the_highest_id_whatever_the_order() -> None:
    registry = SchemaRegistry()
    registry.register(11, "request", _schema_json("request"))
    registry.register(10, "request", _schema_json("request"))
    assert registry.latest("request").schema_id == 11
    by_id = registry.by_id(10)
    assert by_id is not None
    assert by_id.schema_id == 10
    assert registry.by_id(12) is None


def test_registry_refuses_a_reused_id() -> None:
    registry = SchemaRegistry()
    registry.register(1, "request", _schema_json("request"))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(1, "result", _schema_json("result"))


# --- corrupt input --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "read"),
    [(w, r) for w in NAMES for r in NAMES if w != r],
)
def test_another_record_types_schema_id_is_corrupt(written: RecordName, read: RecordName) -> None:
    data = codec.encode(written, SAMPLES[written])
    with pytest.raises(CorruptRecord, match=f"is a {written} schema"):
        codec.decode(read, data)


_VALID = codec.encode("request", ENVELOPE)


CORRUPT: Final = {
    "empty": (b"", "shorter than the header"),
    "short-header": (b"\x00\x00\x00\x01", "shorter than the header"),
    "magic-01": (b"\x01" + _VALID[1:], "bad magic byte"),
    "json": (b"{" + _VALID[1:], "bad magic byte"),
    "unknown-id": (MAGIC + struct.pack(">I", 99) + _VALID[5:], "unknown schema id 99"),
    "id-zero": (MAGIC + struct.pack(">I", 0) + _VALID[5:], "unknown schema id 0"),
    "header-only": (_VALID[:5], "undecodable body"),
    "truncated-by-one": (_VALID[:-1], "undecodable body"),
    "truncated-half": (_VALID[: len(_VALID) // 2], "undecodable body"),
    "one-trailing-byte": (_VALID + b"\x00", "1 trailing bytes"),
    "trailing-garbage": (_VALID + b"garbage", "7 trailing bytes"),
    "varint-overflow": (_VALID[:5] + b"\xff" * 16, "undecodable body"),
    "negative-length": (_VALID[:5] + b"\x01", "undecodable body"),  # string length -1
    "bad-utf8": (_VALID[:5] + b"\x06\xff\xfe\xfd", "undecodable body"),  # invalid UTF-8
}


@pytest.mark.parametrize(("data", "reason"), list(CORRUPT.values()), ids=list(CORRUPT))
def test_corrupt_input(data: bytes, reason: str) -> None:
    with pytest.raises(CorruptRecord, match=reason):
        codec.decode("request", data)


def test_corrupt_record_is_a_dead_letter_chained_to_its_cause() -> None:
    with pytest.raises(CorruptRecord) as info:
        codec.decode("request", _VALID[:-1])
    assert info.value.__cause__ is not None


@st.composite
def _hostile(draw: st.DrawFn) -> bytes:
    """Arbitrary bytes, bytes behind a valid header, and valid records with bytes flipped."""
    kind = draw(st.sampled_from(["raw", "framed", "mutated"]))
    if kind == "raw":
        return draw(st.binary(max_size=300))
    if kind == "framed":
        schema_id = draw(st.sampled_from(sorted(SCHEMA_IDS)))
        return MAGIC + struct.pack(">I", schema_id) + draw(st.binary(max_size=300))
    name = draw(st.sampled_from(NAMES))
    data = bytearray(codec.encode(name, SAMPLES[name]))
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.integers(5, len(data) - 1))
        data[index] = draw(st.integers(0, 255))
    cut = draw(st.integers(5, len(data)))
    return bytes(data[:cut])


@given(name=st.sampled_from(NAMES), data=_hostile())
def test_arbitrary_bytes_never_raise_anything_but_corrupt_record(
    name: RecordName, data: bytes
) -> None:
    try:
        record = codec.decode(name, data)
    except CorruptRecord:
        return
    assert isinstance(record, dict)
