"""workers/batches/expander.py with fakes: ids are deterministic, a resume re-publishes
nothing before its checkpoint, bad lines go to the error spool, limits fail the batch."""

from __future__ import annotations

import orjson
import pytest

from schemas.records import BatchState, RequestEnvelope
from workers.batches.assembler import Assembly, request_id_for
from workers.batches.expander import InputRefused, Progress, expand
from workers.batches.jsonl import LineParser
from workers.batches.progress import Sample, progress_line
from workers.batches.state import new_batch


def line(i: int) -> bytes:
    return orjson.dumps(
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": str(i)}]},
        }
    )


def state() -> BatchState:
    s = new_batch(
        batch_id="batch_" + "1" * 32,
        team_id="t1",
        input_file_id="file-123456789",
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={},
        now_ms=1_000,
    )
    s["status"] = "in_progress"
    return s


class Crash(Exception):
    pass


async def run(
    s: BatchState, data: bytes, *, crash_after: int | None = None
) -> tuple[list[RequestEnvelope], list[Progress], Assembly]:
    published: list[RequestEnvelope] = []
    checkpoints: list[Progress] = []
    assembly = Assembly(s)

    async def publish(envelopes: list[RequestEnvelope]) -> None:
        published.extend(envelopes)

    async def checkpoint(progress: Progress) -> None:
        checkpoints.append(progress)
        if crash_after is not None and len(checkpoints) >= crash_after:
            raise Crash

    await expand(
        s,
        iter([data[i : i + 97] for i in range(0, len(data), 97)]),
        parser=LineParser("/v1/chat/completions", lambda _: True),
        assembly=assembly,
        publish=publish,
        checkpoint=checkpoint,
        cancelled=lambda: False,
        now_ms=lambda: 5_000,
        checkpoint_lines=10,
    )
    return published, checkpoints, assembly


async def test_every_valid_line_becomes_one_batch_envelope() -> None:
    data = b"\n".join([line(1), b"{oops", line(2), b"", line(2)[:-1] + b"}"]) + b"\n"
    published, checkpoints, assembly = await run(state(), data)
    assert [e["request_id"] for e in published] == [
        request_id_for(state()["batch_id"], 1),
        request_id_for(state()["batch_id"], 3),
    ]
    first = published[0]
    assert first["mode"] == "batch"
    assert first["team_id"] == "t1"
    assert first["deadline_ms"] == state()["expires_at_ms"]
    assert first["metadata"]["tollway.custom_id"] == "c1"
    assert checkpoints[-1] == Progress(5, 4, "gpt-4o-mini", expanded=True)
    flush, _ = assembly.take()
    assert (flush.failed, flush.invalid) == (2, 2)  # bad JSON and the duplicate custom_id


async def test_a_resume_publishes_only_after_the_checkpoint_with_the_same_ids() -> None:
    data = b"\n".join(line(i) for i in range(1, 36)) + b"\n"
    s = state()
    with pytest.raises(Crash):
        await run(s, data, crash_after=2)
    s["enqueued"] = 20  # the second checkpoint (after line 20) was written
    again, checkpoints, _ = await run(s, data)
    assert [e["metadata"]["tollway.batch_line"] for e in again] == [str(i) for i in range(21, 36)]
    full, _, _ = await run(state(), data)
    assert {e["request_id"] for e in again} <= {e["request_id"] for e in full}
    assert checkpoints[-1].total == 35


async def test_more_than_the_request_limit_fails_the_whole_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("workers.batches.expander.MAX_REQUESTS", 3)
    data = b"\n".join(line(i) for i in range(1, 5)) + b"\n"
    with pytest.raises(InputRefused) as refused:
        await run(state(), data)
    assert refused.value.code == "too_many_requests"


def test_progress_line_shows_counts_rate_and_eta() -> None:
    batch = {
        "id": "batch_1",
        "status": "in_progress",
        "request_counts": {"total": 50_000, "completed": 20_990, "failed": 10},
    }
    line_ = progress_line(batch, Sample(at_s=100.0, done=1_000), now_s=120.0)
    assert line_ == (
        "batch_1 in_progress  21,000/50,000 (20,990 ok, 10 failed)  1,000/s  ETA 0:00:29"
    )
    assert "ETA" not in progress_line(batch, None, 120.0)
