"""The in-memory tenancy view (workers/tenancy/store.py): apply, tombstones, indexes,
revocation and expiry; and the wire format that feeds it (wire.py)."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from schemas import topics
from schemas.errors import CorruptRecord
from workers.tenancy.model import KeyRecord, Limits, TagPolicy, TeamRecord, WalletLimits
from workers.tenancy.store import ConfigChange, TenancyStore
from workers.tenancy.wire import decode_change, encode_change

DIGEST_A = "a" * 64
DIGEST_B = "b" * 64


def team(team_id: str = "acme", **kw: object) -> TeamRecord:
    return TeamRecord(team_id=team_id, name=team_id, **kw)  # type: ignore[arg-type]


def key(key_id: str = "key_000000000000000a", digest: str = DIGEST_A, **kw: object) -> KeyRecord:
    fields: dict[str, object] = {"team_id": "acme", "display_prefix": "tw-abcde", **kw}
    return KeyRecord(key_id=key_id, key_digest=digest, **fields)  # type: ignore[arg-type]


def store_with(*records: TeamRecord | KeyRecord | TagPolicy) -> TenancyStore:
    store = TenancyStore()
    for record in records:
        store.apply(ConfigChange.upsert(record))
    return store


def test_upsert_then_lookup_by_id_and_digest() -> None:
    store = store_with(team(), key())
    assert store.team("acme") == team()
    assert store.key("key_000000000000000a") == key()
    assert store.key_by_digest(DIGEST_A) == key()
    assert store.key_by_digest(DIGEST_B) is None
    assert store.keys("acme") == [key()]
    assert store.key_count("acme") == 1


def test_apply_returns_before_and_after() -> None:
    store = store_with(team())
    renamed = dataclasses.replace(team(), name="Acme Corp")
    applied = store.apply(ConfigChange.upsert(renamed))
    assert (applied.before, applied.after, applied.changed) == (team(), renamed, True)
    again = store.apply(ConfigChange.upsert(renamed))
    assert not again.changed  # idempotent


def test_tombstone_deletes_and_unindexes() -> None:
    store = store_with(team(), key(), TagPolicy("bot", ("m",)))
    applied = store.apply(ConfigChange("key", "key_000000000000000a", None))
    assert applied.before == key()
    assert applied.after is None
    assert store.key("key_000000000000000a") is None
    assert store.key_by_digest(DIGEST_A) is None
    assert store.keys("acme") == []
    assert store.key_count("acme") == 0
    store.apply(ConfigChange("policy", "bot", None))
    store.apply(ConfigChange("team", "acme", None))
    assert store.tag_policy("bot") is None
    assert store.team("acme") is None
    store.apply(ConfigChange("team", "acme", None))  # deleting twice is fine


def test_a_key_whose_digest_changes_is_found_only_by_the_new_one() -> None:
    store = store_with(team(), key())
    store.apply(ConfigChange.upsert(key(digest=DIGEST_B)))
    assert store.key_by_digest(DIGEST_A) is None
    assert store.key_by_digest(DIGEST_B) == key(digest=DIGEST_B)


def test_a_key_moved_to_another_team_leaves_the_old_teams_index() -> None:
    store = store_with(team(), team("beta"), key())
    store.apply(ConfigChange.upsert(key(team_id="beta")))
    assert store.keys("acme") == []
    assert store.key_count("beta") == 1


def test_deleting_a_key_keeps_another_keys_digest() -> None:
    store = store_with(team(), key(), key("key_000000000000000b", DIGEST_B))
    store.apply(ConfigChange("key", "key_000000000000000a", None))
    assert store.key_by_digest(DIGEST_B) == key("key_000000000000000b", DIGEST_B)


def test_a_record_filed_under_another_id_is_refused() -> None:
    store = TenancyStore()
    with pytest.raises(ValueError, match="filed as"):
        store.apply(ConfigChange("team", "other", team()))
    with pytest.raises(ValueError, match="filed as"):
        store.apply(ConfigChange("key", "acme", team()))
    assert store.team("acme") is None
    assert store.team("other") is None


@pytest.mark.parametrize(
    ("revoked_at_ms", "expires_at_ms", "now_ms", "active"),
    [
        (None, None, 1_000, True),
        (900, None, 1_000, False),  # revoked before now
        (1_000, None, 1_000, False),  # revoked at now
        (1_100, None, 1_000, True),  # revocation scheduled later
        (None, 1_000, 999, True),
        (None, 1_000, 1_000, False),  # expired at its expiry instant
        (None, 1_000, 5_000, False),
    ],
)
def test_active_key_honours_revocation_and_expiry(
    revoked_at_ms: int | None, expires_at_ms: int | None, now_ms: int, active: bool
) -> None:
    record = key(revoked_at_ms=revoked_at_ms, expires_at_ms=expires_at_ms)
    store = store_with(team(), record)
    assert (store.active_key(DIGEST_A, now_ms) is not None) == active
    assert store.key_by_digest(DIGEST_A) == record  # the raw lookup still finds it


def test_active_key_needs_its_team() -> None:
    store = store_with(key())
    assert store.active_key(DIGEST_A, 0) is None
    store.apply(ConfigChange.upsert(team()))
    assert store.active_key(DIGEST_A, 0) == key()


def test_listings_are_sorted_and_complete() -> None:
    store = store_with(team("b"), team("a"), TagPolicy("z", ("m",)), TagPolicy("y", ("m",)), key())
    assert [t.team_id for t in store.teams()] == ["a", "b"]
    assert [p.tag for p in store.tag_policies()] == ["y", "z"]
    assert len(list(store)) == 5
    assert store.applied == 5


# --- the wire format -------------------------------------------------------------------------


FULL_TEAM = TeamRecord(
    "acme",
    "Acme",
    ("gpt-4o-mini",),
    Limits(60, 1000, 3),
    WalletLimits(1, 2, 3, 4),
    {"owner": "ops"},
    1,
    2,
)
FULL_KEY = KeyRecord(
    "key_00000000000000ff", "acme", DIGEST_A, "tw-abcde", "bot", ("t",), ("m",),
    Limits(rpm=5), 10, 20, {"a": "b"}, 3,
)  # fmt: skip


@pytest.mark.parametrize("record", [FULL_TEAM, FULL_KEY, TagPolicy("bot", ("m1", "m2"), 7)])
def test_records_round_trip_through_the_wire(record: TeamRecord | KeyRecord | TagPolicy) -> None:
    change = ConfigChange.upsert(record)
    topic, key_bytes, value = encode_change(change)
    assert topic in {t.name for t in topics.CONFIG_TOPICS}
    assert value is not None
    assert orjson.loads(value)["v"] == 1
    assert decode_change(topic, key_bytes, value) == change


def test_tombstones_round_trip() -> None:
    change = ConfigChange("key", "key_00000000000000ff", None)
    assert encode_change(change) == (topics.CONFIG_KEYS.name, b"key_00000000000000ff", None)
    assert decode_change(*encode_change(change)) == change


def test_readers_ignore_unknown_fields_and_default_missing_ones() -> None:
    value = orjson.dumps(
        {
            "v": 1,
            "kind": "policy",
            "record": {"tag": "bot", "allowed_models": ["m"], "added_later": {"x": 1}},
        }
    )
    change = decode_change(topics.CONFIG_POLICIES.name, b"bot", value)
    assert change.value == TagPolicy("bot", ("m",), 0)


@pytest.mark.parametrize(
    ("topic", "key_bytes", "value"),
    [
        (topics.CONFIG_TEAMS.name, None, b"{}"),
        (topics.CONFIG_TEAMS.name, b"bad id!", None),
        (topics.CONFIG_KEYS.name, b"acme", None),  # not a key id
        ("tollway.other", b"acme", None),
        (topics.CONFIG_TEAMS.name, b"acme", b"not json"),
        (topics.CONFIG_TEAMS.name, b"acme", b'{"v": 2, "kind": "team", "record": {}}'),
        (topics.CONFIG_TEAMS.name, b"acme", b'{"v": 1, "kind": "key", "record": {}}'),
        (topics.CONFIG_TEAMS.name, b"acme", b'{"v": 1, "kind": "team", "record": {"x": 1}}'),
        (
            topics.CONFIG_TEAMS.name,
            b"acme",
            b'{"v": 1, "kind": "team", "record": {"team_id": "beta", "name": "b"}}',
        ),
    ],
)
def test_undecodable_config_records_are_corrupt(
    topic: str, key_bytes: bytes | None, value: bytes | None
) -> None:
    with pytest.raises(CorruptRecord):
        decode_change(topic, key_bytes, value)


def test_corrupt_record_messages_do_not_carry_values() -> None:
    value = orjson.dumps(
        {"v": 1, "kind": "key", "record": {"key_id": "key_00000000000000ff", "key_digest": 7}}
    )
    with pytest.raises(CorruptRecord) as caught:
        decode_change(topics.CONFIG_KEYS.name, b"key_00000000000000ff", value)
    assert "key_digest" in str(caught.value)
    assert "7" not in str(caught.value).replace("key_00000000000000ff", "")
