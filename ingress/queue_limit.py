"""Max queued requests per team (async + batch work accepted but not finished). Pure.

A denial-of-wallet cap (`WalletLimits.max_queued_requests`), counted from two sources:

    batch lines  Every replica materialises tollway.batch-state (workers/batches/view.py),
                 so each sees the same batch backlog of a team, about 1 s behind: per batch
                 not in a terminal state, its lines not finished yet (`batch_backlog`).
    async        A replica knows only the async requests it accepted itself (it sees every
                 result, but not what the other replicas accepted), so the async side is
                 split in static shares: with `replicas` replicas (TOLLWAY_INGRESS_REPLICAS)
                 each admits an async request while its own unfinished ones are fewer than
                 (limit - batch backlog) // replicas.

What holds, stated as an approximation (a per-replica counter alone would allow `limit x
replicas`): with `replicas` set to the real replica count, the async requests queued over
all replicas never exceed `limit - batch backlog` (up to the batch view's ~1 s lag); the
price is refusing early when a load balancer sends one team's async work unevenly (a
replica can fill only its share). Creating a batch counts the team's batch backlog (global)
plus this replica's async backlog times `replicas` (an estimate of the global one): a
batch can overshoot by what the other replicas hold above their even share. With one
replica everything is exact up to the view's lag.

An accepted async request leaves this replica's count when its result is in the results
index (`finished`), or after `max_age_ms` whatever happened (a result aged out of the index).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from schemas.errors import QueueLimitExceeded
from schemas.records import BatchState
from workers.batches.state import TERMINAL

BATCH_LINES_KEY: Final = "tollway.input_lines"
"""Batch metadata (reserved prefix, hidden from the Batch object) written at create: the
input file's line count, the batch's backlog until the worker has expanded it."""
SWEEP_INTERVAL_MS: Final = 100
"""A team at its cap is re-counted at most this often (a refused flood costs O(1) each)."""
BATCH_BACKLOG_TTL_MS: Final = 1_000
RETRY_AFTER_S: Final = 1.0


def lines_not_finished(state: BatchState) -> int:
    """The lines of one batch still to run (0 once it is in a terminal state)."""
    if state["status"] in TERMINAL:
        return 0
    done = state["completed"] + state["failed"] + state["invalid"]
    if state["expanded"]:
        total = state["total"]
    else:
        recorded = state["metadata"].get(BATCH_LINES_KEY, "")
        total = int(recorded) if recorded.isdigit() else state["enqueued"]
    return max(total - done, 0)


def batch_backlog(states: Iterable[BatchState]) -> int:
    return sum(lines_not_finished(state) for state in states)


def async_share(limit: int, batch_lines: int, replicas: int) -> int:
    """How many unfinished async requests one replica may hold for the team."""
    return max(limit - batch_lines, 0) // max(replicas, 1)


def _refuse(team_id: str, limit: int, what: str) -> QueueLimitExceeded:
    return QueueLimitExceeded(
        f"Team `{team_id}` has {what} queued: its max_queued_requests is {limit}. "
        "Retry once some of its async or batch work has finished.",
        retry_after_s=RETRY_AFTER_S,
    )


class TeamQueues:
    """This replica's view of each capped team's queue (module docstring).

    `batch_states(team_id)` lists a team's batches (the materialised view);
    `finished(request_id)` says whether an async request has a result. Only teams with a
    cap are tracked: memory is at most the sum of their shares.
    """

    def __init__(
        self,
        *,
        replicas: int,
        batch_states: Callable[[str], Iterable[BatchState]],
        finished: Callable[[str], bool],
        max_age_ms: int,
    ) -> None:
        self.replicas = max(replicas, 1)
        self._batch_states = batch_states
        self._finished = finished
        self._max_age_ms = max_age_ms
        self._pending: dict[str, dict[str, int]] = {}
        self._swept_at_ms: dict[str, int] = {}
        self._batch_lines: dict[str, tuple[int, int]] = {}

    def batch_lines(self, team_id: str, now_ms: int) -> int:
        cached = self._batch_lines.get(team_id)
        if cached is not None and now_ms - cached[1] < BATCH_BACKLOG_TTL_MS:
            return cached[0]
        lines = batch_backlog(self._batch_states(team_id))
        self._batch_lines[team_id] = (lines, now_ms)
        return lines

    def pending(self, team_id: str, now_ms: int, *, at_least: int) -> int:
        """This replica's unfinished async requests of the team; re-counted (finished ones
        dropped) only when the plain count reaches `at_least`, at most every
        `SWEEP_INTERVAL_MS`."""
        ids = self._pending.get(team_id)
        if not ids:
            return 0
        if len(ids) < at_least or now_ms - self._swept_at_ms.get(team_id, 0) < SWEEP_INTERVAL_MS:
            return len(ids)
        self._swept_at_ms[team_id] = now_ms
        oldest = now_ms - self._max_age_ms
        for request_id, accepted_ms in list(ids.items()):
            if accepted_ms < oldest or self._finished(request_id):
                del ids[request_id]
        return len(ids)

    def check_async(self, team_id: str, limit: int, now_ms: int) -> None:
        """Raise `QueueLimitExceeded` (429) when this replica's share of the team is full."""
        share = async_share(limit, self.batch_lines(team_id, now_ms), self.replicas)
        if self.pending(team_id, now_ms, at_least=share) >= share:
            raise _refuse(team_id, limit, "as many async and batch requests as it may have")

    def accepted(self, team_id: str, request_id: str, now_ms: int) -> None:
        """Count an async request that Kafka acknowledged."""
        self._pending.setdefault(team_id, {})[request_id] = now_ms

    def released(self, team_id: str, request_id: str) -> None:
        """Stop counting an async request counted before its publish, which then failed."""
        self._pending.get(team_id, {}).pop(request_id, None)

    def check_batch(self, team_id: str, limit: int, lines: int, now_ms: int) -> None:
        """Raise `QueueLimitExceeded` (429) when a batch of `lines` more would pass the cap."""
        queued = self.batch_lines(team_id, now_ms) + self.replicas * self.pending(
            team_id, now_ms, at_least=0
        )
        if queued + lines > limit:
            raise _refuse(team_id, limit, f"about {queued} requests (and this batch {lines})")

    def batch_created(self, team_id: str) -> None:
        """Forget the cached batch backlog: the next check lists the team's batches again."""
        self._batch_lines.pop(team_id, None)
