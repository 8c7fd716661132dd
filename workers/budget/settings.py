"""Budget processor settings (env prefix `TOLLWAY_BUDGET_`), parsed once and frozen."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BudgetSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLLWAY_BUDGET_", frozen=True, extra="ignore")

    app_id: str = Field(
        default="tollway-budget", description="Faust app id = consumer group = changelog prefix."
    )
    budgets_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("TOLLWAY_BUDGETS_FILE", "TOLLWAY_BUDGET_BUDGETS_FILE"),
        description="YAML budgets (workers/budget/config.py); none = spend is tracked, no limits.",
    )
    dedup_horizon_s: float = Field(
        default=300.0,
        ge=60.0,
        description="Event-time horizon of the usage-id dedup set, behind each partition's "
        "watermark (~120 bytes per id in memory). A duplicate re-emitted after other traffic "
        "moved the watermark further than this is counted twice (logged as `late`).",
    )
    tick_s: float = Field(
        default=1.0, gt=0, description="Heartbeat / re-emission period of budget states."
    )
    info_every_s: float = Field(
        default=2.0,
        gt=0,
        description="How often the states of scopes WITHOUT a budget are re-emitted after a "
        "change (budgeted scopes: with every batch).",
    )
    prune_every_s: float = Field(default=30.0, gt=0)
    batch_max: int = Field(default=5_000, ge=1, description="Usage records per batch, at most.")
    batch_within_s: float = Field(
        default=0.1,
        gt=0,
        description="How long a batch waits to fill: bigger batches mean fewer state writes "
        "per record (throughput), at the price of budget lag.",
    )
    start_from: Literal["earliest", "latest"] = Field(
        default="earliest",
        description="Where a NEW consumer group starts (tests/benchmarks: latest).",
    )
    web_port: int | None = None
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
