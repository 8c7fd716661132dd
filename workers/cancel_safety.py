"""Work that must not be cut in half by a cancel (a revocation, a shutdown, a timeout)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


async def complete_despite_cancel(work: Awaitable[None]) -> None:
    """Await `work`; if cancelled meanwhile, let it finish first, then re-raise the cancel.

    For steps whose half-done state outlives the caller, such as a spool segment write
    in a thread that would land after the batch moved to another owner
    (workers/batches/consumer.py). An error of `work` after the cancel is consumed (the
    cancel is what the caller gets), so asyncio does not report it as unretrieved.
    A second cancel while waiting ends the wait (the work still finishes on its own).
    """
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()
        raise
