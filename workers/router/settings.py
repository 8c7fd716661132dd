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
    metrics_port: int | None = None
