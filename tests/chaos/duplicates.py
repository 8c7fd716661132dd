"""Why each duplicate provider call happened: the chaos report's breakdown. Pure.

A duplicate call belongs to an execution that lost to an earlier one (its request's
first result is another execution's). Set against the fault schedule (wall-clock
marks of every SIGKILL, SIGSTOP/SIGCONT and broker restart), the timing says which
fault made the request run twice:

- `published, then its router killed or frozen before the commit`: the first result was
  published, and within `COMMIT_WINDOW_MS` its router was SIGKILLed or SIGSTOPped, so
  its offset was never committed and the partition's next owner ran the record again.
  Inherent to at-least-once routing (docs/decisions/0003): a result is published before
  its offset is committed, never the other way round.
- `published while the broker was away`: same, the commit refused by a broker restart.
- `run again by the router that published it`: its commit failed (a rebalance, the
  broker), the partition came back to it, and it ran the record again.
- `started by a router just woken from a freeze`: the zombie case (membership.py).
- `in flight through a freeze`: started before its router's SIGSTOP, went on after it.
- `the request was published twice`: the same request id twice on the request topics
  (a batch worker killed mid-expansion publishes the lines since its checkpoint again,
  docs/decisions/0006); a router skips a copy of what it answered itself, not a copy
  another router (or it, before a restart) answered.
- `in flight on two routers at once`: the loser started before the first result was
  published: a handover while the first execution was still running (a rebalance
  whose drain ended before a slow or hung call).
- `other`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from schemas.records import Attempt, Result

COMMIT_WINDOW_MS = 2_000
"""A result published this long before its router's kill or freeze may be uncommitted:
the commit interval (200 ms) and the commit's round trip on a loaded machine."""
WAKE_WINDOW_MS = 10_000
"""Calls started this long after a SIGCONT count as the woken router's."""

REPUBLISHED = "the request was published twice (a batch worker's re-expansion, 0006)"
PUBLISHED_THEN_KILLED = "published, then its router killed or frozen before the commit"
BROKER_AWAY = "published while the broker was away (commit refused)"
SAME_ROUTER = "run again by the router that published it (its commit failed)"
AFTER_WAKE = "started by a router just woken from a freeze"
THROUGH_FREEZE = "in flight through a freeze"
TWO_AT_ONCE = "in flight on two routers at once (handover before the first finished)"
OTHER = "other"
INHERENT = frozenset({PUBLISHED_THEN_KILLED, BROKER_AWAY})
"""Causes at-least-once routing allows: the result was published, its commit was lost."""
NOT_ROUTING = frozenset({REPUBLISHED})
"""Causes upstream of the routers: the same request id was published twice."""


@dataclass(frozen=True, slots=True)
class Mark:
    at_ms: int
    """Wall-clock milliseconds."""
    what: str
    """As the fault runner notes it: `SIGKILL router-1`, `SIGSTOP router-2`, `SIGCONT
    router-2`, `kafka stop`, `kafka started again`, ..."""


def component(label: str) -> str:
    """`router-1#4` -> `router-1`."""
    return label.split("#", 1)[0]


def _marks(marks: Sequence[Mark], verb: str, name: str) -> list[int]:
    return [m.at_ms for m in marks if m.what == f"{verb} {name}"]


def _within(times: Sequence[int], low_ms: int, high_ms: int) -> bool:
    return any(low_ms <= t <= high_ms for t in times)


def _broker_away(marks: Sequence[Mark]) -> list[tuple[int, int]]:
    stops = sorted(m.at_ms for m in marks if m.what == "kafka stop")
    starts = sorted(m.at_ms for m in marks if m.what == "kafka started again")
    return [(s, next((e for e in starts if e >= s), s)) for s in stops]


def cause(
    loser: str,
    loser_start_ms: int,
    loser_end_ms: int,
    winner: str | None,
    winner_published_ms: int,
    marks: Sequence[Mark],
) -> str:
    """The cause of one losing execution (process labels `router-1#4`; `winner` None when
    the first result made no call)."""
    if winner is not None and loser_start_ms >= winner_published_ms:
        name = component(winner)
        ended = _marks(marks, "SIGKILL", name) + _marks(marks, "SIGSTOP", name)
        if _within(ended, winner_published_ms, winner_published_ms + COMMIT_WINDOW_MS):
            return PUBLISHED_THEN_KILLED
        for stop, start in _broker_away(marks):
            if stop - COMMIT_WINDOW_MS <= winner_published_ms <= start:
                return BROKER_AWAY
        if winner == loser:
            return SAME_ROUTER
    name = component(loser)
    if any(loser_start_ms <= stop <= loser_end_ms for stop in _marks(marks, "SIGSTOP", name)):
        return THROUGH_FREEZE
    if _within(_marks(marks, "SIGCONT", name), loser_start_ms - WAKE_WINDOW_MS, loser_start_ms):
        return AFTER_WAKE
    if loser_start_ms < winner_published_ms:
        return TWO_AT_ONCE
    return OTHER


@dataclass(frozen=True, slots=True)
class Breakdown:
    calls: Counter[str]
    """Cause -> duplicate calls."""
    by_process: Mapping[str, Counter[str]]
    """Cause -> process label -> duplicate calls."""

    @property
    def inherent_calls(self) -> int:
        return sum(n for c, n in self.calls.items() if c in INHERENT)

    def lines(self) -> list[str]:
        out = []
        for what, n in self.calls.most_common():
            who = ", ".join(f"{p} {k}" for p, k in self.by_process[what].most_common())
            tag = (
                " [at-least-once]"
                if what in INHERENT
                else " [upstream of the routers]"
                if what in NOT_ROUTING
                else ""
            )
            out.append(f"  {n:4d} {what}{tag}: {who}")
        return out


def breakdown(
    results: Sequence[Result],
    attempts: Sequence[Attempt],
    label: Callable[[str], str],
    marks: Sequence[Mark],
    republished: frozenset[str] = frozenset(),
) -> Breakdown:
    """Every duplicate call (as invariants.judge counts them) by cause. `results` in
    offset order per partition (the first seen of a request is its first result);
    `label` turns a router id into its process label (`router-1#4`); `republished` are
    the request ids published more than once on the request topics."""
    first: dict[str, Result] = {}
    for result in results:
        first.setdefault(result["request_id"], result)
    executions: defaultdict[str, dict[str, Attempt]] = defaultdict(dict)
    for attempt in attempts:
        execution = attempt["attempt_id"].rsplit(".", 1)[0]
        executions[execution].setdefault(attempt["attempt_id"], attempt)
    calls: Counter[str] = Counter()
    by_process: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for execution, made in executions.items():
        some = next(iter(made.values()))
        winner = first.get(some["request_id"])
        if winner is None or winner["execution_id"] == execution:
            continue
        winning_calls = executions.get(winner["execution_id"], {})
        winner_router = (
            label(next(iter(winning_calls.values()))["router_id"]) if winning_calls else None
        )
        loser = label(some["router_id"])
        why = (
            REPUBLISHED
            if some["request_id"] in republished
            else cause(
                loser,
                min(a["started_at_ms"] for a in made.values()),
                max(a["started_at_ms"] + int(a["latency_ms"]) for a in made.values()),
                winner_router,
                winner["finished_at_ms"],
                marks,
            )
        )
        calls[why] += len(made)
        by_process[why][loser] += len(made)
    return Breakdown(calls, dict(by_process))
