"""The tenancy bootstrap file (GitOps): teams, keys and tag policies to upsert at start. Pure.

`TOLLWAY_TENANCY_BOOTSTRAP_FILE` names a YAML file; the admin service applies it once
the config view has caught up, as upserts (records in the file are created or brought
to the file's content; records NOT in the file are left alone: deleting is an API call).

    version: 1
    teams:
      - id: acme
        name: Acme Corp
        allowed_models: [gpt-4o-mini, gpt-4o]
        limits: {rpm: 600, tpm: 200000, max_concurrency: 20}
        wallet: {max_input_bytes: 1000000, max_output_tokens: 4096,
                 max_batch_lines: 50000, max_queued_requests: 10000}
        metadata: {owner: platform}
    keys:
      - id: key_00000000000000a1        # optional: derived from the digest when left out
        team_id: acme
        name: support bot (prod)
        key_env: ACME_SUPPORT_KEY       # the plain key, read from this env var at load
        tags: [support-bot]
        limits: {rpm: 60}
      - team_id: acme
        key_digest: 3f1c...64 hex       # or the digest (HMAC-SHA256 under the same pepper)
        display_prefix: tw-Ab12C
    policies:
      - {tag: support-bot, allowed_models: [gpt-4o-mini]}

Idempotent: a record equal to the current one (timestamps aside) is not written and
not audited, so restarting with the same file writes nothing. The file never holds a
plain key: `key_env` names the variable, and error messages name the variable, never
its value. What the file does not say is kept: a key's `revoked_at_ms` (the file never
un-revokes a key revoked through the API) and every record's `created_at_ms`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Literal, Self

import yaml
from pydantic import BaseModel, StringConstraints, ValidationError, model_validator

from workers.tenancy import names
from workers.tenancy.keys import Pepper, display_prefix, is_digest, is_importable_key
from workers.tenancy.model import KeyRecord, TagPolicy, TeamRecord
from workers.tenancy.specs import STRICT, KeyId, KeySpec, PolicySpec, TeamSpec, problems
from workers.tenancy.store import ConfigValue, TenancyStore

EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
Digest = Annotated[str, StringConstraints(pattern=names.KEY_DIGEST_PATTERN)]
Prefix = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,12}$")]


class BootstrapError(ValueError):
    """The bootstrap file cannot be applied; the message names each problem (never a secret)."""


class BootstrapKey(KeySpec):
    """A key of the file: a `KeySpec` plus exactly one of `key_env` (the plain key's
    variable) or `key_digest`, and optionally its id and display prefix."""

    id: KeyId | None = None
    key_env: EnvName | None = None
    key_digest: Digest | None = None
    display_prefix: Prefix | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.key_env is None) == (self.key_digest is None):
            raise ValueError("give exactly one of key_env or key_digest")
        return self


class BootstrapFile(BaseModel):
    model_config = STRICT

    version: Literal[1] = 1
    teams: tuple[TeamSpec, ...] = ()
    keys: tuple[BootstrapKey, ...] = ()
    policies: tuple[PolicySpec, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> Self:
        for what, ids in (
            ("team id", [t.id for t in self.teams]),
            ("key id", [k.id for k in self.keys if k.id is not None]),
            ("key_env", [k.key_env for k in self.keys if k.key_env is not None]),
            ("key_digest", [k.key_digest for k in self.keys if k.key_digest is not None]),
            ("policy tag", [p.tag for p in self.policies]),
        ):
            if len(ids) != len(set(ids)):
                raise ValueError(f"a {what} appears twice")
        return self


def parse_bootstrap(text: str, source: str = "bootstrap") -> BootstrapFile:
    try:
        raw = yaml.safe_load(text)
        return BootstrapFile.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        raise BootstrapError(f"{source}: {problems(exc)}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise BootstrapError(f"{source}: not valid YAML{line}") from None


def load_bootstrap(path: Path) -> BootstrapFile:
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise BootstrapError(f"{path}: cannot be read ({exc.strerror})") from None
    return parse_bootstrap(text, str(path))


def derived_key_id(key_digest: str) -> str:
    """A stable id for a file key without one: the same digest gives the same id."""
    return "key_" + hashlib.sha256(f"tollway-bootstrap-key:{key_digest}".encode()).hexdigest()[:16]


def _key_material(
    entry: BootstrapKey, index: int, pepper: Pepper | None, environ: Mapping[str, str]
) -> tuple[str, str]:
    """(digest, display prefix) of a file key."""
    if entry.key_digest is not None:
        return entry.key_digest, entry.display_prefix or "tw-?"
    assert entry.key_env is not None
    where = f"keys.{index}.key_env ({entry.key_env})"
    if pepper is None:
        raise BootstrapError(f"{where}: TOLLWAY_KEY_PEPPER must be set to digest the key")
    plain = environ.get(entry.key_env)
    if not plain:
        raise BootstrapError(f"{where}: the environment variable is not set")
    if not is_importable_key(plain):
        raise BootstrapError(
            f"{where}: the value is not a Tollway key (`tw-` and 21-253 url-safe characters)"
        )
    return pepper.digest(plain), entry.display_prefix or display_prefix(plain)


def desired_records(
    file: BootstrapFile, pepper: Pepper | None, environ: Mapping[str, str], now_ms: int
) -> list[ConfigValue]:
    """The file as records (timestamps `now_ms`, merged with the current ones by `plan`)."""
    records: list[ConfigValue] = [
        t.record(created_at_ms=now_ms, updated_at_ms=now_ms) for t in file.teams
    ]
    records.extend(p.record(now_ms) for p in file.policies)
    for index, entry in enumerate(file.keys):
        digest, prefix = _key_material(entry, index, pepper, environ)
        assert is_digest(digest)
        key_id = entry.id or derived_key_id(digest)
        records.append(
            entry.record(
                key_id=key_id, key_digest=digest, display_prefix=prefix, created_at_ms=now_ms
            )
        )
    return records


def _merged(desired: ConfigValue, current: ConfigValue | None) -> ConfigValue:
    """`desired` with what the file does not say taken from `current`."""
    if isinstance(desired, TeamRecord) and isinstance(current, TeamRecord):
        same = dataclasses.replace(
            desired, created_at_ms=current.created_at_ms, updated_at_ms=current.updated_at_ms
        )
        return (
            current
            if same == current
            else dataclasses.replace(same, updated_at_ms=desired.updated_at_ms)
        )
    if isinstance(desired, KeyRecord) and isinstance(current, KeyRecord):
        return dataclasses.replace(
            desired, created_at_ms=current.created_at_ms, revoked_at_ms=current.revoked_at_ms
        )
    if isinstance(desired, TagPolicy) and isinstance(current, TagPolicy):
        kept = dataclasses.replace(desired, updated_at_ms=current.updated_at_ms)
        return current if kept == current else desired
    return desired


def plan(desired: Sequence[ConfigValue], store: TenancyStore) -> list[ConfigValue]:
    """The records to write so the store matches the file (unchanged ones left out).

    Raises `BootstrapError` for a key whose team is neither in the file nor in the store,
    or whose digest belongs to another key already."""
    teams = {r.team_id for r in desired if isinstance(r, TeamRecord)}
    out: list[ConfigValue] = []
    for record in desired:
        if isinstance(record, KeyRecord):
            if record.team_id not in teams and store.team(record.team_id) is None:
                raise BootstrapError(f"key {record.key_id}: no team {record.team_id}")
            holder = store.key_by_digest(record.key_digest)
            if holder is not None and holder.key_id != record.key_id:
                raise BootstrapError(
                    f"key {record.key_id}: the same key is already {holder.key_id}"
                )
            current: ConfigValue | None = store.key(record.key_id)
        elif isinstance(record, TeamRecord):
            current = store.team(record.team_id)
        else:
            current = store.tag_policy(record.tag)
        merged = _merged(record, current)
        if merged != current:
            out.append(merged)
    return out
