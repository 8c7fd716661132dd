"""workers/delivery.py: each partition handled in offset order without gaps; and the
flow-control patch (workers/faust_app.py) that removes faust's measured cause of gaps."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from workers.delivery import DeliveryCursor, is_complete
from workers.faust_app import _ORIGINAL_RESUME, keep_queued_events_on_resume

KEY = ("tollway.usage", 3)


def _cursor(start: int = 10) -> DeliveryCursor:
    cursor = DeliveryCursor()
    cursor.start(KEY, committed=start, first_offset=start)
    return cursor


@pytest.mark.parametrize(
    ("offsets", "take", "skip", "hold", "gap", "next_offset"),
    [
        ([10, 11, 12], [0, 1, 2], [], [], None, 13),
        ([12, 10, 11], [1, 2, 0], [], [], None, 13),  # taken in offset order
        ([10, 10, 11], [0, 2], [1], [], None, 12),  # a duplicate in the batch: once
        ([8, 9, 10], [2], [0, 1], [], None, 11),  # below the cursor: already handled
        ([10, 11, 13, 14], [0, 1], [], [2, 3], (12, 13), 12),  # one missing (faust commits past)
        ([12, 13], [], [], [0, 1], (10, 12), 10),  # the batch starts after the cursor
        ([10, 13, 15], [0], [], [1, 2], (11, 13), 11),  # the first gap only
        ([], [], [], [], None, 10),
    ],
)
def test_admit_takes_the_next_offsets_and_holds_everything_after_a_gap(
    offsets: list[int],
    take: list[int],
    skip: list[int],
    hold: list[int],
    gap: tuple[int, int] | None,
    next_offset: int,
) -> None:
    cursor = _cursor()
    admission = cursor.admit(KEY, offsets)
    assert list(admission.take) == take
    assert list(admission.skip) == skip
    assert list(admission.hold) == hold
    assert admission.gap == gap
    assert admission.missing == (None if gap is None else gap[0])
    assert cursor.next_offset(KEY) == next_offset


def test_the_gap_observed_in_the_sigkill_test_is_filled_then_the_batch_goes_on() -> None:
    """tests/integration/test_cost_budget.py, budget processor after a restart: batch
    53488..53515 arrived without 53491 (faust emptied its queue after table recovery)."""
    cursor = _cursor(53_385)
    assert len(cursor.admit(KEY, list(range(53_385, 53_488))).take) == 103
    delivered = [o for o in range(53_488, 53_516) if o != 53_491]
    gap = cursor.admit(KEY, delivered)
    assert [delivered[i] for i in gap.take] == [53_488, 53_489, 53_490]
    assert gap.gap == (53_491, 53_492)
    # the wiring reads 53491 from Kafka and admits it with the held events
    pending = [53_491, *(delivered[i] for i in gap.hold)]
    filled = cursor.admit(KEY, pending)
    assert [pending[i] for i in filled.take] == list(range(53_491, 53_516))
    assert filled.gap is None
    # faust delivering the batch again later: nothing is handled twice
    assert cursor.admit(KEY, list(range(53_488, 53_516))).take == ()


def test_filled_records_must_be_exactly_the_gap() -> None:
    assert is_complete([12, 13], (12, 14))
    assert not is_complete([12], (12, 14))
    assert not is_complete([13, 12], (12, 14))
    assert not is_complete([12, 14], (12, 14))
    assert is_complete([], (12, 12))


@pytest.mark.parametrize(
    ("committed", "first", "next_offset"),
    [
        (100, 100, 100),
        (100, 103, 100),  # records 100..102 never reached the processor: a gap
        (100, 97, 97),  # delivered below the committed offset: handled, never skipped
        (None, 55, 55),  # a new group: the reset position
    ],
)
def test_a_partition_starts_at_the_committed_offset(
    committed: int | None, first: int, next_offset: int
) -> None:
    cursor = DeliveryCursor()
    cursor.start(KEY, committed=committed, first_offset=first)
    assert cursor.next_offset(KEY) == next_offset
    admission = cursor.admit(KEY, [first])
    assert admission.gap == (None if first <= next_offset else (next_offset, first))


def test_a_new_generation_restarts_every_partition_and_older_events_pass_unchecked() -> None:
    cursor = DeliveryCursor()
    assert cursor.begin(4)
    cursor.start(KEY, committed=10, first_offset=10)
    assert not cursor.begin(4)
    assert not cursor.begin(3)
    assert cursor.started(KEY)
    assert (cursor.is_current(3), cursor.is_current(4), cursor.is_current(None)) == (
        False,
        True,
        True,
    )
    assert cursor.begin(5)
    assert not cursor.started(KEY)
    assert not cursor.begin(None)


@st.composite
def _deliveries(draw: st.DrawFn) -> tuple[int, int, list[tuple[int, int]]]:
    """A log of `n` records from `start`, delivered by a consumer that drops records
    (for good), repeats them and re-reads from an earlier offset, in batches."""
    start = draw(st.integers(0, 1_000))
    n = draw(st.integers(1, 60))
    steps = draw(st.lists(st.tuples(st.integers(1, 12), st.integers(0, 3)), max_size=80))
    return start, n, steps


@given(_deliveries())
def test_whatever_the_consumer_drops_or_repeats_records_are_handled_once_in_order(
    case: tuple[int, int, list[tuple[int, int]]],
) -> None:
    """The gate's loop: admit, fill each gap from the log, admit the filled and held."""
    start, n, steps = case
    end = start + n
    cursor = DeliveryCursor()
    cursor.start(KEY, committed=start, first_offset=start)
    handled: list[int] = []
    position = start  # where the simulated consumer reads next
    for size, fault in [*steps, *[(12, 0)] * (n + 2)]:  # then a clean tail to finish
        batch = list(range(position, min(end, position + size)))
        if fault == 1 and len(batch) > 1:  # drop a record that a later one follows
            batch.pop((len(batch) - 1) // 2)
        elif fault == 2:  # deliver some again (a seek back to the committed offset)
            batch = [max(start, position - size), *batch]
        elif fault == 3 and batch:  # a duplicate inside the batch
            batch.append(batch[0])
        position = min(end, position + size)
        pending = batch
        while True:
            admission = cursor.admit(KEY, pending)
            handled.extend(pending[i] for i in admission.take)
            if admission.gap is None:
                break
            pending = [*range(*admission.gap), *(pending[i] for i in admission.hold)]
    assert handled == list(range(start, end))


async def test_resuming_a_running_flow_keeps_the_queued_events() -> None:
    """faust resumes the flow once more after table recovery, while records already
    fetched sit in the agents' queues: they must stay (the cause of the measured gaps)."""
    keep_queued_events_on_resume()
    flow = FlowControlEvent(loop=asyncio.get_running_loop())
    queue: FlowControlQueue[int] = FlowControlQueue(flow_control=flow, clear_on_resume=True)
    flow.resume()
    queue.put_nowait(53_491)
    flow.resume()
    assert queue.qsize() == 1
    flow.suspend()  # a rebalance: what was queued is for partitions being revoked
    flow.resume()
    assert queue.empty()
    assert flow.is_active()


async def test_the_installed_mode_still_drops_queued_events_without_the_patch() -> None:
    """Canary: when an upgrade of mode-streaming makes this fail, the patch can go."""
    flow = FlowControlEvent(loop=asyncio.get_running_loop())
    queue: FlowControlQueue[int] = FlowControlQueue(flow_control=flow, clear_on_resume=True)
    _ORIGINAL_RESUME(flow)
    queue.put_nowait(53_491)
    _ORIGINAL_RESUME(flow)
    assert queue.empty()
