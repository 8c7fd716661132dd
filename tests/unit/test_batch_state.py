"""workers/batches/state.py and assembler.py: the state machine, counts, dedup, output files."""

from __future__ import annotations

import io
import itertools
import json
import struct
from importlib import resources

import fastavro
import orjson
import pytest

from schemas import codec
from schemas.records import BatchState, BatchStatus, Result
from schemas.settings import KafkaSettings
from tests.integration.kafka_io import envelope
from workers.batches.assembler import (
    Assembly,
    build_files,
    next_segment_key,
    parse_request_id,
    request_id_for,
    segment_key,
    segment_keys,
)
from workers.batches.state import (
    TRANSITIONS,
    InvalidMetadata,
    InvalidTransition,
    all_done,
    is_done,
    mark_done,
    new_batch,
    to_openai,
    transition,
    validate_metadata,
)
from workers.router.cancelled import CancelledBatches

BATCH_ID = "batch_" + "ab" * 16
NOW = 1_700_000_000_000
STATUSES: list[BatchStatus] = list(TRANSITIONS)


def batch() -> BatchState:
    return new_batch(
        batch_id=BATCH_ID,
        team_id="default",
        input_file_id="file-0123456789",
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "nightly"},
        now_ms=NOW,
    )


def result(line: int, status: str = "succeeded", http_status: int = 200) -> Result:
    body = (
        b'{"id":"chatcmpl-1","object":"chat.completion"}'
        if status == "succeeded"
        else b'{"error":{"message":"boom","type":"upstream_error","param":null,"code":null}}'
    )
    return {
        "request_id": request_id_for(BATCH_ID, line),
        "team_id": "default",
        "key_id": None,
        "mode": "batch",
        "execution_id": "e1",
        "status": status,  # type: ignore[typeddict-item]
        "http_status": http_status,
        "body": body,
        "error_type": None,
        "requested_model": "gpt-4o-mini",
        "served_model": "gpt-4o-mini",
        "provider": "mock",
        "deployment": "mock",
        "attempts": 1,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cached_tokens": 1,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "received_at_ms": NOW,
        "finished_at_ms": NOW,
        "metadata": {},
    }


# --- state machine -----------------------------------------------------------------------

ALLOWED = {
    ("validating", "in_progress"),
    ("validating", "failed"),
    ("validating", "expired"),
    ("validating", "cancelling"),
    ("in_progress", "finalizing"),
    ("in_progress", "failed"),
    ("in_progress", "expired"),
    ("in_progress", "cancelling"),
    ("finalizing", "completed"),
    ("finalizing", "failed"),
    ("cancelling", "cancelled"),
}


@pytest.mark.parametrize(("start", "to"), list(itertools.product(STATUSES, STATUSES)))
def test_transition_table(start: BatchStatus, to: BatchStatus) -> None:
    state = batch()
    state["status"] = start
    if (start, to) in ALLOWED:
        moved = transition(state, to, NOW + 5_000)
        assert moved["status"] == to
        assert moved["version"] == state["version"] + 1
        assert to_openai(moved)[f"{to}_at"] == NOW // 1000 + 5
        assert state["status"] == start  # the input is not mutated
    else:
        with pytest.raises(InvalidTransition):
            transition(state, to, NOW)


def test_new_batch_is_an_openai_batch_object() -> None:
    from openai.types import Batch

    shown = Batch.model_validate(to_openai(batch()))
    assert shown.status == "validating"
    assert shown.expires_at == NOW // 1000 + 24 * 3600
    assert shown.request_counts is not None
    assert shown.request_counts.total == 0
    assert shown.metadata == {"job": "nightly"}


def test_state_round_trips_through_the_codec() -> None:
    state = batch()
    state["done"] = b"\x05"
    state["results_offsets"] = {"0": 12}
    state["errors"] = [{"code": "x", "message": "y", "line": None, "param": None}]
    assert codec.decode("batch_state", codec.encode("batch_state", state)) == state


