"""The records that travel on Tollway's topics, as typed dicts.

TypedDicts rather than classes: fastavro reads and writes plain dicts, and the
hot path (ingress publish, router consume) should not pay for a conversion.
Field meanings and units are documented once, in the Avro schemas under
`schemas/avro/`; these types mirror the latest version of each.
"""

from __future__ import annotations

from typing import Final, Literal, TypedDict

Mode = Literal["sync", "async", "batch"]
Status = Literal["succeeded", "failed"]
Outcome = Literal["ok", "error", "cache_hit"]
"""`cache_hit`: answered from the response cache, no provider call (attempt.v3)."""


class RequestEnvelope(TypedDict):
    """`tollway.requests.*` value (schema `request`)."""

    request_id: str
    team_id: str
    key_id: str | None
    mode: Mode
    endpoint: str
    model: str
    body: bytes
    received_at_ms: int
    deadline_ms: int
    ingress_id: str
    reply_partition: int | None
    metadata: dict[str, str]


class Usage(TypedDict):
    """Token counts reported by a provider for one call.

    `prompt_tokens` includes `cached_tokens` (OpenAI's convention; adapters of
    providers that report them apart add them up). `cache_write_tokens` are the
    prompt tokens written to a prompt cache (Anthropic cache creation), also
    included in `prompt_tokens`. `reasoning_tokens` are included in
    `completion_tokens`.
    """

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cache_write_tokens: int


META_BATCH_ID: Final = "tollway.batch_id"
"""Metadata key of a batch line's request and result: the batch it came from."""
META_CUSTOM_ID: Final = "tollway.custom_id"
"""Metadata key of a batch line's request and result: the line's `custom_id`."""

RESULT_BODY_MAX_BYTES: Final = 1_000_000
"""The largest response body a `Result` carries, in bytes. Results travel on
tollway.replies and tollway.results, whose records are capped by Kafka's default
`message.max.bytes` (1 MiB); the rest of the record (ids, metadata) fits in what is
left. A larger answer is refused as `ResponseTooLarge` instead of a record that no
producer can send."""


class Result(TypedDict):
    """`tollway.results` / `tollway.replies` value (schema `result`)."""

    request_id: str
    team_id: str
    key_id: str | None
    mode: Mode
    execution_id: str
    status: Status
    http_status: int
    body: bytes
    error_type: str | None
    requested_model: str
    served_model: str | None
    provider: str | None
    deployment: str | None
    attempts: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cache_write_tokens: int
    received_at_ms: int
    finished_at_ms: int
    metadata: dict[str, str]


class Attempt(TypedDict):
    """`tollway.attempts` value (schema `attempt`): one provider call."""

    request_id: str
    attempt_id: str
    attempt: int
    team_id: str
    key_id: str | None
    mode: Mode
    deployment: str
    provider: str
    model: str
    started_at_ms: int
    latency_ms: float
    outcome: Outcome
    http_status: int | None
    error_type: str | None
    error_code: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cache_write_tokens: int
    router_id: str


class StreamChunk(TypedDict):
    """`tollway.replies` value (schema `stream_chunk`): one chunk of a streamed reply."""

    request_id: str
    execution_id: str
    seq: int
    data: bytes
    cache: str | None
    """`hit` | `semantic-hit` on the first chunk of a reply served from the cache, else None."""


CostStatus = Literal["priced", "unpriced", "cache_hit"]
ScopeType = Literal["key", "team", "tag", "model", "global"]
BudgetStatus = Literal["ok", "warn", "exceeded"]
Enforcement = Literal["hard", "soft", "downgrade"]


class UsageRecord(TypedDict):
    """`tollway.usage` value (schema `usage`): one priced provider call. Money in nano-USD."""

    usage_id: str
    request_id: str
    attempt_id: str
    team_id: str
    key_id: str | None
    mode: Mode
    requested_model: str
    model: str
    provider: str
    deployment: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    cost_nano_usd: int
    saved_nano_usd: int
    cost_status: CostStatus
    pricing_version: str
    occurred_at_ms: int
    priced_at_ms: int


