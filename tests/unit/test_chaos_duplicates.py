"""tests/chaos/duplicates.py: each duplicate provider call set against the fault schedule."""

from __future__ import annotations

from schemas.records import Attempt, Result
from tests.chaos.duplicates import (
    AFTER_WAKE,
    BROKER_AWAY,
    OTHER,
    PUBLISHED_THEN_KILLED,
    REPUBLISHED,
    SAME_ROUTER,
    THROUGH_FREEZE,
    TWO_AT_ONCE,
    Mark,
    breakdown,
    cause,
)

T = 1_800_000_000_000
MARKS = [
    Mark(T + 18_700, "SIGKILL router-1"),
    Mark(T + 41_100, "SIGSTOP router-2"),
    Mark(T + 56_100, "SIGCONT router-2"),
    Mark(T + 160_500, "kafka stop"),
    Mark(T + 176_800, "kafka started again"),
]


def test_a_result_published_just_before_its_router_was_killed_is_at_least_once() -> None:
    assert cause("router-2#1", T + 24_800, T + 24_900, "router-1#1", T + 18_600, MARKS) == (
        PUBLISHED_THEN_KILLED
    )
    # Published long before the kill: committed by then, so something else.
    assert cause("router-2#1", T + 24_800, T + 24_900, "router-1#1", T + 10_000, MARKS) == OTHER


def test_published_while_the_broker_was_away() -> None:
    assert cause("router-1#2", T + 183_700, T + 183_800, "router-2#1", T + 170_000, MARKS) == (
        BROKER_AWAY
    )


def test_run_again_by_the_router_that_published_it() -> None:
    assert cause("router-2#1", T + 90_000, T + 90_100, "router-2#1", T + 80_000, MARKS) == (
        SAME_ROUTER
    )


def test_started_by_a_woken_router_or_in_flight_through_its_freeze() -> None:
    assert cause("router-2#1", T + 56_200, T + 56_300, "router-1#2", T + 48_700, MARKS) == (
        AFTER_WAKE
    )
    assert cause("router-2#1", T + 41_000, T + 61_100, "router-1#2", T + 48_700, MARKS) == (
        THROUGH_FREEZE
    )


def test_two_routers_running_the_same_record_at_once() -> None:
    assert cause("router-2#2", T + 557_700, T + 560_300, "router-1#4", T + 560_200, MARKS) == (
        TWO_AT_ONCE
    )


def attempt(request_id: str, execution: str, router_id: str, started_ms: int) -> Attempt:
    return {
        "request_id": request_id,
        "attempt_id": f"{execution}.1",
        "attempt": 1,
        "team_id": "default",
        "key_id": None,
        "mode": "async",
        "deployment": "mock",
        "provider": "mock",
        "model": "gpt-4o-mini",
        "started_at_ms": started_ms,
        "latency_ms": 50.0,
        "outcome": "ok",
        "http_status": 200,
        "error_type": None,
        "error_code": None,
        "prompt_tokens": 5,
        "completion_tokens": 5,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "router_id": router_id,
    }


def result(request_id: str, execution: str, finished_ms: int) -> Result:
    return {
        "request_id": request_id,
        "team_id": "default",
        "key_id": None,
        "mode": "async",
        "execution_id": execution,
        "status": "succeeded",
        "http_status": 200,
        "body": b"{}",
        "error_type": None,
        "requested_model": "gpt-4o-mini",
        "served_model": "gpt-4o-mini",
        "provider": "mock",
        "deployment": "mock",
        "attempts": 1,
        "prompt_tokens": 5,
        "completion_tokens": 5,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "received_at_ms": finished_ms - 100,
        "finished_at_ms": finished_ms,
        "metadata": {},
    }


def test_breakdown_counts_the_losing_executions_calls_by_cause_and_process() -> None:
    labels = {"vm-1-a": "router-1#1", "vm-2-b": "router-2#1"}
    attempts = [
        attempt("req_a", "e1", "vm-1-a", T + 18_500),  # the first result, then router-1 dies
        attempt("req_a", "e2", "vm-2-b", T + 24_800),  # run again by the new owner
        attempt("req_b", "e3", "vm-1-a", T + 1_000),  # once only: no duplicate
    ]
    results = [
        result("req_a", "e1", T + 18_600),
        result("req_a", "e2", T + 24_900),
        result("req_b", "e3", T + 1_100),
    ]
    found = breakdown(results, attempts, labels.__getitem__, MARKS)
    assert dict(found.calls) == {PUBLISHED_THEN_KILLED: 1}
    assert found.inherent_calls == 1
    assert found.lines() == [f"     1 {PUBLISHED_THEN_KILLED} [at-least-once]: router-2#1 1"]


def test_a_request_published_twice_is_told_apart() -> None:
    labels = {"vm-1-a": "router-1#1", "vm-2-b": "router-2#1"}
    attempts = [
        attempt("breq_x", "e1", "vm-1-a", T + 181_000),
        attempt("breq_x", "e2", "vm-2-b", T + 187_700),
    ]
    results = [result("breq_x", "e1", T + 181_100), result("breq_x", "e2", T + 187_800)]
    found = breakdown(results, attempts, labels.__getitem__, MARKS, frozenset({"breq_x"}))
    assert dict(found.calls) == {REPUBLISHED: 1}
    assert found.inherent_calls == 0
    assert found.lines() == [f"     1 {REPUBLISHED} [upstream of the routers]: router-2#1 1"]