@pytest.mark.parametrize(
    "metadata",
    [[1], {str(i): "v" for i in range(17)}, {"k" * 65: "v"}, {"k": "v" * 513}, {"k": 1}],
)
def test_metadata_rules(metadata: object) -> None:
    with pytest.raises(InvalidMetadata):
        validate_metadata(metadata)


def test_bitmap_marks_each_line_once() -> None:
    bitmap = bytearray()
    assert mark_done(bitmap, 1_000)
    assert not mark_done(bitmap, 1_000)
    assert is_done(bitmap, 1_000)
    assert not is_done(bitmap, 999)
    assert not is_done(b"", 5)


# --- assembly ----------------------------------------------------------------------------


def test_request_ids_are_deterministic_and_parse_back() -> None:
    assert request_id_for(BATCH_ID, 42) == request_id_for(BATCH_ID, 42)
    assert parse_request_id(request_id_for(BATCH_ID, 42)) == (BATCH_ID, 42)
    assert parse_request_id("req_0123") is None
    assert parse_request_id("breq_short_1") is None


def test_a_result_that_arrives_twice_is_one_line() -> None:
    state = batch()
    assembly = Assembly(state)
    assert assembly.add_result(1, "a", result(1))
    assert not assembly.add_result(1, "a", result(1))
    assert assembly.add_result(2, "b", result(2, "failed", 502))
    assert assembly.add_error(3, "c", "invalid_json", "bad", invalid=True)
    flush, bitmap = assembly.take()
    after = flush.apply(state, bitmap, NOW, "own1")
    assert (after["completed"], after["failed"], after["invalid"]) == (1, 2, 1)
    assert after["prompt_tokens"] == 20
    assert after["segments"] == 1
    # A restart from this checkpoint drops results that were already spooled.
    again = Assembly(after)
    assert not again.add_result(1, "a", result(1))
    assert again.take()[0].lines == []


def _flushed(state: BatchState, owner: str, line: int) -> BatchState:
    """`state` after `owner` spooled one more result (line `line`) as the next segment."""
    assembly = Assembly(state)
    assert assembly.add_result(line, f"c{line}", result(line))
    flush, bitmap = assembly.take()
    return flush.apply(state, bitmap, NOW, owner)


def test_each_owner_writes_segments_under_its_own_key_and_the_state_names_them() -> None:
    state = _flushed(_flushed(_flushed(batch(), "aaaa", 1), "aaaa", 2), "bbbb", 3)
    assert state["segments"] == 3
    assert state["segment_owners"] == [
        {"owner": "aaaa", "first_segment": 0},
        {"owner": "bbbb", "first_segment": 2},
    ]
    assert segment_keys(state) == [
        segment_key(BATCH_ID, 0, "aaaa"),
        segment_key(BATCH_ID, 1, "aaaa"),
        segment_key(BATCH_ID, 2, "bbbb"),
    ]
    assert segment_keys(state)[2] == f"batches/{BATCH_ID}/segment-000002-bbbb.tsv"
    # A checkpoint without outcomes writes no segment and names no owner.
    flush, bitmap = Assembly(state).take()
    assert flush.apply(state, bitmap, NOW, "cccc")["segment_owners"] == state["segment_owners"]


def test_a_deposed_owner_still_writing_cannot_replace_a_segment_the_new_owner_counts() -> None:
    """The CI loss: the old owner's write of segment k landed over the new owner's."""
    checkpoint = _flushed(batch(), "old0", 1)
    # Both resume from the same checkpoint: the old one was deposed mid-write.
    old_key = next_segment_key(checkpoint, "old0")
    new_state = _flushed(checkpoint, "new0", 2)
    assert old_key not in segment_keys(new_state)
    assert segment_keys(new_state) == [
        old_key.replace("000001", "000000"),
        segment_keys(new_state)[1],
    ]
    assert segment_keys(new_state)[1] == segment_key(BATCH_ID, 1, "new0")