class BudgetState(TypedDict):
    """`tollway.budget-state` value (schema `budget_state`), compacted by scope and window."""

    scope_type: ScopeType
    scope_id: str
    window: str
    spent_nano_usd: int
    limit_nano_usd: int | None
    remaining_nano_usd: int | None
    status: BudgetStatus
    enforcement: Enforcement
    frees_at_ms: int | None
    watermark_ms: int
    updated_at_ms: int


class BudgetEvent(TypedDict):
    """`tollway.budget-events` value (schema `budget_event`): a threshold crossing."""

    event_id: str
    scope_type: ScopeType
    scope_id: str
    window: str
    threshold_pct: int
    spent_nano_usd: int
    limit_nano_usd: int
    occurred_at_ms: int


ZERO_USAGE: Usage = {
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "cached_tokens": 0,
    "reasoning_tokens": 0,
    "cache_write_tokens": 0,
}


# --- batches and callbacks (workers/batches, workers/callbacks) --------------------------

BatchStatus = Literal[
    "validating",
    "in_progress",
    "finalizing",
    "completed",
    "failed",
    "expired",
    "cancelling",
    "cancelled",
]


class BatchErrorRecord(TypedDict):
    """A batch-level error (why a batch failed), in OpenAI's `errors.data[]` shape."""

    code: str
    message: str
    line: int | None
    param: str | None


class SegmentRun(TypedDict):
    """Spool segments `first_segment`.. (until the next run) were written by `owner`."""

    owner: str
    first_segment: int


class BatchState(TypedDict):
    """`tollway.batch-state` value (schema `batch_state`), compacted by batch id."""

    batch_id: str
    team_id: str
    version: int
    status: BatchStatus
    endpoint: str
    completion_window: str
    input_file_id: str
    output_file_id: str | None
    error_file_id: str | None
    model: str | None
    metadata: dict[str, str]
    created_at_ms: int
    expires_at_ms: int
    in_progress_at_ms: int | None
    finalizing_at_ms: int | None
    completed_at_ms: int | None
    failed_at_ms: int | None
    expired_at_ms: int | None
    cancelling_at_ms: int | None
    cancelled_at_ms: int | None
    total: int
    completed: int
    failed: int
    invalid: int
    enqueued: int
    expanded: bool
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    errors: list[BatchErrorRecord]
    done: bytes
    segments: int
    segment_owners: list[SegmentRun]
    results_offsets: dict[str, int]
    updated_at_ms: int


class BatchCommand(TypedDict):
    """`tollway.batch-state` value under key `<batch_id>/<command>` (schema `batch_command`)."""

    batch_id: str
    team_id: str
    command: Literal["cancel"]
    requested_at_ms: int


class WebhookDelivery(TypedDict):
    """`tollway.callbacks.retry` / `.dead` value (schema `webhook_delivery`)."""

    webhook_id: str
    team_id: str
    endpoint_key: str
    url: str
    event_type: str
    payload: bytes
    attempt: int
    first_attempt_at_ms: int
    due_at_ms: int
    last_error: str | None


class WebhookEndpointState(TypedDict):
    """`tollway.callbacks.endpoints` value (schema `webhook_endpoint`), compacted by key."""

    endpoint_key: str
    disabled: bool
    reason: str | None
    updated_at_ms: int


class IdempotencyEntryRecord(TypedDict):
    """`tollway.idempotency` value (schema `idempotency_entry`), compacted by `<team>/<key>`."""

    team_id: str
    key: str
    request_hash: bytes
    status: int
    headers: list[list[str]]
    body: bytes | None
    body_bytes: int
    created_at_ms: int
    expires_at_ms: int


class CacheEntryRecord(TypedDict):
    """`tollway.cache` value (schema `cache_entry`), compacted by `<scope>/<sha256>`."""

    key: str
    scope: str
    model: str
    semantic_scope: str | None
    embedding: bytes | None
    embedder: str | None
    semantic_guard: str | None
    body: bytes
    provider: str
    upstream_model: str
    served_model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cache_write_tokens: int
    created_at_ms: int
    expires_at_ms: int
