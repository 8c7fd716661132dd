"""The admin operations on tenancy config: validate, write change + audit, then apply.

Every change is committed the same way (`TenancyAdmin.commit`):

    1. under one lock per process, `sync()` brings the local view up to the topics' end
       (so a team created through another replica a moment ago is seen here),
    2. the new records are computed from the current ones; unchanged records are dropped
       (a restart that re-applies the same bootstrap writes, and audits, nothing),
    3. the `ConfigWriter` writes the config records and one audit event per record
       together (Kafka: one transaction) and returns once both are acknowledged,
    4. the local store applies them, so this replica reads its own writes at once;
       every other replica applies them from the topic (< 1 s).

The writer is the only I/O and is injected: `MemoryConfigWriter` is the fake for unit
tests, `KafkaConfigWriter` (config_kafka.py) the real one. If the writer fails nothing
is applied locally and the caller gets its `ServiceUnavailable` (503).

Conflicts between two replicas writing the same entity at the same instant resolve as
last-writer-wins in topic order; each write is audited with what its replica saw.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from schemas.errors import InvalidRequest, NotFound, ServiceUnavailable
from workers.tenancy.audit import AuditEvent, AuditSource, audit_event
from workers.tenancy.errors import Conflict
from workers.tenancy.keys import Pepper, RandomBytes, issue_key
from workers.tenancy.model import KeyRecord, TagPolicy, TeamRecord
from workers.tenancy.specs import KeyPatch, KeySpec, PolicySpec, TeamPatch, TeamSpec
from workers.tenancy.store import Applied, ConfigChange, ConfigValue, TenancyStore


class ConfigWriter(Protocol):
    async def write(self, changes: Sequence[ConfigChange], events: Sequence[AuditEvent]) -> None:
        """Durably write all of `changes` and `events`, or none (raise ServiceUnavailable)."""
        ...


class MemoryConfigWriter:
    """The fake writer: keeps what it was given; `available = False` makes it refuse."""

    def __init__(self) -> None:
        self.changes: list[ConfigChange] = []
        self.events: list[AuditEvent] = []
        self.available = True

    async def write(self, changes: Sequence[ConfigChange], events: Sequence[AuditEvent]) -> None:
        if not self.available:
            raise ServiceUnavailable("The config change was not saved; retry.", retry_after_s=1)
        self.changes.extend(changes)
        self.events.extend(events)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change, as the audit records it."""

    name: str
    source: AuditSource = "api"


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


async def _no_sync() -> None:
    return None


