"""A pytest plugin: when one phase of a test (setup, call, teardown) runs to within 60 s
of its pytest-timeout (300 s by default, so after 240 s; `TOLLWAY_HANG_REPORT_S` sets it
outright), write the stack of every asyncio task of the running event loop to stderr,
once per phase. Long forms with a larger `--timeout` (chaos, soak) stay quiet.

pytest-timeout fails a hung test with the main thread's stack only, which for an async
test is the event loop waiting in `select()`: it says nothing about which task waits on
what. CI once hung 300 s in the teardown of an ingress test this way; this report is
what the next such run needs. Reading the tasks from this watchdog thread is not
thread-safe (`asyncio.all_tasks` races the loop), which is acceptable for a report
written only when a test is already failing.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import time
from collections.abc import Generator
from typing import Any

import pytest

_phase: dict[str, Any] = {"started_s": None, "name": "", "limit_s": 240.0}


def _limit_s(item: pytest.Item) -> float:
    """Seconds a phase may run before the report: 60 s short of the test's timeout."""
    configured = os.environ.get("TOLLWAY_HANG_REPORT_S")
    if configured:
        return float(configured)
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        timeout_s = float(marker.args[0])
    else:
        option = item.config.getoption("timeout", None)
        timeout_s = float(option if option is not None else item.config.getini("timeout") or 0)
    return max(60.0, timeout_s - 60.0) if timeout_s > 0 else 240.0


def _running_loops() -> list[asyncio.AbstractEventLoop]:
    return [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, asyncio.AbstractEventLoop) and obj.is_running()
    ]


def report_tasks(title: str) -> None:
    """Write every task of every running loop (with its stack) to stderr."""
    out = sys.stderr
    out.write(f"\n==== hang report: {title} ====\n")
    for loop in _running_loops():
        for task in list(asyncio.all_tasks(loop)):
            out.write(f"--- {task!r}\n")
            task.print_stack(limit=12, file=out)
    out.flush()


def _watch() -> None:
    while True:
        time.sleep(5)
        started_s, limit_s = _phase["started_s"], _phase["limit_s"]
        if started_s is not None and time.monotonic() - started_s > limit_s:
            _phase["started_s"] = None  # once per phase
            try:
                report_tasks(f"{_phase['name']} still running after {limit_s:.0f} s")
            except Exception as exc:  # a diagnostic must never break the run
                sys.stderr.write(f"hang report failed: {exc!r}\n")


def _timed(item: pytest.Item, name: str) -> Generator[None, Any, Any]:
    _phase["name"] = name
    _phase["limit_s"] = _limit_s(item)
    _phase["started_s"] = time.monotonic()
    try:
        return (yield)
    finally:
        _phase["started_s"] = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _timed(item, f"setup of {item.nodeid}"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _timed(item, item.nodeid))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _timed(item, f"teardown of {item.nodeid}"))


threading.Thread(target=_watch, name="hang-report", daemon=True).start()
