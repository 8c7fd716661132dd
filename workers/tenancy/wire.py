"""The bytes of the tenancy topics: versioned JSON values, ids as keys. Pure.

    tollway.config.teams     key team_id  value {"v": 1, "kind": "team",   "record": TeamRecord}
    tollway.config.keys      key key_id   value {"v": 1, "kind": "key",    "record": KeyRecord}
    tollway.config.policies  key tag      value {"v": 1, "kind": "policy", "record": TagPolicy}
                             (a null value is a tombstone: the entity is deleted)
    tollway.audit            key <entity>:<id>  value {"v": 1, "event": AuditEvent}

Why JSON and not Avro like the data topics (docs/decisions/0013): a handful of
records per minute at most, read by people (`kafka-console-consumer`) and by GitOps
tooling as often as by services; the dataclasses of model.py are the schema, checked
by pydantic on the way in. Evolution: a new field gets a default and keeps `v: 1`
(readers ignore fields they do not know, and fill the ones they miss with defaults);
`v` goes up only when a field changes meaning, and a reader that meets a version it
does not know refuses the record (`CorruptRecord`).

Decoding is strict about identity: the message key must be a valid id and equal to
the record's own id, so a record cannot be filed under another entity. Error
messages name the topic, the offset's reason and the field, never a value (a value
could be a digest).
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from pydantic import TypeAdapter, ValidationError

from schemas import topics
from schemas.errors import CorruptRecord
from workers.tenancy import names
from workers.tenancy.audit import AuditEvent
from workers.tenancy.model import KeyRecord, TagPolicy, TeamRecord
from workers.tenancy.store import ConfigChange, ConfigKind, ConfigValue

VERSION: Final = 1

TOPIC_OF: Final[dict[ConfigKind, str]] = {
    "team": topics.CONFIG_TEAMS.name,
    "key": topics.CONFIG_KEYS.name,
    "policy": topics.CONFIG_POLICIES.name,
}
KIND_OF_TOPIC: Final[dict[str, ConfigKind]] = {topic: kind for kind, topic in TOPIC_OF.items()}

_ADAPTERS: Final[dict[ConfigKind, TypeAdapter[Any]]] = {
    "team": TypeAdapter(TeamRecord),
    "key": TypeAdapter(KeyRecord),
    "policy": TypeAdapter(TagPolicy),
}
_VALID_ID: Final = {"team": names.is_team_id, "key": names.is_key_id, "policy": names.is_tag}


def record_data(kind: ConfigKind, value: ConfigValue) -> dict[str, Any]:
    """A record as JSON-ready data (every field, the digest included: config topics only)."""
    data: dict[str, Any] = _ADAPTERS[kind].dump_python(value, mode="json")
    return data


def encode_change(change: ConfigChange) -> tuple[str, bytes, bytes | None]:
    """(topic, key, value) of a change; value None = tombstone."""
    key = change.entity_id.encode()
    if change.value is None:
        return TOPIC_OF[change.kind], key, None
    body = {"v": VERSION, "kind": change.kind, "record": record_data(change.kind, change.value)}
    return TOPIC_OF[change.kind], key, orjson.dumps(body)


def entity_of(topic: str, key: bytes | None) -> tuple[ConfigKind, str] | None:
    """The entity a config message is filed under, or None if the key is not a valid id."""
    kind = KIND_OF_TOPIC.get(topic)
    if kind is None or key is None:
        return None
    try:
        entity_id = key.decode("ascii")
    except UnicodeDecodeError:
        return None
    return (kind, entity_id) if _VALID_ID[kind](entity_id) else None


def decode_change(topic: str, key: bytes | None, value: bytes | None) -> ConfigChange:
    """The change a config message stands for; `CorruptRecord` if it is not a valid one."""
    entity = entity_of(topic, key)
    if entity is None:
        raise CorruptRecord(f"{topic}: a message key that is not a valid id")
    kind, entity_id = entity
    if value is None:
        return ConfigChange(kind, entity_id, None)
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise CorruptRecord(f"{topic}: not JSON") from exc
    if not isinstance(body, dict) or body.get("v") != VERSION or body.get("kind") != kind:
        raise CorruptRecord(f"{topic}: not a version-{VERSION} {kind} record")
    try:
        record = _ADAPTERS[kind].validate_python(body.get("record"))
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in err["loc"]) for err in exc.errors()})
        raise CorruptRecord(f"{topic}: invalid fields {fields}") from None
    change = ConfigChange.upsert(record)
    if change.entity_id != entity_id:
        raise CorruptRecord(f"{topic}: the record's id differs from its message key")
    return change


def encode_audit(event: AuditEvent) -> tuple[bytes, bytes]:
    """(key, value) of an audit event on `tollway.audit`."""
    body = {
        "v": VERSION,
        "event": {
            "audit_id": event.audit_id,
            "at_ms": event.at_ms,
            "actor": event.actor,
            "source": event.source,
            "action": event.action,
            "entity": event.entity,
            "entity_id": event.entity_id,
            "before": event.before,
            "after": event.after,
        },
    }
    return event.kafka_key.encode(), orjson.dumps(body)


def decode_audit(value: bytes) -> dict[str, Any]:
    """An audit event as data (for tools and tests)."""
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise CorruptRecord(f"{topics.AUDIT.name}: not JSON") from exc
    if (
        not isinstance(body, dict)
        or body.get("v") != VERSION
        or not isinstance(body["event"], dict)
    ):
        raise CorruptRecord(f"{topics.AUDIT.name}: not a version-{VERSION} audit event")
    event: dict[str, Any] = body["event"]
    return event
