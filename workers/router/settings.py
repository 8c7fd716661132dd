"""Router settings (env prefix `TOLLWAY_ROUTER_`), parsed once and frozen."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RouterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLLWAY_ROUTER_", frozen=True, extra="ignore")

    group_id: str = "tollway-router"
    max_in_flight: int = Field(
        default=1_000,
        ge=1,
        description="Provider calls in flight per process; above it the poll loop pauses "
        "fetching but keeps polling, so slow calls never cost the group membership.",
    )
    batch_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Share of max_in_flight that batch lines (tollway.requests.batch) may "
        "take; the rest is always left to interactive requests (workers/router/lanes.py).",
    )
    revoke_drain_timeout_s: float = Field(
        default=10.0,
        ge=0,
        description="On a rebalance, how long revoked partitions' in-flight "
        "calls may finish before the partitions are handed over (fewer duplicate calls).",
    )
    commit_interval_ms: int = Field(default=200, ge=10)
    max_poll_interval_ms: int = Field(default=300_000, ge=10_000)
    session_timeout_ms: int = Field(default=10_000, ge=3_000)
    routes_file: Path | None = Field(default=None, validation_alias="TOLLWAY_ROUTES_FILE")
    budget_pending_hold_ms: int = Field(
        default=5_000,
        ge=0,
        description="How long a settled call's cost stays counted by this router's "
        "reservations (workers/budget/reservations.py) after the call: the time the budget "
        "state may need to show it. Keep it above the budget lag (p99 ~0.3 s measured).",
    )
    budget_default_output_tokens: int = Field(
        default=4_096,
        ge=1,
        description="Worst-case output tokens of a call whose request sets no max_tokens and "
        "whose model has no max output in the price catalogue.",
    )
    rate_limit_max_waiting: int = Field(
        default=1_000,
        ge=1,
        description="Async/batch records of rate-limited teams that may wait for room at "
        "once (workers/router/rate_gate.py); at the bound the partitions holding them are "
        "paused until some are admitted. Memory: this many records at most (plus one poll).",
    )
    rate_limit_default_output_tokens: int = Field(
        default=1_024,
        ge=1,
        description="Output tokens charged against a TPM limit at admission for a request "
        "without max_tokens; settled to the provider's count after the call.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        description="Port of this process's Prometheus /metrics listener "
        "(docs/metrics.md); unset or 0 = none.",
    )
