"""workers/cancel_safety.py: a cancelled step (a spool segment write) finishes first."""

from __future__ import annotations

import asyncio

import pytest

from workers.cancel_safety import complete_despite_cancel


async def test_a_cancel_waits_for_the_write_then_propagates() -> None:
    steps: list[str] = []

    async def write() -> None:
        steps.append("started")
        await asyncio.sleep(0.05)
        steps.append("written")

    task = asyncio.create_task(complete_despite_cancel(write()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert steps == ["started", "written"]


async def test_without_a_cancel_it_is_a_plain_await() -> None:
    async def write() -> None:
        await asyncio.sleep(0)

    await complete_despite_cancel(write())


async def test_the_writes_own_error_propagates() -> None:
    async def write() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        await complete_despite_cancel(write())
