"""The batch state machine, request counts and the OpenAI `Batch` object. Pure.

    validating ──> in_progress ──> finalizing ──> completed
        │               │              │
        │               │              └──> failed
        ├──> failed     ├──> expired (window passed; unfinished lines -> error file)
        ├──> expired    └──> cancelling ──> cancelled
        └──> cancelling

Every write bumps `version`; readers of the compacted topic keep the highest.
`done` is a bitmap by line number of the lines whose outcome is recorded in the
spool, so a result that arrives twice is counted once (`mark_done`).
"""

from __future__ import annotations

from typing import Any, Final

from schemas.records import BatchErrorRecord, BatchState, BatchStatus

TERMINAL: Final[frozenset[BatchStatus]] = frozenset({"completed", "failed", "expired", "cancelled"})
CANCELLABLE: Final[frozenset[BatchStatus]] = frozenset({"validating", "in_progress"})
TRANSITIONS: Final[dict[BatchStatus, frozenset[BatchStatus]]] = {
    "validating": frozenset({"in_progress", "failed", "expired", "cancelling"}),
    "in_progress": frozenset({"finalizing", "failed", "expired", "cancelling"}),
    "finalizing": frozenset({"completed", "failed"}),
    "cancelling": frozenset({"cancelled"}),
    "completed": frozenset(),
    "failed": frozenset(),
    "expired": frozenset(),
    "cancelled": frozenset(),
}
_STAMP: Final[dict[BatchStatus, str]] = {
    "in_progress": "in_progress_at_ms",
    "finalizing": "finalizing_at_ms",
    "completed": "completed_at_ms",
    "failed": "failed_at_ms",
    "expired": "expired_at_ms",
    "cancelling": "cancelling_at_ms",
    "cancelled": "cancelled_at_ms",
}
COMPLETION_WINDOWS_S: Final = {"24h": 24 * 3600}
MAX_METADATA_KEYS: Final = 16
MAX_METADATA_KEY_CHARS: Final = 64
MAX_METADATA_VALUE_CHARS: Final = 512
RESERVED_PREFIX: Final = "tollway."
"""Metadata keys Tollway writes itself (e.g. `tollway.paused_reason`); refused from clients
and shown in the Batch object's `tollway` extras, not in its `metadata`."""
PAUSED_REASON_KEY: Final = f"{RESERVED_PREFIX}paused_reason"
"""Why the expansion waits (workers/batches/budget.py); absent while it runs."""


class InvalidMetadata(ValueError):
    """Batch metadata outside OpenAI's rules."""


class InvalidTransition(ValueError):
    """A status change the state machine does not allow (a bug or a stale writer)."""


def new_batch(
    *,
    batch_id: str,
    team_id: str,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: dict[str, str],
    now_ms: int,
) -> BatchState:
    return {
        "batch_id": batch_id,
        "team_id": team_id,
        "version": 1,
        "status": "validating",
        "endpoint": endpoint,
        "completion_window": completion_window,
        "input_file_id": input_file_id,
        "output_file_id": None,
        "error_file_id": None,
        "model": None,
        "metadata": dict(metadata),
        "created_at_ms": now_ms,
        "expires_at_ms": now_ms + COMPLETION_WINDOWS_S[completion_window] * 1000,
        "in_progress_at_ms": None,
        "finalizing_at_ms": None,
        "completed_at_ms": None,
        "failed_at_ms": None,
        "expired_at_ms": None,
        "cancelling_at_ms": None,
        "cancelled_at_ms": None,
        "total": 0,
        "completed": 0,
        "failed": 0,
        "invalid": 0,
        "enqueued": 0,
        "expanded": False,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "errors": [],
        "done": b"",
        "segments": 0,
        "segment_owners": [],
        "results_offsets": {},
        "updated_at_ms": now_ms,
    }


def transition(state: BatchState, to: BatchStatus, now_ms: int) -> BatchState:
    """A copy of `state` in status `to`, its timestamp set and version bumped."""
    if to not in TRANSITIONS[state["status"]]:
        raise InvalidTransition(f"{state['batch_id']}: {state['status']} -> {to}")
    changed = bumped(state, now_ms)
    changed["status"] = to
    changed[_STAMP[to]] = now_ms  # type: ignore[literal-required]  # keys listed in _STAMP
    return changed


def bumped(state: BatchState, now_ms: int) -> BatchState:
    """A copy with the version incremented (every write to the topic is one)."""
    changed = state.copy()
    changed["version"] = state["version"] + 1
    changed["updated_at_ms"] = now_ms
    return changed


