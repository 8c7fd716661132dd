"""Tenancy settings (env prefix `TOLLWAY_TENANCY_`, and `TOLLWAY_KEY_PEPPER`), parsed once, frozen.

The pepper is a `SecretStr` validated at load (length, printable ASCII) with
`hide_input_in_errors`, so a rejected pepper never reaches a start-up log.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.tenancy.keys import Pepper


class TenancySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TOLLWAY_TENANCY_",
        frozen=True,
        extra="ignore",
        populate_by_name=True,
        hide_input_in_errors=True,
    )

    key_pepper: SecretStr | None = Field(
        default=None,
        validation_alias="TOLLWAY_KEY_PEPPER",
        description="Server-side secret of key digests (>= 32 printable ASCII characters), the "
        "same on every replica. Required to issue or check virtual keys; `tollway up` makes one.",
    )
    bootstrap_file: Path | None = Field(
        default=None,
        description="YAML teams/keys/policies applied as upserts when the admin service starts "
        "(workers/tenancy/bootstrap.py).",
    )
    ready_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="How long start-up waits for the config topics to be read to their end.",
    )
    write_timeout_s: float = Field(
        default=10.0, gt=0, description="Longest an admin change may wait for Kafka (then 503)."
    )
    catch_up_timeout_s: float = Field(
        default=3.0,
        gt=0,
        description="Longest an admin call waits for the local view to reach the topics' end "
        "(then 503).",
    )

    @field_validator("key_pepper", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value in ("", None) else value

    @field_validator("key_pepper")
    @classmethod
    def _pepper_is_strong(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            Pepper(value.get_secret_value())  # raises PepperError (a ValueError) if weak
        return value

    def pepper(self) -> Pepper | None:
        return None if self.key_pepper is None else Pepper(self.key_pepper.get_secret_value())
