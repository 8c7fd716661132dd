"""workers/router/lanes.py: batch lines never take the slots interactive requests need."""

from __future__ import annotations

import pytest

from workers.router.lanes import Lanes, take


@pytest.mark.parametrize(
    ("max_in_flight", "share", "batch_max"),
    [(1_000, 0.5, 500), (1_000, 1.0, 1_000), (1_000, 0.25, 250), (3, 0.5, 1), (1, 0.5, 1),
     (10, 0.01, 1)],
)  # fmt: skip
def test_the_batch_lane_is_a_share_of_the_slots(
    max_in_flight: int, share: float, batch_max: int
) -> None:
    assert Lanes.of(max_in_flight, share).batch_max_in_flight == batch_max


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5])
def test_a_share_outside_0_to_1_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="batch_share"):
        Lanes.of(10, share)


LANES = Lanes.of(10, 0.5)  # 10 slots, at most 5 for batch


@pytest.mark.parametrize(
    ("in_flight", "batch_in_flight", "room", "paused"),
    [
        (0, 0, 5, (False, False)),
        (3, 0, 5, (False, False)),  # interactive calls do not shrink the batch lane ...
        (7, 0, 3, (False, False)),  # ... until the free slots are fewer than its share
        (5, 5, 0, (False, True)),  # batch lane full: interactive still has 5 free slots
        (9, 5, 0, (False, True)),
        (10, 2, 0, (True, True)),  # every slot taken: both lanes wait
        (10, 0, 0, (True, True)),
        (6, 4, 1, (False, False)),
    ],
)
def test_room_and_pauses(
    in_flight: int, batch_in_flight: int, room: int, paused: tuple[bool, bool]
) -> None:
    assert LANES.batch_room(in_flight, batch_in_flight) == room
    assert LANES.paused(in_flight, batch_in_flight) == paused


def test_interactive_requests_always_find_room_under_a_batch_backlog() -> None:
    """Fill the router with as many batch records as it admits: half the slots stay free."""
    batch_in_flight = 0
    for _ in range(100):
        room = LANES.batch_room(batch_in_flight, batch_in_flight)
        batch_in_flight += len(take(range(50), room)[0])
    assert batch_in_flight == 5
    assert LANES.max_in_flight - batch_in_flight == 5
    assert LANES.paused(batch_in_flight, batch_in_flight) == (False, True)


@pytest.mark.parametrize(
    ("records", "room", "started", "left_out"),
    [([1, 2, 3], 5, [1, 2, 3], None), ([1, 2, 3], 3, [1, 2, 3], None), ([1, 2, 3], 1, [1], 2),
     ([1, 2, 3], 0, [], 1), ([], 0, [], None)],
)  # fmt: skip
def test_take_starts_a_prefix_and_names_the_first_left_out(
    records: list[int], room: int, started: list[int], left_out: int | None
) -> None:
    assert take(records, room) == (started, left_out)
