"""Batch settings (env prefix `TOLLWAY_BATCHES_`), parsed once and frozen.

The ingress (Files and Batches API) and the batch workers must see the same file
store: one local directory on one machine, or an object store when they run apart.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BatchesSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLLWAY_BATCHES_", frozen=True, extra="ignore")

    store_dir: Path = Field(
        default=Path(".tollway/files"),
        description="Local file store (input, spool, output and error files).",
    )
    group_id: str = "tollway-batches"
    checkpoint_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="How often each batch's new outcomes are written as a spool segment "
        "and its state (counts) is checkpointed; also the lag of request_counts.",
    )
    expand_checkpoint_lines: int = Field(
        default=5_000,
        ge=1,
        description="Lines expanded between two checkpoints: at most this many requests "
        "are published twice after a crash during expansion.",
    )
    cancel_grace_s: float = Field(
        default=60.0,
        ge=0,
        description="How long a cancelling batch waits for requests already enqueued "
        "before it is finalised as cancelled.",
    )
    budget_lookahead_lines: int = Field(
        default=1_000,
        ge=1,
        description="For a team with a hard budget: request lines enqueued ahead of the "
        "lines that have an outcome, at most (about); the rest waits in the file, so a "
        "budget that runs out pauses the batch instead of failing its queued lines.",
    )
    budget_poll_s: float = Field(
        default=1.0,
        gt=0,
        description="How often a paced or paused expansion looks at the budget view again.",
    )
    session_timeout_ms: int = Field(default=10_000, ge=3_000)
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        description="Port of the batch worker's Prometheus /metrics listener "
        "(docs/metrics.md); unset or 0 = none.",
    )
    routes_file: Path | None = Field(default=None, validation_alias="TOLLWAY_ROUTES_FILE")
