"""Callback dispatcher settings (env prefix `TOLLWAY_CALLBACKS_`), parsed once and frozen."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.callbacks.endpoints import WebhooksConfig
from workers.callbacks.retry import RetryPolicy


class CallbacksSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLLWAY_CALLBACKS_", frozen=True, extra="ignore")

    webhooks_file: Path | None = Field(
        default=None, description="YAML: teams -> secrets and endpoints (endpoints.py)."
    )
    group_id: str = "tollway-callbacks"
    start_from: Literal["latest", "earliest"] = Field(
        default="latest",
        description="Where a brand-new consumer group starts reading events: `latest` so a "
        "first deployment does not re-send a week of old events.",
    )
    max_in_flight: int = Field(default=200, ge=1, description="HTTP deliveries at once.")
    max_held: int = Field(
        default=10_000, ge=1, description="Retry records held in memory until they are due."
    )
    timeout_s: float = Field(default=10.0, gt=0, description="One delivery attempt.")
    allow_http: bool = Field(
        default=False, description="Also allow http:// targets (development only)."
    )
    allow_networks: tuple[str, ...] = Field(
        default=(),
        description='CIDRs exempt from the SSRF guard, e.g. ["127.0.0.0/8"] for a local '
        "receiver. Development only: never in production.",
    )
    retry_base_s: float = Field(default=5.0, gt=0)
    retry_factor: float = Field(default=4.0, ge=1)
    retry_max_delay_s: float = Field(default=6 * 3600.0, gt=0)
    retry_give_up_after_s: float = Field(default=3 * 24 * 3600.0, gt=0)
    retry_jitter: float = Field(default=0.2, ge=0, lt=1)
    commit_interval_ms: int = Field(default=500, ge=10)
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        description="Port of the dispatcher's Prometheus /metrics listener "
        "(docs/metrics.md); unset or 0 = none.",
    )

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            base_s=self.retry_base_s,
            factor=self.retry_factor,
            max_delay_s=self.retry_max_delay_s,
            give_up_after_s=self.retry_give_up_after_s,
            jitter=self.retry_jitter,
        )


def load_webhooks(path: Path | None) -> WebhooksConfig:
    """The webhooks file (teams, secrets, endpoints); no file means no team endpoints."""
    if path is None:
        return WebhooksConfig()
    return WebhooksConfig.model_validate(yaml.safe_load(path.read_text("utf-8")) or {})
