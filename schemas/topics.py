"""Every Kafka topic Tollway uses, in the order data flows through them.

One place names them so that producers, consumers, the topic bootstrap
(`deploy/topics.py`) and tests cannot drift apart. Partition counts bound the
parallelism of each stage's consumer group; configs are the Kafka topic configs
applied at creation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

_HOUR_MS: Final = 3_600_000
_DAY_MS: Final = 24 * _HOUR_MS


@dataclass(frozen=True, slots=True)
class Topic:
    """A Kafka topic: name, partition count and creation-time configs."""

    name: str
    partitions: int
    config: MappingProxyType[str, str] = field(default_factory=lambda: MappingProxyType({}))
    doc: str = ""


def _cfg(**kv: str) -> MappingProxyType[str, str]:
    return MappingProxyType({k.replace("_", "."): v for k, v in kv.items()})


REQUEST_RECORD_MAX_BYTES: Final = 12 * 1024 * 1024
"""Largest request record: the ingress's 10 MiB body limit plus the envelope, with room.

Kafka's default (1 MiB) would refuse a large prompt (a few base64 images) after the
ingress had accepted it; the request topics and the ingress producer say 12 MiB.
"""

REQUESTS_INTERACTIVE: Final = Topic(
    "tollway.requests.interactive",
    partitions=6,
    config=_cfg(retention_ms=str(3 * _DAY_MS), max_message_bytes=str(REQUEST_RECORD_MAX_BYTES)),
    doc="Sync and async single requests, keyed by request_id; consumed by routers.",
)
REQUESTS_BATCH: Final = Topic(
    "tollway.requests.batch",
    partitions=6,
    config=_cfg(retention_ms=str(7 * _DAY_MS), max_message_bytes=str(REQUEST_RECORD_MAX_BYTES)),
    doc="Requests expanded from batch files; a lower-priority lane for routers.",
)
REPLIES: Final = Topic(
    "tollway.replies",
    partitions=8,
    config=_cfg(retention_ms=str(_HOUR_MS)),
    doc="Results of sync requests, sent to the partition the waiting ingress reads.",
)
RESULTS: Final = Topic(
    "tollway.results",
    partitions=6,
    # delete, not compact: after a redelivery two results share a key and every
    # reader keeps the FIRST; compaction would keep the last (docs/decisions/0003).
    config=_cfg(retention_ms=str(7 * _DAY_MS)),
    doc="The final result of each execution, keyed by request_id; readers keep the first.",
)
RESULT_MODE_HEADER: Final = "tollway-mode"
"""Header of every `tollway.results` record: the request's mode (sync, async, batch), so a
reader that keeps only some kinds (the ingress's poll index: async) skips the rest
without decoding them."""
ATTEMPTS: Final = Topic(
    "tollway.attempts",
    partitions=6,
    config=_cfg(retention_ms=str(7 * _DAY_MS)),
    doc="One record per provider call (real spend), keyed by request_id.",
)
USAGE: Final = Topic(
    "tollway.usage",
    partitions=6,
    config=_cfg(retention_ms=str(30 * _DAY_MS)),
    doc="One priced record per provider call (cost processor), keyed by team_id.",
)
BUDGET_STATE: Final = Topic(
    "tollway.budget-state",
    partitions=6,
    config=_cfg(
        cleanup_policy="compact", min_cleanable_dirty_ratio="0.1", segment_ms=str(_HOUR_MS)
    ),
    doc="Latest spend per budget scope and window (budget processor); read by enforcement.",
)
BUDGET_EVENTS: Final = Topic(
    "tollway.budget-events",
    partitions=3,
    config=_cfg(retention_ms=str(30 * _DAY_MS)),
    doc="Threshold crossings (50/80/100%) for webhooks and analytics.",
)
IDEMPOTENCY: Final = Topic(
    "tollway.idempotency",
    partitions=6,
    # compact: one entry per key; delete: an entry leaves once older than the retention
    # (2 x the ingress's default 24 h, so a longer setting up to 48 h still finds its
    # entries; readers also ignore entries past their own expires_at_ms).
    config=_cfg(
        cleanup_policy="compact,delete",
        retention_ms=str(2 * _DAY_MS),
        min_cleanable_dirty_ratio="0.1",
        segment_ms=str(_HOUR_MS),
        max_message_bytes=str(2 * 1024 * 1024),
    ),
    doc="Responses kept under their Idempotency-Key, keyed by <team>/<key>; read by every ingress.",
)
# Config topics: compacted (the latest record per id is the truth, a tombstone deletes),
# one partition each (one order, one end offset to catch up to; every service reads the
# whole topic anyway). Values are versioned JSON (docs/decisions/0013).
_CONFIG_TOPIC: Final = _cfg(
    cleanup_policy="compact", min_cleanable_dirty_ratio="0.1", segment_ms=str(_DAY_MS)
)
CONFIG_TEAMS: Final = Topic(
    "tollway.config.teams",
    partitions=1,
    config=_CONFIG_TOPIC,
    doc="Teams, keyed by team id (tombstone = deleted); materialised by every service.",
)
CONFIG_KEYS: Final = Topic(
    "tollway.config.keys",
    partitions=1,
    config=_CONFIG_TOPIC,
    doc="Virtual keys (their digest, never the key), keyed by key id; read by every service.",
)
CONFIG_POLICIES: Final = Topic(
    "tollway.config.policies",
    partitions=1,
    config=_CONFIG_TOPIC,
    doc="Tag policies (approved models per tag), keyed by tag; materialised by every service.",
)
AUDIT: Final = Topic(
    "tollway.audit",
    partitions=1,
    config=_cfg(retention_ms=str(400 * _DAY_MS)),
    doc="Append-only audit of config changes (who, what, when, before/after; no secrets).",
)
CACHE_RECORD_MAX_BYTES: Final = 1024 * 1024
"""Largest tollway.cache record: an answer (at most TOLLWAY_CACHE_MAX_ENTRY_BYTES, which
must stay 64 KiB below this), its prompt embedding (1.5 KiB) and ids."""
CACHE: Final = Topic(
    "tollway.cache",
    partitions=6,
    # compact: one record per cache key; delete: an entry leaves once older than the
    # longest TTL a router may set (7 days). Readers drop entries at expires_at_ms.
    config=_cfg(
        cleanup_policy="compact,delete",
        retention_ms=str(7 * _DAY_MS),
        min_cleanable_dirty_ratio="0.1",
        segment_ms=str(_HOUR_MS),
        max_message_bytes=str(CACHE_RECORD_MAX_BYTES),
    ),
    doc="Cached answers keyed by <scope>/<sha256>; every router holds a bounded index of it.",
)
DEAD_LETTERS: Final = Topic(
    "tollway.dead-letters",
    partitions=1,
    config=_cfg(retention_ms=str(30 * _DAY_MS), max_message_bytes=str(REQUEST_RECORD_MAX_BYTES)),
    doc="Records no stage could decode or process, with the reason in headers.",
)

ALL_TOPICS: Final[tuple[Topic, ...]] = (
    REQUESTS_INTERACTIVE,
    REQUESTS_BATCH,
    REPLIES,
    RESULTS,
    ATTEMPTS,
    USAGE,
    BUDGET_STATE,
    BUDGET_EVENTS,
    IDEMPOTENCY,
    CONFIG_TEAMS,
    CONFIG_KEYS,
    CONFIG_POLICIES,
    AUDIT,
    CACHE,
    DEAD_LETTERS,
)

CONFIG_TOPICS: Final[tuple[Topic, ...]] = (CONFIG_TEAMS, CONFIG_KEYS, CONFIG_POLICIES)
"""The tenancy config topics every service materialises (workers/tenancy/config_kafka.py)."""