def fail(state: BatchState, code: str, message: str, now_ms: int) -> BatchState:
    """`state` failed with a batch-level error (OpenAI's `errors.data[]`, no line)."""
    failed = transition(state, "failed", now_ms)
    error: BatchErrorRecord = {"code": code, "message": message, "line": None, "param": None}
    failed["errors"] = [*state["errors"], error]
    return failed


def is_terminal(state: BatchState) -> bool:
    return state["status"] in TERMINAL


def finished_lines(state: BatchState) -> int:
    return state["completed"] + state["failed"]


def all_done(state: BatchState) -> bool:
    """Every line of a fully expanded batch has an outcome."""
    return state["expanded"] and finished_lines(state) >= state["total"]


def window_passed(state: BatchState, now_ms: int) -> bool:
    return now_ms >= state["expires_at_ms"]


def newer(candidate: BatchState, current: BatchState | None) -> bool:
    """Whether `candidate` replaces `current` in a reader's view (highest version wins)."""
    return current is None or candidate["version"] > current["version"]


# --- the done bitmap ----------------------------------------------------------------------


def mark_done(bitmap: bytearray, line: int) -> bool:
    """Set `line`'s bit; False when it was already set (a duplicate outcome)."""
    index, bit = divmod(line, 8)
    if index >= len(bitmap):
        bitmap.extend(bytes(index + 1 - len(bitmap)))
    mask = 1 << bit
    if bitmap[index] & mask:
        return False
    bitmap[index] |= mask
    return True


def is_done(bitmap: bytes | bytearray, line: int) -> bool:
    index, bit = divmod(line, 8)
    return index < len(bitmap) and bool(bitmap[index] & (1 << bit))


# --- the OpenAI shape -----------------------------------------------------------------------


def _s(ms: int | None) -> int | None:
    return None if ms is None else ms // 1000


def request_counts(state: BatchState) -> dict[str, int]:
    return {"total": state["total"], "completed": state["completed"], "failed": state["failed"]}


def to_openai(state: BatchState) -> dict[str, Any]:
    """The `Batch` object of OpenAI's API (openai/types/batch.py), plus `tollway` extras."""
    errors = state["errors"]
    return {
        "id": state["batch_id"],
        "object": "batch",
        "endpoint": state["endpoint"],
        "errors": {"object": "list", "data": [dict(e) for e in errors]} if errors else None,
        "input_file_id": state["input_file_id"],
        "completion_window": state["completion_window"],
        "status": state["status"],
        "output_file_id": state["output_file_id"],
        "error_file_id": state["error_file_id"],
        "created_at": state["created_at_ms"] // 1000,
        "in_progress_at": _s(state["in_progress_at_ms"]),
        "expires_at": _s(state["expires_at_ms"]),
        "finalizing_at": _s(state["finalizing_at_ms"]),
        "completed_at": _s(state["completed_at_ms"]),
        "failed_at": _s(state["failed_at_ms"]),
        "expired_at": _s(state["expired_at_ms"]),
        "cancelling_at": _s(state["cancelling_at_ms"]),
        "cancelled_at": _s(state["cancelled_at_ms"]),
        "request_counts": request_counts(state),
        "metadata": {
            k: v for k, v in state["metadata"].items() if not k.startswith(RESERVED_PREFIX)
        }
        or None,
        "model": state["model"],
        "usage": {
            "input_tokens": state["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": state["cached_tokens"]},
            "output_tokens": state["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": state["reasoning_tokens"]},
            "total_tokens": state["prompt_tokens"] + state["completion_tokens"],
        },
        "tollway": {
            "enqueued": state["enqueued"],
            "invalid": state["invalid"],
            "paused_reason": state["metadata"].get(PAUSED_REASON_KEY),
        },
    }


def validate_metadata(metadata: object) -> dict[str, str]:
    """OpenAI's metadata rules: at most 16 string pairs, keys <= 64, values <= 512 chars."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidMetadata("metadata must be an object of string values")
    if len(metadata) > MAX_METADATA_KEYS:
        raise InvalidMetadata(f"metadata may have at most {MAX_METADATA_KEYS} keys")
    for key, value in metadata.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_METADATA_KEY_CHARS:
            raise InvalidMetadata(f"metadata keys must be 1 to {MAX_METADATA_KEY_CHARS} characters")
        if key.startswith(RESERVED_PREFIX):
            raise InvalidMetadata(f"metadata keys starting with {RESERVED_PREFIX!r} are reserved")
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE_CHARS:
            raise InvalidMetadata(
                f"metadata values must be strings of at most {MAX_METADATA_VALUE_CHARS} characters"
            )
    return dict(metadata)
