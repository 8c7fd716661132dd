"""RecentKeys: a dedup set bounded by age and by count."""

from __future__ import annotations

import pytest

from workers.recent_keys import RecentKeys


def test_keys_are_forgotten_after_their_age() -> None:
    keys: RecentKeys[str] = RecentKeys(max_age_s=10, max_keys=100)
    keys.add("a", 0.0)
    keys.add("b", 5.0)
    assert "a" in keys
    assert "b" in keys
    keys.add("c", 10.0)  # "a" is exactly 10 s old: kept
    assert "a" in keys
    keys.add("d", 10.5)
    assert "a" not in keys
    assert list(keys._added_s) == ["b", "c", "d"]
    keys.expire(100.0)
    assert len(keys) == 0


def test_the_count_is_a_backstop() -> None:
    keys: RecentKeys[int] = RecentKeys(max_age_s=3600, max_keys=3)
    for i in range(5):
        keys.add(i, float(i))
    assert [k for k in range(5) if k in keys] == [2, 3, 4]


def test_adding_again_refreshes_and_discard_forgets() -> None:
    keys: RecentKeys[str] = RecentKeys(max_age_s=10, max_keys=10)
    keys.add("a", 0.0)
    keys.add("b", 1.0)
    keys.add("a", 9.0)  # moved to the back with its new time
    keys.add("c", 11.5)  # "b" (1.0) expires, "a" (9.0) stays
    assert "a" in keys
    assert "b" not in keys
    keys.discard("a")
    keys.discard("never")
    assert "a" not in keys
    assert len(keys) == 1


@pytest.mark.parametrize(("age", "count"), [(0, 10), (-1, 10), (10, 0)])
def test_bounds_must_make_sense(age: float, count: int) -> None:
    with pytest.raises(ValueError, match="max_age_s must be positive"):
        RecentKeys(age, count)


def test_steady_traffic_plateaus() -> None:
    """8 keys a second for an hour with a 15-minute age: the set stops at 15 minutes' worth."""
    keys: RecentKeys[int] = RecentKeys(max_age_s=900, max_keys=100_000)
    sizes = []
    for i in range(8 * 3600):
        keys.add(i, i / 8)
        if i % (8 * 600) == 0:
            sizes.append(len(keys))
    assert sizes[-1] == sizes[-2] == 8 * 900 + 1
