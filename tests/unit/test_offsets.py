"""workers/router/offsets.py: the commit position while records finish out of order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.router.offsets import OffsetTracker, PartitionOffsets

TP = ("tollway.requests.interactive", 0)
TP2 = ("tollway.requests.interactive", 1)


def _partition(started: list[int], finished: list[int]) -> PartitionOffsets:
    part = PartitionOffsets()
    for offset in started:
        part.start(offset)
    for offset in finished:
        part.finish(offset)
    return part


@pytest.mark.parametrize(
    ("started", "finished", "committable", "in_flight"),
    [
        ([], [], None, 0),
        ([0, 1, 2], [], None, 3),
        ([0, 1, 2], [0], 1, 2),
        ([0, 1, 2], [0, 1, 2], 3, 0),
        ([0, 1, 2], [2, 1, 0], 3, 0),  # reverse order
        ([0, 1, 2], [1, 2], None, 1),  # head still in flight: nothing to commit
        ([0, 1, 2, 3], [0, 2, 3], 1, 1),  # stops at the lowest unfinished
        ([0, 1, 2, 3], [0, 2, 3, 1], 4, 0),
        ([5, 9, 10, 20], [5], 6, 3),  # gaps (compaction, transaction markers)
        ([5, 9, 10, 20], [9, 5], 10, 2),
        ([5, 9, 10, 20], [20, 10, 9, 5], 21, 0),
        ([100], [100], 101, 0),
        ([0, 1], [0, 0], 1, 1),  # a duplicate finish of the committed head changes nothing
        ([0, 1, 2], [1, 1, 0], 2, 1),
    ],
)
def test_partition_offsets(
    started: list[int], finished: list[int], committable: int | None, in_flight: int
) -> None:
    part = _partition(started, finished)
    assert part.committable() == committable
    assert part.in_flight == in_flight


def test_committable_keeps_its_value_once_everything_finished() -> None:
    part = _partition([0, 1], [0, 1])
    part.start(2)
    assert part.committable() == 2  # 2 is in flight: the position stays at 2
    part.finish(2)
    assert part.committable() == 3


@pytest.mark.parametrize(("started", "again"), [([3], 3), ([3], 2), ([1, 5], 4)])
def test_start_out_of_order_is_refused(started: list[int], again: int) -> None:
    part = _partition(started, [])
    with pytest.raises(ValueError, match="out of order"):
        part.start(again)


def test_late_finish_of_an_already_committed_offset_is_ignored() -> None:
    # After a revoke and re-assignment the same offset can be finished twice (once by the
    # old task, once by the re-delivered one): the second finish must not count.
    part = _partition([0, 1, 2], [0, 1])
    part.finish(0)
    assert part.committable() == 2
    assert part.in_flight == 1
    part.finish(2)
    assert part.committable() == 3
    assert part.in_flight == 0


# --- OffsetTracker ----------------------------------------------------------------------


def test_tracker_reports_only_changed_positions() -> None:
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    for offset in range(3):
        tracker.start(TP, offset)
        tracker.start(TP2, 10 + offset)
    assert tracker.to_commit() == {}
    assert tracker.in_flight == 6

    tracker.finish(TP, 0)
    tracker.finish(TP2, 11)  # out of order: TP2 cannot move yet
    assert tracker.to_commit() == {TP: 1}
    assert tracker.to_commit() == {TP: 1}  # unchanged until marked committed

    tracker.mark_committed({TP: 1})
    assert tracker.to_commit() == {}

    tracker.finish(TP2, 10)
    assert tracker.to_commit() == {TP2: 12}
    tracker.mark_committed({TP2: 12})
    assert tracker.to_commit() == {}
    assert tracker.in_flight == 3


def test_tracker_commit_of_an_older_position_is_reported_again() -> None:
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    tracker.start(TP, 0)
    tracker.start(TP, 1)
    tracker.finish(TP, 0)
    positions = tracker.to_commit()
    tracker.finish(TP, 1)  # moves on while the commit of `positions` is in progress
    tracker.mark_committed(positions)
    assert tracker.to_commit() == {TP: 2}


def test_tracker_drop_after_revoke_ignores_late_finishes() -> None:
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    tracker.start(TP, 0)
    tracker.start(TP, 1)
    tracker.finish(TP, 0)
    tracker.mark_committed(tracker.to_commit())
    tracker.drop(TP)

    tracker.finish(TP, 1)  # a task of the revoked partition finishing late
    assert tracker.to_commit() == {}
    assert tracker.in_flight == 0
    tracker.mark_committed({TP: 2})  # a commit for a partition no longer owned is forgotten
    assert tracker.to_commit() == {}


def test_tracker_reassigned_partition_starts_afresh() -> None:
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    tracker.start(TP, 0)
    tracker.finish(TP, 0)
    tracker.mark_committed(tracker.to_commit())
    tracker.drop(TP)

    tracker.start(TP, 1)  # re-assigned: the committed position was forgotten with it
    tracker.finish(TP, 1)
    assert tracker.to_commit() == {TP: 2}


def test_tracker_drop_of_an_unknown_partition_is_harmless() -> None:
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    tracker.drop(TP)
    tracker.finish(TP, 3)
    assert tracker.to_commit() == {}


# --- properties -------------------------------------------------------------------------


@st.composite
def _started_and_finish_order(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """Ascending offsets with gaps, and a permutation in which they finish."""
    first = draw(st.integers(0, 10**12))
    gaps = draw(st.lists(st.integers(1, 5), min_size=1, max_size=40))
    started = [first]
    for gap in gaps[1:]:
        started.append(started[-1] + gap)
    return started, draw(st.permutations(started))


@given(_started_and_finish_order())
def test_committable_never_passes_the_lowest_unfinished_offset(
    case: tuple[list[int], list[int]],
) -> None:
    started, order = case
    part = _partition(started, [])
    finished: set[int] = set()
    for offset in order:
        part.finish(offset)
        finished.add(offset)
        unfinished = [o for o in started if o not in finished]
        position = part.committable()
        if unfinished:
            assert position is None or position <= unfinished[0]
            # and it is exactly one past the last finished offset of the contiguous prefix
            done_prefix = [o for o in started if o < unfinished[0]]
            assert position == (done_prefix[-1] + 1 if done_prefix else None)
        assert part.in_flight == len(unfinished)
    assert part.committable() == started[-1] + 1


@given(_started_and_finish_order(), st.data())
def test_duplicate_finishes_never_change_the_outcome(
    case: tuple[list[int], list[int]], data: st.DataObject
) -> None:
    started, order = case
    replayed = data.draw(st.lists(st.sampled_from(started), max_size=20))
    part = _partition(started, [])
    for offset in order:
        part.finish(offset)
    for offset in replayed:
        part.finish(offset)
    assert part.committable() == started[-1] + 1
    assert part.in_flight == 0
