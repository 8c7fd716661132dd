"""What an operator may ask for: the admin API's bodies and the bootstrap file's entries. Pure.

Pydantic models with `extra="forbid"`, every id and label checked against names.py,
every limit a positive integer or null ("no limit at this level"). A spec becomes a
model.py record with `record(...)`; a patch changes only the fields it names
(`limits` and `wallet` are replaced whole: a field left out of them becomes null).

Validation messages name the field, never the value (`hide_input_in_errors`), so a
rejected body is not echoed into an error answer or a log.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Annotated, Any, Final, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from schemas.errors import InvalidRequest
from workers.tenancy import names
from workers.tenancy.model import KeyRecord, Limits, TagPolicy, TeamRecord, WalletLimits

_M = TypeVar("_M", bound=BaseModel)
STRICT: Final = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

TeamId = Annotated[str, StringConstraints(pattern=names.TEAM_ID_PATTERN)]
KeyId = Annotated[str, StringConstraints(pattern=names.KEY_ID_PATTERN)]
Tag = Annotated[str, StringConstraints(pattern=names.TAG_PATTERN)]
Model = Annotated[str, StringConstraints(pattern=names.MODEL_PATTERN)]
Name = Annotated[str, StringConstraints(max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$")]
Models = Annotated[tuple[Model, ...], Field(max_length=names.MAX_LIST_ITEMS)]
Tags = Annotated[tuple[Tag, ...], Field(max_length=names.MAX_LIST_ITEMS)]
MetadataValue = Annotated[
    str,
    StringConstraints(max_length=names.MAX_METADATA_VALUE_CHARS, pattern=r"^[^\x00-\x1f\x7f]*$"),
]
Metadata = Annotated[dict[Tag, MetadataValue], Field(max_length=names.MAX_METADATA_ENTRIES)]
Positive = Annotated[int, Field(ge=1, le=10**15)]
EpochMs = Annotated[int, Field(ge=1, le=253_402_300_799_999)]  # up to year 9999


class LimitsSpec(BaseModel):
    model_config = STRICT

    rpm: Positive | None = None
    tpm: Positive | None = None
    max_concurrency: Positive | None = None

    def limits(self) -> Limits:
        return Limits(rpm=self.rpm, tpm=self.tpm, max_concurrency=self.max_concurrency)


class WalletSpec(BaseModel):
    model_config = STRICT

    max_input_bytes: Positive | None = None
    max_output_tokens: Positive | None = None
    max_batch_lines: Positive | None = None
    max_queued_requests: Positive | None = None

    def wallet(self) -> WalletLimits:
        return WalletLimits(
            max_input_bytes=self.max_input_bytes,
            max_output_tokens=self.max_output_tokens,
            max_batch_lines=self.max_batch_lines,
            max_queued_requests=self.max_queued_requests,
        )


class TeamSpec(BaseModel):
    """A whole team (create, or a bootstrap upsert). `name` defaults to the id."""

    model_config = STRICT

    id: TeamId
    name: Name = ""
    allowed_models: Models = ()
    limits: LimitsSpec = LimitsSpec()
    wallet: WalletSpec = WalletSpec()
    metadata: Metadata = Field(default_factory=dict)

    def record(self, *, created_at_ms: int, updated_at_ms: int) -> TeamRecord:
        return TeamRecord(
            team_id=self.id,
            name=self.name or self.id,
            allowed_models=self.allowed_models,
            limits=self.limits.limits(),
            wallet=self.wallet.wallet(),
            metadata=dict(self.metadata),
            created_at_ms=created_at_ms,
            updated_at_ms=updated_at_ms,
        )


class TeamPatch(BaseModel):
    model_config = STRICT

    name: Name | None = None
    allowed_models: Models | None = None
    limits: LimitsSpec | None = None
    wallet: WalletSpec | None = None
    metadata: Metadata | None = None

    def apply(self, team: TeamRecord, now_ms: int) -> TeamRecord:
        changes: dict[str, Any] = {}
        if self.name is not None:
            changes["name"] = self.name or team.team_id
        if self.allowed_models is not None:
            changes["allowed_models"] = self.allowed_models
        if self.limits is not None:
            changes["limits"] = self.limits.limits()
        if self.wallet is not None:
            changes["wallet"] = self.wallet.wallet()
        if self.metadata is not None:
            changes["metadata"] = dict(self.metadata)
        updated = dataclasses.replace(team, **changes)
        if updated == team:
            return team
        return dataclasses.replace(updated, updated_at_ms=now_ms)


class KeySpec(BaseModel):
    """A new key; the id, the key and its digest are made by the admin (keys.py)."""

    model_config = STRICT

    team_id: TeamId
    name: Name = ""
    tags: Tags = ()
    allowed_models: Models = ()
    limits: LimitsSpec = LimitsSpec()
    expires_at_ms: EpochMs | None = None
    metadata: Metadata = Field(default_factory=dict)

    def record(
        self, *, key_id: str, key_digest: str, display_prefix: str, created_at_ms: int
    ) -> KeyRecord:
        return KeyRecord(
            key_id=key_id,
            team_id=self.team_id,
            key_digest=key_digest,
            display_prefix=display_prefix,
            name=self.name,
            tags=self.tags,
            allowed_models=self.allowed_models,
            limits=self.limits.limits(),
            expires_at_ms=self.expires_at_ms,
            metadata=dict(self.metadata),
            created_at_ms=created_at_ms,
        )


class KeyPatch(BaseModel):
    """Fields of a key that may change; `expires_at_ms: null` removes the expiry. The team,
    digest and revocation do not change here (revoke is its own call; a key never moves)."""

    model_config = STRICT

    name: Name | None = None
    tags: Tags | None = None
    allowed_models: Models | None = None
    limits: LimitsSpec | None = None
    expires_at_ms: EpochMs | None = None
    metadata: Metadata | None = None

    def apply(self, key: KeyRecord) -> KeyRecord:
        changes: dict[str, Any] = {}
        for name in ("name", "tags", "allowed_models"):
            if getattr(self, name) is not None:
                changes[name] = getattr(self, name)
        if self.limits is not None:
            changes["limits"] = self.limits.limits()
        if self.metadata is not None:
            changes["metadata"] = dict(self.metadata)
        if "expires_at_ms" in self.model_fields_set:
            changes["expires_at_ms"] = self.expires_at_ms
        return dataclasses.replace(key, **changes)


class PolicySpec(BaseModel):
    """The models a tag approves (at least one: an empty list would read as "any")."""

    model_config = STRICT

    tag: Tag
    allowed_models: Annotated[tuple[Model, ...], Field(min_length=1, max_length=256)]

    def record(self, updated_at_ms: int) -> TagPolicy:
        return TagPolicy(self.tag, self.allowed_models, updated_at_ms)


_SAFE_LOC: Final = re.compile(r"[A-Za-z0-9_\[\]-]{1,64}", re.ASCII)


def location(loc: tuple[int | str, ...]) -> str:
    """A field path fit to print: parts that are not field names or indexes (a dict key
    the caller chose, e.g. a metadata key) are shown as `?`."""
    parts = [str(p) if isinstance(p, int) or _SAFE_LOC.fullmatch(p) else "?" for p in loc]
    return ".".join(parts) or "body"


def problems(exc: ValidationError) -> str:
    """`field: message; ...` of a validation error, with no input values in it."""
    return "; ".join(f"{location(err['loc'])}: {err['msg']}" for err in exc.errors())


def parse(model: type[_M], data: object) -> _M:
    """`model` from decoded JSON/YAML data; `InvalidRequest` (400) naming each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]["loc"] if exc.errors() else ()
        raise InvalidRequest(
            f"Invalid {model.__name__}: {problems(exc)}", param=location(first) if first else None
        ) from None
