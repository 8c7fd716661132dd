"""Audit events of config changes: who changed what, when, before and after. Pure.

One `AuditEvent` per config change, written to `tollway.audit` (append-only) in the
same Kafka transaction as the change itself (config_kafka.py), so the log holds an
event for every change that took effect and for none that did not.

Nothing secret is in an event: records appear as `public_fields` shows them, i.e.
without `key_digest` (the plain key never reaches a record at all). What remains
(ids, display prefix, names, limits, models, tags, timestamps, metadata) is what an
operator needs to answer "who let this key use gpt-4o, and when".

    actor   `admin` or `admin:<x-tollway-actor>` (the admin API, one shared credential:
            the header is a label the caller chooses, not an identity), `bootstrap:<file>`
    action  create | update | revoke | delete
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from workers.tenancy.model import KeyRecord
from workers.tenancy.store import Applied, ConfigKind, ConfigValue

AuditAction = Literal["create", "update", "revoke", "delete"]
AuditSource = Literal["api", "bootstrap"]

SECRET_FIELDS: Final = frozenset({"key_digest"})
"""Record fields never copied into an audit event."""


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One change: `before`/`after` are the record's public fields (None = absent)."""

    audit_id: str
    at_ms: int
    actor: str
    source: AuditSource
    action: AuditAction
    entity: ConfigKind
    entity_id: str
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None

    @property
    def kafka_key(self) -> str:
        """`<entity>:<id>`: one entity's events stay in order on one partition."""
        return f"{self.entity}:{self.entity_id}"


def new_audit_id(random: Callable[[int], bytes] = secrets.token_bytes) -> str:
    return "aud_" + random(8).hex()


def _plain(value: object) -> object:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def public_fields(value: ConfigValue | None) -> dict[str, Any] | None:
    """The record as JSON-ready data, secrets left out."""
    if value is None:
        return None
    fields = dataclasses.asdict(value)
    return {name: _plain(v) for name, v in fields.items() if name not in SECRET_FIELDS}


def action_of(before: ConfigValue | None, after: ConfigValue | None) -> AuditAction:
    """What a before/after pair means: a key whose revocation appears is `revoke`."""
    if before is None:
        return "create"
    if after is None:
        return "delete"
    if (
        isinstance(before, KeyRecord)
        and isinstance(after, KeyRecord)
        and before.revoked_at_ms is None
        and after.revoked_at_ms is not None
    ):
        return "revoke"
    return "update"


def audit_event(
    applied: Applied,
    *,
    actor: str,
    source: AuditSource,
    at_ms: int,
    audit_id: str | None = None,
) -> AuditEvent:
    """The event of one applied (or about to be applied) change."""
    return AuditEvent(
        audit_id=audit_id or new_audit_id(),
        at_ms=at_ms,
        actor=actor,
        source=source,
        action=action_of(applied.before, applied.after),
        entity=applied.change.kind,
        entity_id=applied.change.entity_id,
        before=public_fields(applied.before),
        after=public_fields(applied.after),
    )
