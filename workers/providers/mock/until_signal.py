"""Run a mock server until SIGTERM or SIGINT (the entry point of server.py and fast_server.py).

Why: both mocks are started as processes by benches and tests, which stop them with
SIGTERM; each must then leave cleanly (exit status 0) rather than die on the signal,
and a start-up failure (a port in use) must still surface as an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine
from typing import Any


async def serve_until_signal(serve: Coroutine[Any, Any, None]) -> None:
    """Run `serve` (a server's serve-forever coroutine) until SIGTERM or SIGINT.

    On a signal the server task is cancelled and awaited, so its clean-up runs; an
    exception it raised while starting is re-raised here.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = asyncio.create_task(serve)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait((server, stopper), return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    server.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await server  # re-raises a start-up failure such as a port in use
