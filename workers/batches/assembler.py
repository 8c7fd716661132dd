"""Collect each line's outcome into spool segments, then write the output and error files.

    add_result / add_error   -> in memory, deduplicated by line (the `done` bitmap)
    take() -> Flush          -> the consumer writes `segment_key(batch, n, owner)`
                                atomically, then checkpoints the state (counts, bitmap,
                                segments and their owners, results offsets), then
                                nothing else needs committing
    build_files(...)         -> output/error JSONL, one line per request, by line order

A result that arrives twice (a router redelivery, or a replay of tollway.results
after a restart from the last checkpoint) finds its bit already set and is dropped,
so no output line is ever duplicated. A crash after a segment was written but
before its checkpoint leaves that segment orphaned; nothing reads it.

Each owner of a batch (one `BatchWorker._own`) writes under its own random token, and
the state names the token of every segment (`segment_owners`). So a deposed owner
that still writes (a worker frozen past its session, or a write that outlives its
cancel) can only add orphans, never replace a segment the state counts: the state,
its bitmap and the segments it names always agree. Decision 0006 (spool section) has the history.

Segment format, one line per outcome: `<line>\\t<o|e>\\t<output JSON>\\n`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final, Literal

import orjson

from schemas.records import BatchState, Result, SegmentRun
from workers.batches.state import bumped, mark_done

Kind = Literal["o", "e"]
REQUEST_ID_PREFIX: Final = "breq_"
CANCELLED_ERROR_TYPE: Final = "BatchCancelled"
"""`error_type` of the Result a router gives a line of a cancelled batch without running
it (workers/router/cancelled.py): written like the lines the worker cancels itself."""
META_LINE: Final = "tollway.batch_line"


def request_id_for(batch_id: str, line: int) -> str:
    """Deterministic: re-expanding after a crash publishes the same ids (no new work)."""
    return f"{REQUEST_ID_PREFIX}{batch_id.removeprefix('batch_')}_{line}"


def parse_request_id(request_id: str) -> tuple[str, int] | None:
    """(batch id, line) of a batch request id, None for any other id."""
    if not request_id.startswith(REQUEST_ID_PREFIX):
        return None
    hex_id, _, line = request_id[len(REQUEST_ID_PREFIX) :].partition("_")
    if not line.isdigit() or len(hex_id) != 32:
        return None
    return f"batch_{hex_id}", int(line)


def segment_key(batch_id: str, index: int, owner: str) -> str:
    """The store key of spool segment `index`; `owner` "" for segments written before v2."""
    suffix = f"-{owner}" if owner else ""
    return f"batches/{batch_id}/segment-{index:06d}{suffix}.tsv"


def segment_keys(state: BatchState) -> list[str]:
    """The keys of the state's segments 0..segments-1, each under the owner that wrote it."""
    runs = state["segment_owners"]
    keys: list[str] = []
    run = -1
    for index in range(state["segments"]):
        while run + 1 < len(runs) and runs[run + 1]["first_segment"] <= index:
            run += 1
        keys.append(segment_key(state["batch_id"], index, runs[run]["owner"] if run >= 0 else ""))
    return keys


def next_segment_key(state: BatchState, owner: str) -> str:
    """Where `owner` writes the state's next segment (index `state['segments']`)."""
    return segment_key(state["batch_id"], state["segments"], owner)


def result_line(line: int, custom_id: str, result: Result) -> tuple[Kind, bytes]:
    """OpenAI's output line for a finished request: succeeded -> output file, else errors."""
    out = {
        "id": result["request_id"],
        "custom_id": custom_id,
        "response": {
            "status_code": result["http_status"],
            "request_id": result["request_id"],
            "body": orjson.Fragment(result["body"]) if result["body"] else None,
        },
        "error": None,
    }
    kind: Kind = "o" if result["status"] == "succeeded" else "e"
    return kind, orjson.dumps(out)


def error_line(
    batch_id: str, line: int, custom_id: str | None, code: str, message: str
) -> tuple[Kind, bytes]:
    """A line that never produced a response: invalid, expired or cancelled."""
    out = {
        "id": request_id_for(batch_id, line),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": message, "line": line},
    }
    return "e", orjson.dumps(out)


