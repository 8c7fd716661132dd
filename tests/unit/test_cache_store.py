"""workers/cache/store.py: per-entry TTL on a hand-driven clock, LRU bounds (entries, bytes)."""

from __future__ import annotations

import pytest

from schemas.records import ZERO_USAGE
from workers.cache.store import ENTRY_OVERHEAD_BYTES, CachedAnswer, ExactStore

T0 = 1_700_000_000_000


def answer(
    key: str, *, body: bytes = b"{}", created: int = T0, ttl_ms: int = 60_000
) -> CachedAnswer:
    return CachedAnswer(
        key=key,
        scope=key.split("/", maxsplit=1)[0],
        model="m",
        body=body,
        provider="openai",
        upstream_model="m",
        served_model="m-1",
        usage=ZERO_USAGE.copy(),
        created_at_ms=created,
        expires_at_ms=created + ttl_ms,
    )


def test_an_entry_is_served_until_its_own_expiry_and_never_after() -> None:
    store = ExactStore(max_entries=10, max_bytes=10**6)
    store.put(answer("t/short", ttl_ms=1_000), T0)
    store.put(answer("t/long", ttl_ms=10_000), T0)
    assert store.get("t/short", T0 + 999) is not None
    assert store.get("t/short", T0 + 1_000) is None  # expiry is exclusive
    assert "t/short" not in store
    assert store.get("t/long", T0 + 9_999) is not None
    assert store.get("t/long", T0 + 10_000) is None
    assert store.expirations == 2


def test_purge_drops_expired_entries_in_expiry_order() -> None:
    store = ExactStore(max_entries=10, max_bytes=10**6)
    for i, ttl in enumerate((3_000, 1_000, 2_000)):
        store.put(answer(f"t/{i}", ttl_ms=ttl), T0)
    assert [a.key for a in store.purge(T0 + 2_000)] == ["t/1", "t/2"]
    assert len(store) == 1
    assert store.purge(T0 + 2_500) == []
    assert [a.key for a in store.purge(T0 + 3_000)] == ["t/0"]
    assert store.bytes == 0


def test_an_expired_entry_is_not_stored() -> None:
    store = ExactStore(max_entries=10, max_bytes=10**6)
    late = answer("t/x", created=T0 - 120_000)
    assert store.put(late, T0) == [late]
    assert len(store) == 0


def test_lru_by_entry_count_keeps_the_recently_used() -> None:
    store = ExactStore(max_entries=3, max_bytes=10**6)
    for k in ("t/a", "t/b", "t/c"):
        store.put(answer(k), T0)
    assert store.get("t/a", T0) is not None  # a is now the most recently used
    gone = store.put(answer("t/d"), T0)
    assert [g.key for g in gone] == ["t/b"]
    assert {k for k in ("t/a", "t/b", "t/c", "t/d") if k in store} == {"t/a", "t/c", "t/d"}
    assert store.evictions == 1


def test_lru_by_bytes() -> None:
    size = 1_000 + ENTRY_OVERHEAD_BYTES
    store = ExactStore(max_entries=100, max_bytes=3 * size)
    for k in ("t/a", "t/b", "t/c"):
        store.put(answer(k, body=b"x" * 1_000), T0)
    assert store.bytes == 3 * size
    gone = store.put(answer("t/d", body=b"x" * 1_500), T0)
    assert [g.key for g in gone] == ["t/a", "t/b"]
    assert store.bytes <= store.max_bytes
    too_big = answer("t/huge", body=b"x" * (4 * size))
    assert store.put(too_big, T0) == [too_big]
    assert "t/huge" not in store


def test_replacing_an_entry_accounts_its_bytes_once() -> None:
    store = ExactStore(max_entries=10, max_bytes=10**6)
    store.put(answer("t/a", body=b"x" * 100), T0)
    gone = store.put(answer("t/a", body=b"y" * 10), T0 + 1)
    assert [g.body for g in gone] == [b"x" * 100]
    assert store.bytes == 10 + ENTRY_OVERHEAD_BYTES
    assert len(store) == 1


def test_bounds_must_leave_room() -> None:
    with pytest.raises(ValueError, match="room"):
        ExactStore(max_entries=0, max_bytes=1)