def test_segments_written_before_owner_tokens_keep_their_keys() -> None:
    legacy = batch()
    legacy["segments"] = 2  # a v1 state: no segment_owners
    after = _flushed(legacy, "dddd", 5)
    assert segment_keys(after) == [
        f"batches/{BATCH_ID}/segment-000000.tsv",
        f"batches/{BATCH_ID}/segment-000001.tsv",
        segment_key(BATCH_ID, 2, "dddd"),
    ]


def test_a_state_written_with_schema_v1_reads_with_no_segment_owners() -> None:
    state = batch()
    v1_schema = json.loads(
        (resources.files("schemas") / "avro" / "batch_state.v1.avsc").read_text("utf-8")
    )
    buf = io.BytesIO()
    buf.write(codec.MAGIC + struct.pack(">I", 20))  # batch_state v1's id
    v1_record = {k: v for k, v in state.items() if k != "segment_owners"}
    fastavro.schemaless_writer(buf, fastavro.parse_schema(v1_schema), v1_record)
    assert codec.decode("batch_state", buf.getvalue()) == state


def test_output_and_error_files_are_keyed_by_custom_id_in_line_order() -> None:
    assembly = Assembly(batch())
    assembly.add_result(3, "c", result(3))
    assembly.add_error(2, None, "invalid_json", "bad", invalid=True)
    assembly.add_result(1, "a", result(1))
    first = assembly.take()[0].payload()
    assembly.add_result(4, "d", result(4, "failed", 429))
    second = assembly.take()[0].payload()
    # An orphaned segment re-written with the same line must not duplicate it.
    output, errors, n_out, n_err = build_files([first, second, first])
    assert (n_out, n_err) == (2, 2)
    out = [orjson.loads(x) for x in output.splitlines()]
    assert [o["custom_id"] for o in out] == ["a", "c"]
    assert out[0]["response"]["status_code"] == 200
    assert out[0]["response"]["body"]["object"] == "chat.completion"
    assert out[0]["error"] is None
    err = [orjson.loads(x) for x in errors.splitlines()]
    assert [e["custom_id"] for e in err] == [None, "d"]
    assert err[0]["error"]["code"] == "invalid_json"
    assert err[0]["response"] is None
    assert err[1]["response"]["status_code"] == 429


def test_all_done_needs_the_whole_file_expanded() -> None:
    state = batch()
    state["total"], state["completed"], state["failed"] = 3, 2, 1
    assert not all_done(state)
    state["expanded"] = True
    assert all_done(state)


def test_a_line_a_router_skipped_as_cancelled_is_written_like_a_cancelled_line() -> None:
    assembly = Assembly(batch())
    skipped = result(1, "failed", 409)
    skipped["error_type"] = "BatchCancelled"  # workers/router/cancelled.py
    assert assembly.add_result(1, "a", skipped)
    assert not assembly.add_result(1, "a", skipped)  # still one line per request
    assembly.add_error(2, "b", "batch_cancelled", "cancelled", invalid=False)
    _, errors, _, n_err = build_files([assembly.take()[0].payload()])
    assert n_err == 2
    lines = [orjson.loads(x) for x in errors.splitlines()]
    assert [(e["custom_id"], e["error"]["code"], e["response"]) for e in lines] == [
        ("a", "batch_cancelled", None),
        ("b", "batch_cancelled", None),
    ]


def test_routers_skip_only_lines_of_batches_cancelled() -> None:
    cancelled = CancelledBatches(KafkaSettings(bootstrap="unused:0"))
    cancelled.ids.add(BATCH_ID)
    line = envelope(mode="batch", metadata={"tollway.batch_id": BATCH_ID})
    assert cancelled.skips(line)
    assert not cancelled.skips(envelope(mode="batch", metadata={"tollway.batch_id": "batch_x"}))
    assert not cancelled.skips(envelope(mode="async", metadata={"tollway.batch_id": BATCH_ID}))
    assert cancelled.error().code == "batch_cancelled"
