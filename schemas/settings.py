"""Settings shared by every deployable: where Kafka is and what to call this process.

Each deployable adds its own `XxxSettings` with its own env prefix; this module
holds only what all of them read. Parsed once at start-up and frozen.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseSettings):
    """Kafka connection (env prefix `TOLLWAY_KAFKA_`)."""

    model_config = SettingsConfigDict(env_prefix="TOLLWAY_KAFKA_", frozen=True, extra="ignore")

    bootstrap: str = Field(default="127.0.0.1:19092", description="host:port[,host:port]")
    request_timeout_ms: int = Field(default=10_000, ge=1_000)