@dataclass(slots=True)
class Flush:
    """Outcomes taken from an `Assembly`, to be written as one segment and checkpointed."""

    lines: list[bytes] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    invalid: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def payload(self) -> bytes:
        return b"".join(self.lines)

    def apply(self, state: BatchState, bitmap: bytes, now_ms: int, owner: str) -> BatchState:
        """`state` after this flush was written by `owner` at `next_segment_key(state, owner)`."""
        new = bumped(state, now_ms)
        new["completed"] += self.completed
        new["failed"] += self.failed
        new["invalid"] += self.invalid
        new["prompt_tokens"] += self.prompt_tokens
        new["completion_tokens"] += self.completion_tokens
        new["cached_tokens"] += self.cached_tokens
        new["reasoning_tokens"] += self.reasoning_tokens
        new["done"] = bitmap
        if self.lines:
            runs = state["segment_owners"]
            if not runs or runs[-1]["owner"] != owner:
                run: SegmentRun = {"owner": owner, "first_segment": state["segments"]}
                new["segment_owners"] = [*runs, run]
            new["segments"] += 1
        return new


class Assembly:
    """One batch's outcomes since its last checkpoint, deduplicated against all before."""

    def __init__(self, state: BatchState) -> None:
        self.batch_id = state["batch_id"]
        self.bitmap = bytearray(state["done"])
        self._flush = Flush()

    @property
    def pending(self) -> int:
        return len(self._flush.lines)

    def add_result(self, line: int, custom_id: str, result: Result) -> bool:
        if result["error_type"] == CANCELLED_ERROR_TYPE:  # skipped by a router: never ran
            message = "The batch was cancelled before this request ran."
            return self.add_error(line, custom_id, "batch_cancelled", message, invalid=False)
        if not mark_done(self.bitmap, line):
            return False
        kind, data = result_line(line, custom_id, result)
        self._append(line, kind, data)
        flush = self._flush
        if kind == "o":
            flush.completed += 1
        else:
            flush.failed += 1
        flush.prompt_tokens += result["prompt_tokens"]
        flush.completion_tokens += result["completion_tokens"]
        flush.cached_tokens += result["cached_tokens"]
        flush.reasoning_tokens += result["reasoning_tokens"]
        return True

    def add_error(
        self, line: int, custom_id: str | None, code: str, message: str, *, invalid: bool
    ) -> bool:
        if not mark_done(self.bitmap, line):
            return False
        kind, data = error_line(self.batch_id, line, custom_id, code, message)
        self._append(line, kind, data)
        self._flush.failed += 1
        if invalid:
            self._flush.invalid += 1
        return True

    def _append(self, line: int, kind: Kind, data: bytes) -> None:
        self._flush.lines.append(b"%d\t%s\t%s\n" % (line, kind.encode(), data))

    def take(self) -> tuple[Flush, bytes]:
        """The pending outcomes and the bitmap that includes them; the next start empty."""
        flush, self._flush = self._flush, Flush()
        return flush, bytes(self.bitmap)


def read_segments(segments: Iterable[bytes]) -> Iterator[tuple[int, Kind, bytes]]:
    for data in segments:
        for row in data.splitlines():
            line, kind, json_line = row.split(b"\t", 2)
            yield int(line), "o" if kind == b"o" else "e", json_line


def build_files(segments: Iterable[bytes]) -> tuple[bytes, bytes, int, int]:
    """(output JSONL, error JSONL, output lines, error lines) in line order, first per line."""
    by_line: dict[int, tuple[Kind, bytes]] = {}
    for line, kind, data in read_segments(segments):
        by_line.setdefault(line, (kind, data))
    output: list[bytes] = []
    errors: list[bytes] = []
    for line in sorted(by_line):
        kind, data = by_line[line]
        (output if kind == "o" else errors).append(data + b"\n")
    return b"".join(output), b"".join(errors), len(output), len(errors)
