"""Analytics settings (env prefix `TOLLWAY_ANALYTICS_`, and `CLICKHOUSE_URL`), parsed once, frozen.

`CLICKHOUSE_URL` says where ClickHouse is, for every component alike:

    http://127.0.0.1:8123                 the embedded server (`tollway analytics serve`), default
    https://user:pass@host:8443           a ClickHouse server or cloud service
    chdb:///abs/path                      an in-process chdb engine (single-process tools only:
                                          chdb lets one process open a path)
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_REPO = Path(__file__).resolve().parent.parent


class AnalyticsSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TOLLWAY_ANALYTICS_", frozen=True, extra="ignore", populate_by_name=True
    )

    clickhouse_url: SecretStr = Field(
        default=SecretStr("http://127.0.0.1:8123"),
        validation_alias=AliasChoices("CLICKHOUSE_URL", "TOLLWAY_ANALYTICS_CLICKHOUSE_URL"),
        description="http(s)://[user:password@]host:port or chdb:///path; may carry a password.",
    )
    database: str = Field(default="tollway", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    raw_ttl_days: int = Field(
        default=365,
        ge=0,
        description="Raw rows (requests, attempts, usage, budget events) older than this are "
        "deleted; 0 keeps them for ever. Rollups are kept. Must exceed the topics' retention.",
    )
    # The embedded server (`tollway analytics serve`).
    server_host: str = "127.0.0.1"
    server_port: int = Field(default=8123, ge=1, le=65_535)
    data_path: Path = Field(default=_REPO / ".tollway" / "clickhouse")
    # The loader (`tollway loader`).
    group_id: str = "tollway-loader"
    batch_max_rows: int = Field(default=10_000, ge=1, description="flush when this many rows wait")
    batch_max_age_ms: int = Field(default=500, ge=10, description="flush rows this old at latest")
    buffer_max_rows: int = Field(
        default=50_000, ge=1, description="above this many buffered rows, fetching pauses"
    )
    retry_max_backoff_s: float = Field(default=5.0, gt=0)
    session_timeout_ms: int = Field(default=10_000, ge=3_000)
    loader_metrics_port: int | None = Field(
        default=None,
        ge=0,
        description="Port of the loader's Prometheus /metrics listener "
        "(docs/metrics.md); unset or 0 = none.",
    )

    @field_validator("raw_ttl_days")
    @classmethod
    def _ttl_outlives_topics(cls, days: int) -> int:
        # A replayed record older than the TTL would be loaded again after its row expired.
        if 0 < days < 31:
            raise ValueError("raw_ttl_days must be 0 (off) or exceed the 30-day topic retention")
        return days

    @model_validator(mode="after")
    def _buffer_holds_a_batch(self) -> AnalyticsSettings:
        if self.buffer_max_rows < self.batch_max_rows:
            raise ValueError("buffer_max_rows must be at least batch_max_rows")
        return self

    @property
    def url(self) -> str:
        return self.clickhouse_url.get_secret_value()

    @property
    def url_for_logs(self) -> str:
        """The URL without credentials."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"
