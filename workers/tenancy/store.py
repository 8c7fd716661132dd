"""The tenancy config materialised in memory: a `TenancyView` fed one change at a time. Pure.

Every service holds one `TenancyStore`, fed from the compacted `tollway.config.*`
topics in log order (config_kafka.py); tests and the admin API's fake feed it
directly. A change is an upsert of a whole record or a tombstone (delete) for one
entity id; `apply` returns what the entity was before and is after, which is also
what an audit record needs.

Indexes, all kept in step by `apply` (lookups are O(1), no I/O):

    teams        team_id -> TeamRecord
    keys         key_id  -> KeyRecord
    by digest    key_digest -> key_id    (the ingress's lookup of a presented key)
    team keys    team_id -> {key_id}     (listing, and refusing to delete a team with keys)
    policies     tag -> TagPolicy

A record whose id does not match the entity id it was written under is refused
(`ValueError`): the Kafka adapter drops it with a log line. Two keys never share a
digest (the admin API and the bootstrap refuse it); if a hand-written record did, the
digest resolves to the key written last, and deleting that key un-indexes the digest
(the other key then fails to authenticate: closed, not open).

Revocation and expiry are properties of the record (`KeyRecord.is_active(now_ms)`),
so a revoked key stays listed (and audited) until it is deleted; `active_key` is the
one call the ingress needs: the active key of a digest whose team exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from workers.tenancy.model import KeyRecord, TagPolicy, TeamRecord

ConfigKind = Literal["team", "key", "policy"]
ConfigValue = TeamRecord | KeyRecord | TagPolicy


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """One record of a config topic: the entity's new value, or None for a tombstone."""

    kind: ConfigKind
    entity_id: str
    value: ConfigValue | None

    @classmethod
    def upsert(cls, value: ConfigValue) -> ConfigChange:
        return cls(kind_of(value), entity_id_of(value), value)


@dataclass(frozen=True, slots=True)
class Applied:
    """The entity before and after one change (None = absent)."""

    change: ConfigChange
    before: ConfigValue | None
    after: ConfigValue | None

    @property
    def changed(self) -> bool:
        return self.before != self.after


def kind_of(value: ConfigValue) -> ConfigKind:
    if isinstance(value, TeamRecord):
        return "team"
    if isinstance(value, KeyRecord):
        return "key"
    return "policy"


def entity_id_of(value: ConfigValue) -> str:
    if isinstance(value, TeamRecord):
        return value.team_id
    if isinstance(value, KeyRecord):
        return value.key_id
    return value.tag


class TenancyStore:
    """`TenancyView` over dictionaries; `apply` is the only writer."""

    def __init__(self) -> None:
        self._teams: dict[str, TeamRecord] = {}
        self._keys: dict[str, KeyRecord] = {}
        self._by_digest: dict[str, str] = {}
        self._team_keys: dict[str, set[str]] = {}
        self._policies: dict[str, TagPolicy] = {}
        self.applied = 0
        """Changes applied so far (a cheap version number for tests and metrics)."""

    # --- TenancyView ------------------------------------------------------------------

    def key_by_digest(self, key_digest: str) -> KeyRecord | None:
        key_id = self._by_digest.get(key_digest)
        return None if key_id is None else self._keys.get(key_id)

    def key(self, key_id: str) -> KeyRecord | None:
        return self._keys.get(key_id)

    def team(self, team_id: str) -> TeamRecord | None:
        return self._teams.get(team_id)

    def tag_policy(self, tag: str) -> TagPolicy | None:
        return self._policies.get(tag)

    # --- more reads -------------------------------------------------------------------

    def active_key(self, key_digest: str, now_ms: int) -> KeyRecord | None:
        """The key of `key_digest` if it is neither revoked nor expired at `now_ms` and its
        team exists; None otherwise (the ingress answers 401 alike for every case)."""
        record = self.key_by_digest(key_digest)
        if record is None or not record.is_active(now_ms) or record.team_id not in self._teams:
            return None
        return record

    def teams(self) -> list[TeamRecord]:
        """Every team, by id."""
        return [self._teams[t] for t in sorted(self._teams)]

    def keys(self, team_id: str | None = None) -> list[KeyRecord]:
        """Every key (of one team), by key id."""
        ids = self._keys if team_id is None else self._team_keys.get(team_id, set())
        return [self._keys[k] for k in sorted(ids)]

    def key_count(self, team_id: str) -> int:
        return len(self._team_keys.get(team_id, ()))

    def tag_policies(self) -> list[TagPolicy]:
        return [self._policies[t] for t in sorted(self._policies)]

    def __iter__(self) -> Iterator[ConfigValue]:
        """Every record (teams, then policies, then keys): what a snapshot would write."""
        yield from self.teams()
        yield from self.tag_policies()
        yield from self.keys()

    def current(self, kind: ConfigKind, entity_id: str) -> ConfigValue | None:
        if kind == "team":
            return self._teams.get(entity_id)
        if kind == "key":
            return self._keys.get(entity_id)
        return self._policies.get(entity_id)

    # --- the writer -------------------------------------------------------------------

    def apply(self, change: ConfigChange) -> Applied:
        """Upsert or delete one entity; returns it before and after. Idempotent."""
        value = change.value
        if value is not None and (
            kind_of(value) != change.kind or entity_id_of(value) != change.entity_id
        ):
            raise ValueError(f"a {kind_of(value)} record filed as {change.kind} {change.entity_id}")
        before = self.current(change.kind, change.entity_id)
        if change.kind == "team":
            if value is None:
                self._teams.pop(change.entity_id, None)
            else:
                assert isinstance(value, TeamRecord)
                self._teams[change.entity_id] = value
        elif change.kind == "policy":
            if value is None:
                self._policies.pop(change.entity_id, None)
            else:
                assert isinstance(value, TagPolicy)
                self._policies[change.entity_id] = value
        else:
            self._apply_key(change.entity_id, before, value)
        self.applied += 1
        return Applied(change, before, value)

    def _apply_key(
        self, key_id: str, before: ConfigValue | None, value: ConfigValue | None
    ) -> None:
        if isinstance(before, KeyRecord):
            if self._by_digest.get(before.key_digest) == key_id:
                del self._by_digest[before.key_digest]
            owned = self._team_keys.get(before.team_id)
            if owned is not None:
                owned.discard(key_id)
                if not owned:
                    del self._team_keys[before.team_id]
        if value is None:
            self._keys.pop(key_id, None)
            return
        assert isinstance(value, KeyRecord)
        self._keys[key_id] = value
        self._by_digest[value.key_digest] = key_id
        self._team_keys.setdefault(value.team_id, set()).add(key_id)
