"""Ingress settings (env prefix `TOLLWAY_INGRESS_`), parsed once and frozen."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class IngressSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLLWAY_INGRESS_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1024, description="Largest accepted request body (bytes)."
    )
    sync_timeout_s: float = Field(
        default=600.0, gt=0, description="How long a sync request waits for its result."
    )
    result_index_max: int = Field(
        default=2_000_000,
        ge=1_000,
        description="Request ids whose result offset is kept in memory for GET /v1/async/...; "
        "the oldest are forgotten first (their results stay in Kafka until retention).",
    )
    id_secret: SecretStr = Field(
        default=SecretStr("tollway-dev-id-secret"),
        description="HMAC key that signs request ids; must be the same on every replica.",
    )
    routes_file: Path | None = Field(default=None, validation_alias="TOLLWAY_ROUTES_FILE")
