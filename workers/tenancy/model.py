"""Tenancy's vocabulary: organisation -> teams -> virtual keys, with limits and policies. Pure.

These are the values the admin API writes to the compacted `tollway.config.*` topics
and every service materialises in memory (`TenancyView`). They are plain frozen
dataclasses so that ingress, routers and tests share one shape without a framework.

Units: times in epoch milliseconds (`*_ms`), money in nano-USD, sizes in bytes or
tokens as named. `None` for a limit means "no limit at this level".

Secrets: a `KeyRecord` holds only the key's digest (HMAC-SHA256 with the server-side
pepper, see keys.py) and a short display prefix; the plain key exists once, in the
answer to the create call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Limits:
    """Rate limits of one key or one team. Enforced by the partition-owning router.

    rpm: requests admitted per rolling 60 s; tpm: tokens per rolling 60 s (prompt
    estimate + max_tokens at admission, settled to real usage); max_concurrency:
    provider calls in flight at once.
    """

    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None

    def is_unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None and self.max_concurrency is None


@dataclass(frozen=True, slots=True)
class WalletLimits:
    """Denial-of-wallet caps of a team; each `None` means the gateway-wide default applies.

    max_input_bytes: request body size; max_output_tokens: the largest `max_tokens`
    (or `max_completion_tokens`) a request may ask for, and the `max_completion_tokens`
    written into a request that names neither; max_batch_lines: lines in one
    batch input file; max_queued_requests: async + batch work accepted but not finished.
    """

    max_input_bytes: int | None = None
    max_output_tokens: int | None = None
    max_batch_lines: int | None = None
    max_queued_requests: int | None = None


@dataclass(frozen=True, slots=True)
class TeamRecord:
    """One team. `allowed_models` empty = every model in the routing table."""

    team_id: str
    name: str
    allowed_models: tuple[str, ...] = ()
    limits: Limits = Limits()
    wallet: WalletLimits = WalletLimits()
    metadata: Mapping[str, str] = field(default_factory=dict)
    created_at_ms: int = 0
    updated_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One virtual key, as stored: never the key itself.

    key_id: public id (`key_...`), safe in logs and rows; key_digest: hex HMAC-SHA256
    of the plain key with the pepper; display_prefix: the first characters of the key
    (`tw-AbC1...`) so a person can tell keys apart. `allowed_models` empty = the team's.
    """

    key_id: str
    team_id: str
    key_digest: str
    display_prefix: str
    name: str = ""
    tags: tuple[str, ...] = ()
    allowed_models: tuple[str, ...] = ()
    limits: Limits = Limits()
    expires_at_ms: int | None = None
    revoked_at_ms: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    created_at_ms: int = 0

    def is_active(self, now_ms: int) -> bool:
        if self.revoked_at_ms is not None and self.revoked_at_ms <= now_ms:
            return False
        return self.expires_at_ms is None or now_ms < self.expires_at_ms


@dataclass(frozen=True, slots=True)
class TagPolicy:
    """Approved models for a tag (a use case, e.g. `support-bot`). A key carrying the tag
    may use only models approved by every one of its tags' policies (and its team's)."""

    tag: str
    allowed_models: tuple[str, ...]
    updated_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, resolved from a presented virtual key at the ingress."""

    team_id: str
    key_id: str | None
    tags: tuple[str, ...] = ()
    end_user: str | None = None


class TenancyView(Protocol):
    """What ingress and routers read from the materialised config topics.

    Implementations apply a config change within 1 s of its write (the topic consumer's
    poll interval bounds it). Lookups are O(1) and never do I/O.
    """

    def key_by_digest(self, key_digest: str) -> KeyRecord | None: ...

    def key(self, key_id: str) -> KeyRecord | None: ...

    def team(self, team_id: str) -> TeamRecord | None: ...

    def tag_policy(self, tag: str) -> TagPolicy | None: ...
