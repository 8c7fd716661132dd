"""Cost processor settings (env prefix `TOLLWAY_COST_`), parsed once and frozen."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CostSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLLWAY_COST_", frozen=True, extra="ignore")

    app_id: str = Field(
        default="tollway-cost", description="Faust app id = consumer group = changelog prefix."
    )
    catalogue_file: Path | None = Field(
        default=None, description="A price catalogue replacing the built-in one."
    )
    price_overrides_file: Path | None = Field(
        default=None,
        description="YAML/JSON per-deployment price overrides (workers/cost/catalogue.py).",
    )
    batch_max: int = Field(default=5_000, ge=1, description="Attempts priced per batch, at most.")
    batch_within_s: float = Field(
        default=0.05, gt=0, description="How long a batch waits to fill (adds to usage latency)."
    )
    start_from: Literal["earliest", "latest"] = Field(
        default="earliest",
        description="Where a NEW consumer group starts (tests/benchmarks: latest).",
    )
    web_port: int | None = Field(default=None, description="Faust's web server; None = off.")
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        description="Port of this process's Prometheus /metrics listener "
        "(docs/metrics.md); unset or 0 = none.",
    )
    data_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("TOLLWAY_STATE_DIR", ".tollway")) / "faust",
        description="faust's data dir (tables are in memory; it holds little).",
    )
    session_timeout_s: float = Field(default=10.0, ge=6.0)
    group_instance_id: str | None = Field(
        default=None,
        description="Static consumer-group membership (workers/faust_app.py): a restart with "
        "the same id resumes at once instead of after session_timeout_s. One id per replica; "
        "None = dynamic membership.",
    )
    commit_interval_s: float = Field(default=1.0, gt=0)
    replication_factor: int = Field(default=1, ge=1)
    log_level: str = Field(default="INFO", validation_alias="TOLLWAY_LOG_LEVEL")
