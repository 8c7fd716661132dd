"""Expand a batch's input file into request envelopes on tollway.requests.batch.

    in:  the input file (file store), the batch's state (its resume point `enqueued`)
    out: RequestEnvelopes with mode "batch" (via `publish`), invalid lines into the
         batch's `Assembly` (error file), progress through `checkpoint`

Idempotent by construction: a line's request id is `request_id_for(batch, line)`,
so expanding again after a crash publishes the same ids, and lines at or before the
last checkpoint (`enqueued`) are not published again at all. Every line is still
parsed from the start, because duplicate custom_ids are refused against all
earlier lines. Kafka and the store are parameters: no I/O library is imported here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Final

from schemas.records import META_BATCH_ID, META_CUSTOM_ID, BatchState, RequestEnvelope
from workers.batches.assembler import (
    META_LINE,
    Assembly,
    request_id_for,
)
from workers.batches.jsonl import (
    MAX_REQUESTS,
    BatchLine,
    LineError,
    LineParser,
    LineTooLong,
    is_blank,
    split_lines,
)

CHECKPOINT_LINES: Final = 5_000
WORKER_INGRESS_ID: Final = "tollway-batches"


class InputRefused(Exception):
    """The whole input file is unusable (missing, too many requests): the batch fails."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Progress:
    """What a checkpoint of the expansion records in the batch state."""

    scanned_through_line: int
    total: int
    model: str | None
    expanded: bool


Publish = Callable[[list[RequestEnvelope]], Coroutine[Any, Any, None]]
Checkpoint = Callable[[Progress], Awaitable[None]]
Gate = Callable[[int, str | None], Awaitable[bool]]
"""Awaited before each group is published with (request lines enqueued so far, the
batch's model); may wait (budget pacing, workers/batches/budget.py); False stops."""


def count_requests(chunks: Iterator[bytes]) -> int:
    """Non-blank lines (the number of requests a file holds, valid or not)."""
    return sum(
        1 for _, raw in split_lines(chunks) if not (isinstance(raw, bytes) and is_blank(raw))
    )


def _request_lines(chunks: Iterator[bytes]) -> Iterator[tuple[int, bytes | LineTooLong]]:
    """The non-blank lines; `InputRefused` past `MAX_REQUESTS` of them."""
    count = 0
    for line_no, raw in split_lines(chunks):
        if isinstance(raw, bytes) and is_blank(raw):
            continue
        count += 1
        if count > MAX_REQUESTS:
            raise InputRefused(
                "too_many_requests", f"The input file has more than {MAX_REQUESTS} requests."
            )
        yield line_no, raw


def envelope_for(state: BatchState, parsed: BatchLine, now_ms: int) -> RequestEnvelope:
    return {
        "request_id": request_id_for(state["batch_id"], parsed.line),
        "team_id": state["team_id"],
        "key_id": None,
        "mode": "batch",
        "endpoint": state["endpoint"],
        "model": parsed.model,
        "body": parsed.body,
        "received_at_ms": now_ms,
        "deadline_ms": state["expires_at_ms"],
        "ingress_id": WORKER_INGRESS_ID,
        "reply_partition": None,
        "metadata": {
            META_BATCH_ID: state["batch_id"],
            META_CUSTOM_ID: parsed.custom_id,
            META_LINE: str(parsed.line),
        },
    }


async def expand(
    state: BatchState,
    chunks: Iterator[bytes],
    *,
    parser: LineParser,
    assembly: Assembly,
    publish: Publish,
    checkpoint: Checkpoint,
    cancelled: Callable[[], bool],
    now_ms: Callable[[], int],
    checkpoint_lines: int = CHECKPOINT_LINES,
    gate: Gate | None = None,
) -> bool:
    """Publish every valid line after the resume point; False if stopped by `cancelled`
    or by `gate`.

    Publishing overlaps parsing: one group of lines is in flight to Kafka while the
    next is parsed, and a checkpoint names a line only once every line up to it
    was acknowledged. With a `gate`, the previous group is settled before the gate is
    asked, so a paused batch has checkpointed everything it enqueued.
    """
    resume_after = state["enqueued"]
    total = 0
    model = state["model"]
    pending: list[RequestEnvelope] = []
    since_checkpoint = 0
    last_line = resume_after
    in_flight: tuple[asyncio.Task[None], Progress] | None = None

    async def settle() -> None:
        nonlocal in_flight
        if in_flight is not None:
            task, progress = in_flight
            in_flight = None
            await task
            await checkpoint(progress)

    async def send(progress: Progress) -> bool:
        """Publish `pending` (after the gate), settle the group before it."""
        nonlocal in_flight, pending, since_checkpoint
        if gate is not None:
            await settle()
            if not await gate(total - since_checkpoint, model):
                return False
        task = asyncio.create_task(publish(pending))
        await settle()
        in_flight = (task, progress)
        pending, since_checkpoint = [], 0
        return True

    try:
        for line_no, raw in _request_lines(chunks):
            total += 1
            parsed = parser.parse(line_no, raw)
            if line_no <= resume_after:
                continue
            last_line = line_no
            if isinstance(parsed, LineError):
                assembly.add_error(
                    line_no, parsed.custom_id, parsed.code, parsed.message, invalid=True
                )
            else:
                model = model or parsed.model
                pending.append(envelope_for(state, parsed, now_ms()))
            since_checkpoint += 1
            if since_checkpoint >= checkpoint_lines:
                if not await send(Progress(line_no, total, model, expanded=False)):
                    return False
                if cancelled():
                    await settle()
                    return False
        if not await send(Progress(last_line, total, model, expanded=True)):
            return False
        await settle()
    finally:
        if in_flight is not None:
            in_flight[0].cancel()
    return True
