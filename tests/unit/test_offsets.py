"""workers/router/offsets.py: the commit position while records finish out of order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.router.offsets import (
    METADATA_MAX_CHARS,
    REMEMBERED_MAX,
    OffsetTracker,
    PartitionOffsets,
    decode_finished,
    encode_finished,
)

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
        ([0, 1, 2], [1, 2], 0, 1),  # head in flight: its own offset, 1 and 2 in metadata
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
    assert tracker.to_commit() == {TP: (1, ""), TP2: (10, "tw1:1")}
    assert tracker.to_commit()[TP] == (1, "")  # unchanged until marked committed

    tracker.mark_committed(tracker.to_commit())
    assert tracker.to_commit() == {}

    tracker.finish(TP2, 10)
    assert tracker.to_commit() == {TP2: (12, "")}
    tracker.mark_committed({TP2: (12, "")})
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
    assert tracker.to_commit() == {TP: (2, "")}


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
    tracker.mark_committed({TP: (2, "")})  # a commit for a partition no longer owned: forgotten
    assert tracker.to_commit() == {}


def test_tracker_reassigned_partition_starts_afresh() -> None:
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    tracker.start(TP, 0)
    tracker.finish(TP, 0)
    tracker.mark_committed(tracker.to_commit())
    tracker.drop(TP)

    tracker.start(TP, 1)  # re-assigned: the committed position was forgotten with it
    tracker.finish(TP, 1)
    assert tracker.to_commit() == {TP: (2, "")}


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
            assert position is not None  # something finished
            assert position <= unfinished[0]
            # at least one past the last finished offset of the contiguous prefix
            done_prefix = [o for o in started if o < unfinished[0]]
            assert position >= (done_prefix[-1] + 1 if done_prefix else started[0])
            # and what the metadata lists is exactly what finished above it
            assert part.finished_above() == {o for o in finished if o >= position}
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


# --- commit metadata --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("position", "finished", "metadata"),
    [
        (100, [], ""),
        (100, [101], "tw1:1"),
        (100, [101, 102, 103, 107], "tw1:1-3,7"),
        (0, [5, 3, 4, 9, 10], "tw1:3-5,9-10"),
        (100, [99, 100], "tw1:0"),  # below the position: not listed
    ],
)
def test_finished_offsets_round_trip_through_the_commit_metadata(
    position: int, finished: list[int], metadata: str
) -> None:
    assert encode_finished(position, finished) == metadata
    assert decode_finished(position, metadata) == {o for o in finished if o >= position}


@pytest.mark.parametrize(
    "metadata",
    [None, "", "something else", "tw1:", "tw1:x", "tw1:5-3", "tw1:-1", "tw1:0-99999999"],
)
def test_metadata_of_another_form_skips_nothing(metadata: str | None) -> None:
    assert decode_finished(10, metadata) == set()


def test_metadata_that_would_not_fit_keeps_the_lowest_ranges() -> None:
    finished = range(0, 20_000, 2)  # 10,000 single offsets: far over the limit
    metadata = encode_finished(0, finished)
    assert len(metadata) <= METADATA_MAX_CHARS
    kept = decode_finished(0, metadata)
    assert kept
    assert kept == set(range(0, 2 * len(kept), 2))  # a prefix: the rest simply runs again


@given(st.sets(st.integers(0, 5_000), max_size=300), st.integers(0, 10**12))
def test_any_finished_set_round_trips(offsets: set[int], position: int) -> None:
    finished = {position + o for o in offsets}
    assert decode_finished(position, encode_finished(position, finished)) == finished


def test_a_new_owner_skips_exactly_what_the_old_one_finished_above_its_commit() -> None:
    old: OffsetTracker[tuple[str, int]] = OffsetTracker()
    for offset in range(10, 16):
        old.start(TP, offset)
    for offset in (10, 12, 13, 15):  # 11 hangs; 14 still running
        old.finish(TP, offset)
    position, metadata = old.to_commit()[TP]
    assert position == 11
    assert decode_finished(position, metadata) == {12, 13, 15}


def test_finished_uncommitted_is_what_no_successful_commit_covers() -> None:
    # Around a broker restart: results published, commits refused, then a rebalance.
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    for offset in range(100, 110):
        tracker.start(TP, offset)
    for offset in (100, 101, 102):
        tracker.finish(TP, offset)
    tracker.mark_committed(tracker.to_commit())  # (103, "") succeeded
    for offset in (103, 104, 106, 108):
        tracker.finish(TP, offset)  # the commits of these fail
    assert tracker.finished_uncommitted(TP) == {103, 104, 106, 108}
    assert tracker.finished_uncommitted(TP2) == set()


def test_finished_uncommitted_without_any_commit_starts_at_the_first_record() -> None:
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    for offset in (40, 41, 45):
        tracker.start(TP, offset)
    tracker.finish(TP, 40)
    tracker.finish(TP, 45)
    assert tracker.finished_uncommitted(TP) == {40, 45}


def test_finished_uncommitted_leaves_out_what_the_commit_metadata_lists() -> None:
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    for offset in range(4):
        tracker.start(TP, offset)
    tracker.finish(TP, 2)
    tracker.mark_committed(tracker.to_commit())  # (0, "tw1:2")
    tracker.finish(TP, 3)
    assert tracker.finished_uncommitted(TP) == {3}


def test_finished_from_is_bounded() -> None:
    part = PartitionOffsets()
    for offset in range(REMEMBERED_MAX + 10):
        part.start(offset)
        part.finish(offset)
    kept = part.finished_from(None)
    assert len(kept) == REMEMBERED_MAX
    assert min(kept) == 10
