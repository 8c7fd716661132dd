"""Ingress settings (env prefix `TOLLWAY_INGRESS_`, and `TOLLWAY_ADMIN_KEY`, `TOLLWAY_AUTH`),
parsed once, frozen.

Secrets are `SecretStr` and validation errors never echo an input (`hide_input_in_errors`),
so a rejected admin key does not land in a start-up log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingress.bulk import DEFAULT_MAX_ITEMS
from workers.tenancy.model import WalletLimits

MIN_ADMIN_KEY_CHARS = 24


class IngressSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TOLLWAY_INGRESS_",
        frozen=True,
        extra="ignore",
        populate_by_name=True,
        hide_input_in_errors=True,
    )

    host: str = "127.0.0.1"
    port: int = 8000
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        description="Port of this process's Prometheus /metrics listener "
        "(docs/metrics.md); unset or 0 = none.",
    )
    max_body_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=1024,
        le=10 * 1024 * 1024,  # the request topics take 12 MiB records (schemas/topics.py)
        description="Largest accepted request body (bytes).",
    )
    bulk_max_items: int = Field(
        default=DEFAULT_MAX_ITEMS,
        ge=1,
        le=10_000,
        description="Most requests in one POST /v1/async/bulk/chat/completions call "
        "(more: 400). Each item is still at most max_body_bytes.",
    )
    bulk_max_body_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description="Largest accepted body of POST /v1/async/bulk/chat/completions (bytes); "
        "the call is parsed in memory, so this bounds the memory one call takes.",
    )
    sync_timeout_s: float = Field(
        default=600.0, gt=0, description="How long a sync request waits for its result."
    )
    result_index_max: int = Field(
        default=2_000_000,
        ge=1_000,
        description="Async request ids whose result offset is kept in memory for "
        "GET /v1/async/...; the oldest are forgotten first (their results stay in Kafka "
        "until retention). About 220 bytes each: ~440 MB at the default, reached after "
        "2 million async requests (a week at 3.3/s).",
    )
    id_secret: SecretStr = Field(
        default=SecretStr("tollway-dev-id-secret"),
        description="HMAC key that signs request ids; must be the same on every replica.",
    )
    routes_file: Path | None = Field(default=None, validation_alias="TOLLWAY_ROUTES_FILE")
    admin_key: SecretStr | None = Field(
        default=None,
        validation_alias="TOLLWAY_ADMIN_KEY",
        description="The admin credential (`Authorization: Bearer <key>`) of the admin routes "
        f"(/v1/analytics/...): at least {MIN_ADMIN_KEY_CHARS} printable ASCII characters, no "
        "spaces. Unset (or empty): those routes answer 403. Never a virtual key.",
    )
    analytics_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="Longest a /v1/analytics query may take (waiting for a thread included); "
        "504 after it.",
    )
    analytics_threads: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Threads that run blocking ClickHouse calls for /v1/analytics (at most this "
        "many queries at once per ingress; the rest wait within their timeout).",
    )

    auth: Literal["keys", "open"] = Field(
        default="keys",
        validation_alias="TOLLWAY_AUTH",
        description="`keys`: every request needs a virtual key (ingress/auth.py). `open`: "
        "development only, no key is read and every caller is team `default` (logged as a "
        "warning at start).",
    )
    wallet_max_input_bytes: int | None = Field(
        default=None,
        ge=1,
        description="Gateway-wide default of WalletLimits.max_input_bytes (a team's own "
        "value wins); unset = only max_body_bytes applies.",
    )
    wallet_max_output_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Default cap on a request's max_tokens / max_completion_tokens.",
    )
    wallet_max_batch_lines: int | None = Field(
        default=None, ge=1, description="Default cap on the lines of one batch input file."
    )
    wallet_max_queued_requests: int | None = Field(
        default=None,
        ge=1,
        description="Default cap on a team's async + batch requests not finished yet "
        "(ingress/queue_limit.py).",
    )
    replicas: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="How many ingress replicas run: each holds 1/replicas of a team's "
        "async queue cap (ingress/queue_limit.py). Set the same value on every replica.",
    )
    queued_max_age_s: float = Field(
        default=86_400.0,
        gt=0,
        description="An accepted async request stops counting towards its team's queue cap "
        "after this long even without a result seen.",
    )

    @property
    def wallet_defaults(self) -> WalletLimits:
        return WalletLimits(
            max_input_bytes=self.wallet_max_input_bytes,
            max_output_tokens=self.wallet_max_output_tokens,
            max_batch_lines=self.wallet_max_batch_lines,
            max_queued_requests=self.wallet_max_queued_requests,
        )

    @field_validator("admin_key", mode="before")
    @classmethod
    def _empty_admin_key_is_unset(cls, value: object) -> object:
        return None if value in ("", None) else value

    @field_validator("admin_key")
    @classmethod
    def _admin_key_is_strong(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        key = value.get_secret_value()
        if len(key) < MIN_ADMIN_KEY_CHARS:
            raise ValueError(
                f"TOLLWAY_ADMIN_KEY must be at least {MIN_ADMIN_KEY_CHARS} characters "
                "(e.g. `openssl rand -hex 32`)"
            )
        if not all("!" <= ch <= "~" for ch in key):
            raise ValueError("TOLLWAY_ADMIN_KEY must be printable ASCII without spaces")
        return value
