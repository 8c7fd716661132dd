"""analytics/loader/batching.py: flush on size or age, bounded buffer, deterministic tokens."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from analytics.loader.batching import Batcher

R0 = ("tollway.results", 0)
R1 = ("tollway.results", 1)
U0 = ("tollway.usage", 0)


def test_due_on_size() -> None:
    batcher = Batcher(max_rows=3, max_age_ms=1_000, max_buffered_rows=10)
    for offset in range(2):
        batcher.add(R0, offset, ("row",), now_ms=0)
    assert not batcher.due(now_ms=0)
    batcher.add(R0, 2, ("row",), now_ms=0)
    assert batcher.due(now_ms=0)


@pytest.mark.parametrize(("now_ms", "due"), [(999, False), (1_000, True), (5_000, True)])
def test_due_on_age_of_the_first_record(now_ms: int, due: bool) -> None:
    batcher = Batcher(max_rows=100, max_age_ms=1_000, max_buffered_rows=100)
    batcher.add(R0, 0, ("row",), now_ms=0)
    batcher.add(R0, 1, ("row",), now_ms=900)
    assert batcher.due(now_ms) is due


def test_an_empty_batcher_is_never_due_and_takes_nothing() -> None:
    batcher = Batcher(max_rows=1, max_age_ms=1, max_buffered_rows=1)
    assert not batcher.due(now_ms=10**12)
    assert batcher.take() is None


def test_skipped_records_are_committed_but_hold_no_row() -> None:
    batcher = Batcher(max_rows=10, max_age_ms=100, max_buffered_rows=10)
    batcher.add(R0, 7, None, now_ms=0)
    assert batcher.buffered_rows == 0
    assert batcher.due(now_ms=100)  # its offset still has to be committed
    batch = batcher.take()
    assert batch is not None
    assert batch.row_count == 0
    assert batch.commit_positions() == {R0: 8}


def test_take_groups_rows_by_topic_in_partition_and_offset_order() -> None:
    batcher = Batcher(max_rows=100, max_age_ms=100, max_buffered_rows=100)
    batcher.add(R1, 5, ("r1-5",), 0)
    batcher.add(U0, 0, ("u0-0",), 0)
    batcher.add(R0, 10, ("r0-10",), 0)
    batcher.add(R0, 12, ("r0-12",), 0)
    batcher.add(R1, 6, None, 0)
    batch = batcher.take()
    assert batch is not None
    assert batch.topics() == ["tollway.results", "tollway.usage"]
    assert batch.rows_of("tollway.results") == [("r0-10",), ("r0-12",), ("r1-5",)]
    assert batch.commit_positions() == {R0: 13, R1: 7, U0: 1}
    assert batch.token("tollway.results") == "tollway.results/0:10-12,1:5-6"
    assert batch.token("tollway.usage") == "tollway.usage/0:0-0"
    assert batcher.buffered_rows == 0
    assert batcher.take() is None


def test_the_same_records_give_the_same_token_whatever_the_arrival_order() -> None:
    tokens = set()
    for order in ([R0, R1], [R1, R0]):
        batcher = Batcher(max_rows=10, max_age_ms=10, max_buffered_rows=10)
        for tp in order:
            batcher.add(tp, 1, ("x",), 0)
            batcher.add(tp, 2, ("y",), 0)
        batch = batcher.take()
        assert batch is not None
        tokens.add(batch.token("tollway.results"))
    assert tokens == {"tollway.results/0:1-2,1:1-2"}


def test_room_shrinks_to_zero_at_the_bound() -> None:
    batcher = Batcher(max_rows=2, max_age_ms=10, max_buffered_rows=3)
    assert batcher.room() == 3
    for offset in range(3):
        batcher.add(R0, offset, ("row",), 0)
    assert batcher.room() == 0
    batcher.take()
    assert batcher.room() == 3


def test_drop_forgets_revoked_partitions() -> None:
    batcher = Batcher(max_rows=10, max_age_ms=10, max_buffered_rows=10)
    batcher.add(R0, 0, ("a",), 0)
    batcher.add(R1, 0, ("b",), 0)
    batcher.add(R1, 1, ("c",), 0)
    assert batcher.drop([R1, U0]) == 2
    batch = batcher.take()
    assert batch is not None
    assert batch.commit_positions() == {R0: 1}
    batcher.add(R0, 5, ("d",), 0)
    assert batcher.drop([R0]) == 1
    assert not batcher.due(now_ms=10**9)


@pytest.mark.parametrize("offset", [4, 3])
def test_records_out_of_order_are_refused(offset: int) -> None:
    batcher = Batcher(max_rows=10, max_age_ms=10, max_buffered_rows=10)
    batcher.add(R0, 4, ("a",), 0)
    with pytest.raises(ValueError, match="out of order"):
        batcher.add(R0, offset, ("b",), 0)


@pytest.mark.parametrize(("max_rows", "max_buffered"), [(0, 10), (11, 10)])
def test_bounds_are_checked(max_rows: int, max_buffered: int) -> None:
    with pytest.raises(ValueError, match="max_rows"):
        Batcher(max_rows=max_rows, max_age_ms=10, max_buffered_rows=max_buffered)


@given(st.lists(st.tuples(st.sampled_from([R0, R1, U0]), st.booleans()), max_size=60))
def test_every_offset_is_covered_once_across_batches(
    adds: list[tuple[tuple[str, int], bool]],
) -> None:
    batcher = Batcher(max_rows=4, max_age_ms=10, max_buffered_rows=8)
    next_offset: dict[tuple[str, int], int] = {}
    covered: dict[tuple[str, int], list[int]] = {}
    rows = 0
    for i, (tp, has_row) in enumerate(adds):
        offset = next_offset.get(tp, 0)
        next_offset[tp] = offset + 1
        batcher.add(tp, offset, ("r",) if has_row else None, now_ms=i)
        assert batcher.buffered_rows <= 8 or not has_row
        if batcher.due(now_ms=i) or i == len(adds) - 1:
            batch = batcher.take()
            assert batch is not None
            rows += batch.row_count
            for part, (first, last) in batch.ranges.items():
                covered.setdefault(part, []).extend(range(first, last + 1))
    assert rows == sum(1 for _, has_row in adds if has_row)
    assert covered == {tp: list(range(n)) for tp, n in next_offset.items()}