class TenancyAdmin:
    """Create, change and delete teams, keys and tag policies (one process's writer side)."""

    def __init__(
        self,
        store: TenancyStore,
        writer: ConfigWriter,
        pepper: Pepper | None,
        *,
        sync: Callable[[], Awaitable[None]] = _no_sync,
        clock_ms: Callable[[], int] = wall_ms,
        random: RandomBytes = secrets.token_bytes,
    ) -> None:
        self.store = store
        self.writer = writer
        self.pepper = pepper
        self.sync = sync
        self.clock_ms = clock_ms
        self.random = random
        self._lock = asyncio.Lock()

    # --- the one way a change is made --------------------------------------------------

    async def commit(
        self, build: Callable[[], Sequence[ConfigChange]], actor: Actor
    ) -> list[Applied]:
        """Sync, then `build()` the changes from the current store, write, apply.

        `build` runs under the lock after the sync, so it decides on the latest view; it
        raises (NotFound, Conflict, InvalidRequest) to refuse. Unchanged records are
        dropped; returns what was applied (possibly nothing)."""
        async with self._lock:
            await self.sync()
            changes = build()
            planned = [
                Applied(c, self.store.current(c.kind, c.entity_id), c.value) for c in changes
            ]
            planned = [p for p in planned if p.changed]
            if not planned:
                return []
            now_ms = self.clock_ms()
            events = [
                audit_event(p, actor=actor.name, source=actor.source, at_ms=now_ms) for p in planned
            ]
            await self.writer.write([p.change for p in planned], events)
            return [self.store.apply(p.change) for p in planned]

    # --- teams ---------------------------------------------------------------------------

    async def create_team(self, spec: TeamSpec, actor: Actor) -> TeamRecord:
        def build() -> list[ConfigChange]:
            if self.store.team(spec.id) is not None:
                raise Conflict("A team with this id exists already.", param="id")
            now_ms = self.clock_ms()
            record = spec.record(created_at_ms=now_ms, updated_at_ms=now_ms)
            return [ConfigChange.upsert(record)]

        await self.commit(build, actor)
        return self._team(spec.id)

    async def update_team(self, team_id: str, patch: TeamPatch, actor: Actor) -> TeamRecord:
        def build() -> list[ConfigChange]:
            return [ConfigChange.upsert(patch.apply(self._team(team_id), self.clock_ms()))]

        await self.commit(build, actor)
        return self._team(team_id)

    async def delete_team(self, team_id: str, actor: Actor) -> TeamRecord:
        deleted: list[TeamRecord] = []

        def build() -> list[ConfigChange]:
            team = self._team(team_id)
            if self.store.key_count(team_id):
                raise Conflict(
                    "The team still has keys: delete them first (revoked keys too).",
                    param="team_id",
                )
            deleted.append(team)
            return [ConfigChange("team", team_id, None)]

        await self.commit(build, actor)
        return deleted[0]

    # --- keys ----------------------------------------------------------------------------

    async def create_key(self, spec: KeySpec, actor: Actor) -> tuple[KeyRecord, str]:
        """The new key's record and its plain key (the only time it exists in clear)."""
        pepper = self._pepper()
        issued = issue_key(pepper, self.random)

        def build() -> list[ConfigChange]:
            if self.store.team(spec.team_id) is None:
                raise InvalidRequest("No team with this id.", param="team_id")
            now_ms = self.clock_ms()
            if spec.expires_at_ms is not None and spec.expires_at_ms <= now_ms:
                raise InvalidRequest("expires_at_ms is in the past.", param="expires_at_ms")
            if self.store.key(issued.key_id) or self.store.key_by_digest(issued.key_digest):
                raise ServiceUnavailable("Key id collision; retry.", retry_after_s=1)
            record = spec.record(
                key_id=issued.key_id,
                key_digest=issued.key_digest,
                display_prefix=issued.display_prefix,
                created_at_ms=now_ms,
            )
            return [ConfigChange.upsert(record)]

        await self.commit(build, actor)
        return self._key(issued.key_id), issued.plain_key

    async def update_key(self, key_id: str, patch: KeyPatch, actor: Actor) -> KeyRecord:
        def build() -> list[ConfigChange]:
            current = self._key(key_id)
            updated = patch.apply(current)
            if (
                "expires_at_ms" in patch.model_fields_set
                and updated.expires_at_ms is not None
                and updated.expires_at_ms != current.expires_at_ms
                and updated.expires_at_ms <= self.clock_ms()
            ):
                raise InvalidRequest(
                    "expires_at_ms is in the past (revoke the key instead).",
                    param="expires_at_ms",
                )
            return [ConfigChange.upsert(updated)]

        await self.commit(build, actor)
        return self._key(key_id)

    async def revoke_key(self, key_id: str, actor: Actor) -> KeyRecord:
        """Revoke now; a revoked key stays listed until deleted. Revoking twice is a no-op."""

        def build() -> list[ConfigChange]:
            current = self._key(key_id)
            if current.revoked_at_ms is not None:
                return []
            return [
                ConfigChange.upsert(dataclasses.replace(current, revoked_at_ms=self.clock_ms()))
            ]

        await self.commit(build, actor)
        return self._key(key_id)

    async def delete_key(self, key_id: str, actor: Actor) -> KeyRecord:
        deleted: list[KeyRecord] = []

        def build() -> list[ConfigChange]:
            deleted.append(self._key(key_id))
            return [ConfigChange("key", key_id, None)]

        await self.commit(build, actor)
        return deleted[0]

    # --- tag policies ---------------------------------------------------------------------

    async def put_policy(self, spec: PolicySpec, actor: Actor, *, create: bool) -> TagPolicy:
        """Create (`create=True`: 409 if the tag has one) or create-or-replace a policy."""

        def build() -> list[ConfigChange]:
            current = self.store.tag_policy(spec.tag)
            if create and current is not None:
                raise Conflict("This tag has a policy already.", param="tag")
            if current is not None and current.allowed_models == spec.allowed_models:
                return []
            return [ConfigChange.upsert(spec.record(self.clock_ms()))]

        await self.commit(build, actor)
        return self._policy(spec.tag)

    async def delete_policy(self, tag: str, actor: Actor) -> TagPolicy:
        deleted: list[TagPolicy] = []

        def build() -> list[ConfigChange]:
            deleted.append(self._policy(tag))
            return [ConfigChange("policy", tag, None)]

        await self.commit(build, actor)
        return deleted[0]

    # --- bootstrap -------------------------------------------------------------------------

    async def upsert(
        self, plan: Callable[[TenancyStore], Sequence[ConfigValue]], actor: Actor
    ) -> list[Applied]:
        """Write the records `plan(store)` returns (it runs on the synced store, under the
        lock), all in one write; unchanged ones are dropped."""
        return await self.commit(lambda: [ConfigChange.upsert(v) for v in plan(self.store)], actor)

    # --- lookups that refuse ----------------------------------------------------------------

    def _pepper(self) -> Pepper:
        if self.pepper is None:
            raise ServiceUnavailable("Keys cannot be issued: TOLLWAY_KEY_PEPPER is not set.")
        return self.pepper

    def _team(self, team_id: str) -> TeamRecord:
        found = self.store.team(team_id)
        if found is None:
            raise NotFound("No team with this id.", param="team_id")
        return found

    def _key(self, key_id: str) -> KeyRecord:
        found = self.store.key(key_id)
        if found is None:
            raise NotFound("No key with this id.", param="key_id")
        return found

    def _policy(self, tag: str) -> TagPolicy:
        found = self.store.tag_policy(tag)
        if found is None:
            raise NotFound("No policy for this tag.", param="tag")
        return found
