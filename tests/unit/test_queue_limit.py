"""ingress/queue_limit.py: the queue cap's shares, the batch backlog and the sweep."""

from __future__ import annotations

from typing import Any

import pytest

from ingress.queue_limit import (
    BATCH_LINES_KEY,
    SWEEP_INTERVAL_MS,
    TeamQueues,
    async_share,
    batch_backlog,
    lines_not_finished,
)
from schemas.errors import QueueLimitExceeded
from schemas.records import BatchState
from workers.batches.state import new_batch


def batch(team: str = "acme", **fields: Any) -> BatchState:
    state = new_batch(
        batch_id="batch_" + "0" * 32,
        team_id=team,
        input_file_id="file-abcdefgh",
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=fields.pop("metadata", {}),
        now_ms=0,
    )
    state.update(fields)  # type: ignore[typeddict-item]  # test fields by name
    return state


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"status": "in_progress", "expanded": True, "total": 10, "completed": 3, "failed": 1}, 6),
        ({"status": "in_progress", "expanded": True, "total": 10, "invalid": 2}, 8),
        ({"status": "completed", "expanded": True, "total": 10}, 0),
        ({"status": "cancelled", "expanded": False, "enqueued": 5}, 0),
        ({"metadata": {BATCH_LINES_KEY: "40"}}, 40),  # validating: the lines recorded at create
        ({"status": "in_progress", "enqueued": 7, "completed": 2}, 5),  # older batch, no record
        ({"status": "in_progress", "expanded": True, "total": 1, "completed": 3}, 0),
    ],
)
def test_lines_not_finished(fields: dict[str, Any], expected: int) -> None:
    assert lines_not_finished(batch(**fields)) == expected


@pytest.mark.parametrize(
    ("limit", "batch_lines", "replicas", "expected"),
    [(100, 0, 1, 100), (100, 40, 1, 60), (100, 40, 3, 20), (100, 120, 2, 0), (5, 0, 10, 0)],
)
def test_async_share(limit: int, batch_lines: int, replicas: int, expected: int) -> None:
    assert async_share(limit, batch_lines, replicas) == expected


class Results:
    def __init__(self) -> None:
        self.done: set[str] = set()
        self.asked = 0

    def finished(self, request_id: str) -> bool:
        self.asked += 1
        return request_id in self.done


def queues(
    results: Results, *, replicas: int = 1, batches: list[BatchState] | None = None
) -> TeamQueues:
    return TeamQueues(
        replicas=replicas,
        batch_states=lambda team: [b for b in batches or [] if b["team_id"] == team],
        finished=results.finished,
        max_age_ms=60_000,
    )


def test_async_work_is_refused_at_the_share_and_admitted_again_once_finished() -> None:
    results = Results()
    q = queues(results, replicas=2)  # limit 6 over 2 replicas: 3 here
    for i in range(3):
        q.check_async("acme", 6, now_ms=1_000)
        q.accepted("acme", f"r{i}", now_ms=1_000)
    with pytest.raises(QueueLimitExceeded) as caught:
        q.check_async("acme", 6, now_ms=1_000)
    assert caught.value.http_status == 429
    assert caught.value.headers() == {"retry-after": "1"}
    q.check_async("other", 6, now_ms=1_000)  # teams are counted apart
    results.done.add("r1")
    with pytest.raises(QueueLimitExceeded):  # re-counted at most every SWEEP_INTERVAL_MS
        q.check_async("acme", 6, now_ms=1_000 + SWEEP_INTERVAL_MS - 1)
    q.check_async("acme", 6, now_ms=1_000 + SWEEP_INTERVAL_MS)


def test_a_refused_flood_costs_no_sweep_between_intervals() -> None:
    results = Results()
    q = queues(results)
    for i in range(50):
        q.accepted("acme", f"r{i}", now_ms=0)
    with pytest.raises(QueueLimitExceeded):
        q.check_async("acme", 50, now_ms=SWEEP_INTERVAL_MS)
    asked = results.asked
    for _ in range(100):
        with pytest.raises(QueueLimitExceeded):
            q.check_async("acme", 50, now_ms=SWEEP_INTERVAL_MS + 1)
    assert results.asked == asked


def test_requests_without_a_result_stop_counting_after_max_age() -> None:
    q = queues(Results())
    q.accepted("acme", "lost", now_ms=0)
    with pytest.raises(QueueLimitExceeded):
        q.check_async("acme", 1, now_ms=1_000)
    q.check_async("acme", 1, now_ms=60_001)


def test_the_batch_backlog_takes_from_the_async_share() -> None:
    backlog = [batch(metadata={BATCH_LINES_KEY: "8"}), batch(team="other", total=99)]
    q = queues(Results(), batches=backlog)
    q.check_async("acme", 10, now_ms=0)
    q.accepted("acme", "a", now_ms=0)
    q.accepted("acme", "b", now_ms=0)
    with pytest.raises(QueueLimitExceeded):
        q.check_async("acme", 10, now_ms=0)


def test_a_batch_counts_the_backlog_and_this_replicas_async_work_times_replicas() -> None:
    backlog = [batch(metadata={BATCH_LINES_KEY: "10"})]
    q = queues(Results(), replicas=2, batches=backlog)
    q.accepted("acme", "a", now_ms=0)
    q.check_batch("acme", 20, lines=8, now_ms=0)  # 10 + 2 x 1 + 8 = 20
    with pytest.raises(QueueLimitExceeded):
        q.check_batch("acme", 20, lines=9, now_ms=0)


def test_the_batch_backlog_is_cached_until_a_batch_is_created() -> None:
    backlog: list[BatchState] = []
    q = queues(Results(), batches=backlog)
    assert q.batch_lines("acme", 0) == 0
    backlog.append(batch(metadata={BATCH_LINES_KEY: "5"}))
    assert q.batch_lines("acme", 10) == 0
    q.batch_created("acme")
    assert q.batch_lines("acme", 10) == 5
    assert batch_backlog(backlog) == 5
